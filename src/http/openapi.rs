//! The OpenAPI 3.1 document of the HTTP API, generated from the code: the router is built from
//! the `#[utoipa::path]`-annotated handlers (utoipa-axum), the bodies are the handlers' own
//! types (`utoipa::ToSchema`), each operation's `error.code`s are the list beside its handler
//! ([`errors!`]), and what every request may be refused before its handler, with the security
//! it needs, comes from the guard (`guard::Access`) in [`finish`]. Served at `GET /openapi.json`
//! and printed by `switchboard openapi` (committed as `specs/openapi.json`).

use std::collections::BTreeMap;

use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::path::Operation;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::{OpenApi, RefOr, Response};

use super::guard::{self, Access};
use super::ErrorCode;

/// The name of the API-key scheme (`Authorization: Bearer <key>`).
pub const BEARER: &str = "bearer";
/// Providers' own proofs (`/v1/inbound/…`, `/v1/receipts/…`), checked by their kind.
const TWILIO_SIGNATURE: &str = "twilioSignature";
const SENDGRID_PARSE: &str = "sendgridInboundParse";
const SENDGRID_EVENT_SIGNATURE: &str = "sendgridEventWebhookSignature";
const WEBHOOK_SIGNATURE: &str = "webhookSignature";

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Switchboard",
        description = "Routes outbound messages (SMS, MMS, email, plugin channels) to providers chosen \
from routes.toml, and takes in what comes back. The human contract, with every rule: \
specs/http-api.md. Every refusal is `{\"error\": {\"code\", \"message\", \"field\"?}}`; the codes \
each operation may answer are listed per status. A request refused before its path is read \
(a malformed or too slow request head, a server out of file descriptors or shutting down) gets \
the same JSON: 400 `malformed_request`, 408 `request_timeout`, 414 `uri_too_long`, 431 \
`headers_too_large`, 503 `overloaded` or `shutting_down`.",
        license(name = "MIT", identifier = "MIT"),
    ),
    tags(
        (name = "send", description = "Sending messages"),
        (name = "messages", description = "Reading, finding and retrying messages"),
        (name = "conversations", description = "Two-way messaging: webhooks, conversations, opt-outs"),
        (name = "providers", description = "Providers' own inbound and receipt URLs"),
        (name = "operations", description = "Health, readiness, metrics and this document"),
        (name = "admin", description = "The active routing config"),
    )
)]
struct ApiDoc;

/// The document's base (info, tags): what the routes add their operations to.
pub fn base() -> OpenApi {
    <ApiDoc as utoipa::OpenApi>::openapi()
}

/// An operation's own error answers, as a type for `#[utoipa::path(responses(...))]`: the codes
/// its handler may answer, grouped by status, each status's `error.code` an enum. What the guard
/// refuses before any handler is added by [`finish`].
macro_rules! errors {
    ($(#[$doc:meta])* $name:ident = [$($code:ident),* $(,)?]) => {
        $(#[$doc])*
        pub struct $name;

        impl $name {
            pub const CODES: &'static [$crate::http::ErrorCode] =
                &[$($crate::http::ErrorCode::$code),*];
        }

        impl utoipa::IntoResponses for $name {
            fn responses() -> std::collections::BTreeMap<
                String,
                utoipa::openapi::RefOr<utoipa::openapi::response::Response>,
            > {
                $crate::http::openapi::error_responses(Self::CODES)
            }
        }
    };
}
pub(crate) use errors;

/// `codes` as responses: one per status, its body the error JSON with those codes.
pub fn error_responses(codes: &[ErrorCode]) -> BTreeMap<String, RefOr<Response>> {
    let mut by_status: BTreeMap<u16, Vec<ErrorCode>> = BTreeMap::new();
    for code in codes {
        let same = by_status.entry(code.status().as_u16()).or_default();
        if !same.contains(code) {
            same.push(*code);
        }
    }
    by_status.into_iter().map(|(status, codes)| (status.to_string(), error_response(&codes).into())).collect()
}

fn error_response(codes: &[ErrorCode]) -> Response {
    let mut names: Vec<&str> = codes.iter().map(|c| c.as_str()).collect();
    names.sort_unstable();
    let string = || ObjectBuilder::new().schema_type(Type::String);
    let detail = ObjectBuilder::new()
        .schema_type(Type::Object)
        .property("code", string().enum_values(Some(names.clone())))
        .required("code")
        .property("message", string().description(Some("What is wrong, for a person to read")))
        .required("message")
        .property("field", string().description(Some("The field, parameter or header at fault")));
    // `not_retryable` says what the message is instead.
    let detail = if codes.contains(&ErrorCode::NotRetryable) {
        detail.property("status", status_of_not_retryable())
    } else {
        detail
    };
    let body = ObjectBuilder::new().schema_type(Type::Object).property("error", detail).required("error");
    let listed: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    let status = codes.first().map(|c| c.status());
    let reason = status.and_then(|s| s.canonical_reason()).unwrap_or("Refused");
    ResponseBuilder::new()
        .description(format!("{reason}: {}", listed.join(", ")))
        .content("application/json", ContentBuilder::new().schema(Some(body)).build())
        .build()
}

/// `error.status` of `not_retryable`: the message's status.
fn status_of_not_retryable() -> RefOr<Schema> {
    match <crate::store::Status as utoipa::PartialSchema>::schema() {
        RefOr::T(Schema::Object(object)) => {
            let mut object = object;
            object.description = Some("`not_retryable`: the message's status".to_owned());
            RefOr::T(Schema::Object(object))
        }
        other => other,
    }
}

/// The `error.code`s of an error response made by [`error_response`] (none for another one).
fn codes_of(response: &RefOr<Response>) -> Option<Vec<String>> {
    let RefOr::T(response) = response else { return None };
    let schema = response.content.get("application/json")?.schema.as_ref()?;
    let object = |schema: &RefOr<Schema>| match schema {
        RefOr::T(Schema::Object(object)) => Some(object.clone()),
        _ => None,
    };
    let body = object(schema)?;
    let detail = object(body.properties.get("error")?)?;
    let code = object(detail.properties.get("code")?)?;
    let values = code.enum_values?;
    Some(values.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
}

/// Completes the document the routes made: every operation gets the refusals and the security
/// of its path's access (as the guard decides it), and the security schemes are declared.
pub fn finish(api: &mut OpenApi) {
    for (path, item) in api.paths.paths.iter_mut() {
        let access = guard::access(path, false);
        for operation in [&mut item.get, &mut item.post, &mut item.delete, &mut item.put, &mut item.patch]
            .into_iter()
            .flatten()
        {
            add_refusals(operation, &guard::refusals(access));
            operation.security = Some(security(path, access));
        }
    }
    let components = api.components.get_or_insert_with(Default::default);
    let bearer = HttpBuilder::new()
        .scheme(HttpAuthScheme::Bearer)
        .description(Some(
            "An API key (`switchboard keys new NAME`). Needed when keys are configured; `/admin/*` \
             and `/v1/opt-outs` need an admin key. `/metrics` is public with `--metrics-public`.",
        ))
        .build();
    components.add_security_scheme(BEARER, SecurityScheme::Http(bearer));
    let header = |name: &str, description: &str| {
        SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(name, description)))
    };
    components.add_security_scheme(
        TWILIO_SIGNATURE,
        header(
            "X-Twilio-Signature",
            "Twilio's HMAC-SHA1 of the provider's `public_url` + path and query + sorted parameters, \
             keyed with its `auth_token` (kind `twilio`).",
        ),
    );
    let basic = HttpBuilder::new()
        .scheme(HttpAuthScheme::Basic)
        .description(Some(
            "SendGrid Inbound Parse: the password is the provider's `inbound_secret` (kind `sendgrid`).",
        ))
        .build();
    components.add_security_scheme(SENDGRID_PARSE, SecurityScheme::Http(basic));
    components.add_security_scheme(
        SENDGRID_EVENT_SIGNATURE,
        header(
            "X-Twilio-Email-Event-Webhook-Signature",
            "SendGrid's Signed Event Webhook: ECDSA P-256 over `X-Twilio-Email-Event-Webhook-Timestamp` \
             and the body, verified with the provider's `event_webhook_public_key` (kind `sendgrid`).",
        ),
    );
    components.add_security_scheme(
        WEBHOOK_SIGNATURE,
        header(
            "X-Switchboard-Signature",
            "`sha256=HEX`: HMAC-SHA256 with the provider's `secret` of `{X-Switchboard-Timestamp}.{body}` \
             (kind `webhook`).",
        ),
    );
}

/// Who may call `path`: none needed, an API key, or a provider's own proof (one of its kinds').
fn security(path: &str, access: Access) -> Vec<SecurityRequirement> {
    let scheme = |name: &str| SecurityRequirement::new(name, Vec::<String>::new());
    match access {
        Access::Public => vec![SecurityRequirement::default()],
        Access::AnyKey | Access::Admin => vec![scheme(BEARER)],
        Access::Provider if path.starts_with("/v1/receipts/") => {
            vec![scheme(TWILIO_SIGNATURE), scheme(SENDGRID_EVENT_SIGNATURE), scheme(WEBHOOK_SIGNATURE)]
        }
        Access::Provider => vec![scheme(TWILIO_SIGNATURE), scheme(SENDGRID_PARSE)],
    }
}

/// Merges `codes` into the operation's error responses.
fn add_refusals(operation: &mut Operation, codes: &[ErrorCode]) {
    let responses = &mut operation.responses.responses;
    for (status, response) in error_responses(codes) {
        let merged = match responses.get(&status) {
            None => response,
            Some(existing) => match codes_of(existing) {
                // Another body at this status (none today: `every_operation_has_the_guards_refusals`).
                None => continue,
                Some(mut names) => {
                    names.extend(codes_of(&response).unwrap_or_default());
                    let all: Vec<ErrorCode> = ErrorCode::ALL
                        .into_iter()
                        .filter(|c| names.iter().any(|n| n == c.as_str()))
                        .collect();
                    error_response(&all).into()
                }
            },
        };
        responses.insert(status, merged);
    }
}

/// The document as served and committed: JSON with its keys sorted, pretty, a trailing newline.
pub fn render(api: &OpenApi) -> String {
    // Through `Value` (a sorted map): the same order whatever the insertion order was.
    let value = serde_json::to_value(api).unwrap_or_default();
    let mut text = serde_json::to_string_pretty(&value).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(codes: &[ErrorCode], expected: &[(&str, &[&str])]) {
        let got: Vec<(String, Vec<String>)> = error_responses(codes)
            .iter()
            .map(|(status, response)| (status.clone(), codes_of(response).unwrap_or_default()))
            .collect();
        let expected: Vec<(String, Vec<String>)> = expected
            .iter()
            .map(|(status, codes)| ((*status).to_owned(), codes.iter().map(|c| (*c).to_owned()).collect()))
            .collect();
        assert_eq!(got, expected, "{codes:?}");
    }

    #[test]
    fn codes_are_grouped_by_status() {
        use ErrorCode::*;
        check(&[], &[]);
        check(&[NotFound], &[("404", &["not_found"])]);
        check(
            &[NotFound, InvalidJson, InvalidField, InvalidJson, QueueFull],
            &[("400", &["invalid_field", "invalid_json"]), ("404", &["not_found"]), ("503", &["queue_full"])],
        );
    }

    #[test]
    fn error_codes_are_distinct() {
        let names: std::collections::BTreeSet<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(names.len(), ErrorCode::ALL.len());
    }

    /// What the guard may refuse on a path is in each of its operations, and the security
    /// follows the path's access.
    #[test]
    fn every_operation_has_the_guards_refusals() {
        let api = crate::http::document();
        let mut operations = 0;
        for (path, item) in &api.paths.paths {
            let access = guard::access(path, false);
            for operation in
                [&item.get, &item.post, &item.delete, &item.put, &item.patch].into_iter().flatten()
            {
                operations += 1;
                for code in guard::refusals(access) {
                    let status = code.status().as_u16().to_string();
                    let listed =
                        operation.responses.responses.get(&status).and_then(codes_of).unwrap_or_default();
                    assert!(listed.iter().any(|c| c == code.as_str()), "{path}: {status} lacks {code:?}");
                }
                let keyed = matches!(access, Access::AnyKey | Access::Admin);
                assert_eq!(operation.responses.responses.contains_key("401"), keyed, "{path}: 401");
                assert!(operation.security.as_ref() == Some(&security(path, access)), "{path}: security");
            }
        }
        assert!(operations > 0);
    }
}
