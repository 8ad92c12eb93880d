//! Helpers for the kinds' unit tests.

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use reqwest::header::HeaderMap;

use crate::inbound::{InboundError, InboundRequest};
use crate::receipt::{ProviderReceipt, Receipts};
use crate::{find, BuildContext, Channel, OutboundMessage, Provider};

/// The settings fields a kind's check complains about, in order; `missing` stands for serde's
/// "missing field" error (which names no field of its own).
pub(crate) fn setting_issue_fields(kind: &str, settings: &serde_json::Value) -> Vec<String> {
    let issues = find(kind).map(|kind| kind.check(settings.clone())).unwrap_or_default();
    issues
        .iter()
        .map(|issue| match issue.field.as_deref() {
            Some(field) => field.to_owned(),
            None if issue.message.contains("missing field") => "missing".to_owned(),
            None => format!("?{}", issue.message),
        })
        .collect()
}

/// Asserts the fields `kind`'s check complains about for `settings`.
pub(crate) fn check_settings(kind: &str, settings: serde_json::Value, expected: &[&str]) {
    assert_eq!(setting_issue_fields(kind, &settings), expected, "{kind}: {settings}");
}

/// An email from app@example.com with id `0190abcd`.
pub(crate) fn email(to: &str, subject: Option<&str>, body: &str, attachments: &[&str]) -> OutboundMessage {
    OutboundMessage {
        id: "0190abcd".into(),
        channel: Channel::EMAIL,
        from: "app@example.com".into(),
        to: to.into(),
        subject: subject.map(str::to_owned),
        body: body.into(),
        attachments: attachments.iter().map(|a| (*a).to_owned()).collect(),
        tags: vec![],
    }
}

/// Kind `kind` built as provider `name` with `settings`; panics when it is not registered or
/// refuses the settings.
pub(crate) fn build(kind: &str, name: &str, settings: serde_json::Value) -> Arc<dyn Provider> {
    let context = BuildContext { name, timeout: Duration::from_secs(1) };
    find(kind)
        .map(|found| found.build(settings, &context))
        .unwrap_or_else(|| panic!("{kind} is not registered"))
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A header map of `values`: `None` sends no header, several values separated by `|` are sent
/// as several headers.
pub(crate) fn headers(values: impl IntoIterator<Item = (&'static str, Option<String>)>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in values {
        for value in value.iter().flat_map(|value| value.split('|')) {
            headers.append(name, value.parse().unwrap_or_else(|e| panic!("{value:?}: {e}")));
        }
    }
    headers
}

/// Runs `future` to completion on a fresh current-thread runtime.
pub(crate) fn block_on<F: Future>(future: F) -> F::Output {
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap_or_else(|e| panic!("{e}"));
    runtime.block_on(future)
}

/// What `admit_receipts` says of `request`'s head, and what `receipts` (called without it) says
/// of the whole request, received at `now`.
pub(crate) fn take_receipts(
    provider: &dyn Provider,
    request: InboundRequest<'_>,
    now: SystemTime,
) -> (Result<(), InboundError>, Result<Receipts, InboundError>) {
    (provider.admit_receipts(request.head()), block_on(provider.receipts(request, now)))
}

/// Why a test request is refused: the error's variant, its field and a part of its text.
/// `Head` and `MediaType` are refused by the head check (`admit`, `admit_receipts`) already,
/// with the same error; the others only by the whole request's.
#[derive(Debug, Clone)]
pub(crate) enum Refused {
    Head(&'static str),
    Signature(&'static str),
    Invalid(&'static str, &'static str),
    MediaType,
}

/// Checks what a kind said of one test request (`what` describes it): `admitted`, its head
/// check, and `taken`, the whole request checked without it, against `expected`. A refusal is
/// checked here (`media_type`: what an unsupported media type error must name) and returned,
/// for the caller to look further; both values when the request is taken, for the caller to
/// compare.
pub(crate) fn check_inbound<T: Debug, U: Debug>(
    what: &str,
    admitted: Result<(), InboundError>,
    taken: Result<T, InboundError>,
    expected: Result<U, Refused>,
    media_type: &str,
) -> Result<(T, U), InboundError> {
    let refused_by_head = matches!(expected, Err(Refused::Head(_) | Refused::MediaType));
    match (&admitted, &taken) {
        (Err(early), Err(late)) if refused_by_head => assert_eq!(early, late, "{what}"),
        (Ok(()), _) if !refused_by_head => {}
        _ => panic!(
            "{what}: the head check said {admitted:?}, the whole request {taken:?}; expected {expected:?}"
        ),
    }
    match (taken, expected) {
        (Ok(taken), Ok(expected)) => Ok((taken, expected)),
        (Err(InboundError::InvalidSignature(text)), Err(Refused::Signature(part) | Refused::Head(part))) => {
            assert!(text.contains(part), "{what}: {text}");
            Err(InboundError::InvalidSignature(text))
        }
        (Err(InboundError::Invalid { field, message }), Err(Refused::Invalid(name, part))) => {
            assert_eq!(field, name, "{what}: {message}");
            assert!(message.contains(part), "{what}: {message}");
            Err(InboundError::Invalid { field, message })
        }
        (Err(InboundError::UnsupportedMediaType { expected }), Err(Refused::MediaType)) => {
            assert_eq!(expected, media_type);
            Err(InboundError::UnsupportedMediaType { expected })
        }
        (got, expected) => panic!("{what}: got {got:?}, expected {expected:?}"),
    }
}

/// [`check_inbound`] for receipts: the receipts taken (answered with an empty `text/plain`
/// body), or the refusal, returned for the caller to look further.
pub(crate) fn check_receipts(
    what: &str,
    admitted: Result<(), InboundError>,
    taken: Result<Receipts, InboundError>,
    expected: Result<Vec<ProviderReceipt>, Refused>,
    media_type: &str,
) -> Option<InboundError> {
    match check_inbound(what, admitted, taken, expected, media_type) {
        Ok((receipts, expected)) => {
            assert_eq!(receipts.receipts, expected, "{what}");
            assert_eq!((receipts.content_type, receipts.answer.as_str()), ("text/plain", ""), "{what}");
            None
        }
        Err(refused) => Some(refused),
    }
}
