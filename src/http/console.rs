//! The operator console (specs/console.md): `GET /console`, one page embedded in the binary
//! with its script and style (public: the page holds no data, it asks for the admin key), and
//! `GET /admin/console`, the one JSON snapshot the page polls — the active config, the last
//! rejected reload, the routes, the queue depth and, for a page of providers, their live state
//! and their last five minutes (`crate::stats`).

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::openapi::errors;
use super::paging::Params;
use super::{ActiveConfig, AdminRoute, ApiError, AppState};
use crate::health::BreakerState;
use crate::stats::{ProviderSeries, SAMPLE_EVERY, WINDOW};

const PAGE: &str = include_str!("console/console.html");
const SCRIPT: &str = include_str!("console/console.js");
const STYLE: &str = include_str!("console/console.css");

/// Nothing but the binary's own files; no framing, no referrer, no sniffing.
const SECURITY_HEADERS: [(header::HeaderName, &str); 5] = [
    (
        header::CONTENT_SECURITY_POLICY,
        "default-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::REFERRER_POLICY, "no-referrer"),
    (header::X_FRAME_OPTIONS, "DENY"),
    // A new binary may bring a new page: always asked again (cheap: it is in memory).
    (header::CACHE_CONTROL, "no-cache"),
];

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = ([(header::CONTENT_TYPE, content_type)], body).into_response();
    for (name, value) in SECURITY_HEADERS {
        response.headers_mut().insert(name, header::HeaderValue::from_static(value));
    }
    response
}

#[utoipa::path(
    get,
    path = "/console",
    tag = "operations",
    summary = "The operator console (a page for browsers; it reads /admin/console with an admin key)",
    responses((status = 200, description = "The page", content_type = "text/html", body = String))
)]
pub(super) async fn console() -> Response {
    asset("text/html; charset=utf-8", PAGE)
}

#[utoipa::path(
    get,
    path = "/console/console.js",
    tag = "operations",
    summary = "The console's script",
    responses((status = 200, description = "The script", content_type = "text/javascript", body = String))
)]
pub(super) async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

#[utoipa::path(
    get,
    path = "/console/console.css",
    tag = "operations",
    summary = "The console's style sheet",
    responses((status = 200, description = "The style sheet", content_type = "text/css", body = String))
)]
pub(super) async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

/// Providers in a page when `limit` is not given.
const DEFAULT_LIMIT: usize = 50;
/// The most providers a page may have.
const MAX_LIMIT: usize = 500;
/// The largest `offset` (what the document says).
const MAX_OFFSET: usize = i32::MAX as usize;

/// `GET /admin/console`'s query.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct ConsoleQuery {
    /// Only providers whose name, kind or a channel contains this text (ASCII case-insensitive);
    /// empty: all.
    filter: Option<String>,
    /// Only providers in this state: a breaker state, or `paused` (by a 429); empty: all.
    #[param(schema_with = state_filter)]
    state: Option<String>,
    /// Matching providers to skip: 0 to 2147483647 (default 0).
    #[param(minimum = 0, maximum = 2147483647)]
    offset: Option<u32>,
    /// Providers in the page: 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<usize>,
}

/// The `state` filter's values: a breaker state, or `paused`.
const STATES: [&str; 4] = ["closed", "half_open", "open", "paused"];

fn state_filter() -> utoipa::openapi::schema::ObjectBuilder {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(STATES.into_iter().chain([""])))
}

/// The parameters `GET /admin/console` takes; any other is refused.
const PARAMETERS: [&str; 4] = ["filter", "state", "offset", "limit"];

/// `GET /admin/console`.
#[derive(Serialize, ToSchema)]
#[schema(as = Console)]
struct ConsoleBody<'a> {
    #[serde(flatten)]
    active: ActiveConfig<'a>,
    routes: Vec<AdminRoute<'a>>,
    /// Messages waiting for dispatch now (queued or scheduled for a retry).
    queue_depth: usize,
    /// The queue depth at each sample of the window, oldest first.
    queue_depth_recent: Vec<u32>,
    /// Seconds between two samples of the `recent` series.
    sample_every_s: u64,
    /// Seconds the `recent` series span.
    window_s: u64,
    /// Every provider of the active config, counted by state.
    totals: Totals,
    /// Providers matching `filter` and `state`.
    matching: usize,
    /// The page of them (`offset`, `limit`), in the config's order (by name).
    providers: Vec<ConsoleProvider<'a>>,
}

/// Providers by breaker state, and how many are paused by a 429.
#[derive(Serialize, ToSchema, Default)]
struct Totals {
    providers: usize,
    closed: usize,
    half_open: usize,
    open: usize,
    paused: usize,
}

/// A provider, live.
#[derive(Serialize, ToSchema)]
struct ConsoleProvider<'a> {
    name: &'a str,
    kind: &'static str,
    #[schema(value_type = Vec<String>)]
    channels: &'a [switchboard_providers::Channel],
    breaker: BreakerState,
    /// For an open breaker: milliseconds until it lets a probe through (half-open).
    retry_in_ms: Option<u64>,
    /// Paused by a provider's 429 (its `Retry-After`).
    paused: bool,
    /// While paused: milliseconds until the pause ends.
    paused_for_ms: Option<u64>,
    /// The last `window_s` seconds, one value per sample.
    recent: ProviderSeries,
}

errors!(
    /// What `/admin/console` may answer besides its snapshot.
    ConsoleErrors = [InvalidField]
);

/// What the query asks for.
struct Selection {
    filter: String,
    state: Option<&'static str>,
    offset: usize,
    limit: usize,
}

fn selection(query: &std::collections::HashMap<String, String>) -> Result<Selection, ApiError> {
    if let Some(unknown) = query.keys().find(|name| !PARAMETERS.contains(&name.as_str())) {
        return Err(ApiError::invalid(unknown, format!("`{unknown}` is not a parameter of /admin/console")));
    }
    let number = |name: &str, default: usize, range: std::ops::RangeInclusive<usize>| match query.get(name) {
        None => Ok(default),
        Some(text) => text.parse::<usize>().ok().filter(|n| range.contains(n)).ok_or_else(|| {
            ApiError::invalid(
                name,
                format!("`{name}` must be a whole number from {} to {}", range.start(), range.end()),
            )
        }),
    };
    let state = match query.get("state").map(String::as_str) {
        None | Some("") => None,
        Some(state) => Some(STATES.into_iter().find(|s| *s == state).ok_or_else(|| {
            ApiError::invalid("state", format!("`state` must be one of {}, or empty", STATES.join(", ")))
        })?),
    };
    Ok(Selection {
        filter: query.get("filter").map(|f| f.to_ascii_lowercase()).unwrap_or_default(),
        state,
        offset: number("offset", 0, 0..=MAX_OFFSET)?,
        limit: number("limit", DEFAULT_LIMIT, 1..=MAX_LIMIT)?,
    })
}

#[utoipa::path(
    get,
    path = "/admin/console",
    tag = "admin",
    summary = "What the console shows: the active config, routes, queue depth and a page of providers with their last five minutes",
    params(ConsoleQuery),
    responses(
        (status = 200, description = "The snapshot", body = ConsoleBody),
        ConsoleErrors,
    )
)]
pub(super) async fn admin_console(State(state): State<Arc<AppState>>, Params(query): Params) -> Response {
    let selection = match query.and_then(|query| selection(&query)) {
        Ok(selection) => selection,
        Err(error) => return error.into_response(),
    };
    let snapshot = state.snapshot.load();
    let now = Instant::now();
    let mut totals = Totals::default();
    let mut matching = 0;
    let mut page = Vec::new();
    for handle in snapshot.providers() {
        let health = handle.health();
        let breaker = health.breaker.state(now);
        let paused_until = health.pause.paused_until(now);
        totals.providers += 1;
        match breaker {
            BreakerState::Closed => totals.closed += 1,
            BreakerState::HalfOpen => totals.half_open += 1,
            BreakerState::Open => totals.open += 1,
        }
        totals.paused += usize::from(paused_until.is_some());
        let config = &handle.config;
        let in_state = match selection.state {
            None => true,
            Some("paused") => paused_until.is_some(),
            Some(name) => breaker.as_str() == name,
        };
        let has = |text: &str| text.to_ascii_lowercase().contains(&selection.filter);
        let found = selection.filter.is_empty()
            || has(&config.name)
            || has(config.kind.kind)
            || config.channels.iter().any(|c| has(c.as_str()));
        if !(in_state && found) {
            continue;
        }
        matching += 1;
        if matching <= selection.offset || page.len() >= selection.limit {
            continue;
        }
        let millis = |until: Instant| {
            u64::try_from(until.saturating_duration_since(now).as_millis()).unwrap_or(u64::MAX)
        };
        page.push(ConsoleProvider {
            name: &config.name,
            kind: config.kind.kind,
            channels: &config.channels,
            breaker,
            retry_in_ms: health.breaker.open_until(now).map(millis),
            paused: paused_until.is_some(),
            paused_for_ms: paused_until.map(millis),
            recent: ProviderSeries::default(),
        });
    }
    let series = state.stats.series(page.iter().map(|p| p.name));
    for (provider, recent) in page.iter_mut().zip(series) {
        provider.recent = recent;
    }
    Json(ConsoleBody {
        active: ActiveConfig::of(&snapshot, state.reloader.status()),
        routes: snapshot.routes().into_iter().map(AdminRoute::of).collect(),
        queue_depth: state.dispatcher.queue_depth(),
        queue_depth_recent: state.stats.queue_depth(),
        sample_every_s: SAMPLE_EVERY.as_secs(),
        window_s: WINDOW.as_secs(),
        totals,
        matching,
        providers: page,
    })
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_query_selects() {
        let check = |query: &[(&str, &str)], expected: Result<(&str, Option<&str>, usize, usize), &str>| {
            let query = query.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
            let got = selection(&query).map(|s| (s.filter, s.state, s.offset, s.limit));
            match (got, expected) {
                (Ok(got), Ok((filter, state, offset, limit))) => {
                    assert_eq!(got, (filter.to_owned(), state, offset, limit), "{query:?}")
                }
                (Err(ApiError::InvalidField { field, .. }), Err(expected)) => {
                    assert_eq!(field, expected, "{query:?}")
                }
                (got, _) => panic!("{query:?}: {:?}", got.map(|_| ())),
            }
        };
        check(&[], Ok(("", None, 0, 50)));
        check(&[("filter", "SMS-A"), ("state", "open")], Ok(("sms-a", Some("open"), 0, 50)));
        check(&[("state", ""), ("offset", "100"), ("limit", "500")], Ok(("", None, 100, 500)));
        check(&[("state", "paused")], Ok(("", Some("paused"), 0, 50)));
        check(&[("state", "Open")], Err("state"));
        check(&[("limit", "0")], Err("limit"));
        check(&[("limit", "501")], Err("limit"));
        check(&[("offset", "-1")], Err("offset"));
        check(&[("offset", "2147483647")], Ok(("", None, 2_147_483_647, 50)));
        check(&[("offset", "2147483648")], Err("offset"));
        check(&[("provider", "x")], Err("provider"));
    }
}
