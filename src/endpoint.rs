//! What both HTTP servers (the trigger endpoint in `trigger::http`, the ops endpoint in
//! `observability::server`) share: the accept loop with its connection cap and header-read
//! timeout ([`serve`]), the check of their caps against the file-descriptor limit
//! ([`make_room`]), the refusal counters, the bearer token check compared in constant time,
//! the metrics text's content type, the JSON refusal, and the answer when their guard layers
//! (tower's timeout and load shedding) stop a request. A leaf: it imports no other room.

mod fds;
mod refusals;
mod serve;

pub(crate) use fds::make_room;
pub(crate) use fds::HEADROOM;

pub use refusals::{Refusal, Refusals};
pub(crate) use serve::serve;
pub(crate) use serve::ConnectionLimits;

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{BoxError, Json};
use serde_json::json;
use subtle::ConstantTimeEq;

/// The content type of the OpenMetrics text both servers serve on `GET /metrics`.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The token of an `Authorization: Bearer <token>` header, the scheme matched in any case.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .trim();
    let (scheme, token) = value.split_once([' ', '\t'])?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Compares in time that does not depend on where the tokens differ (only on their lengths).
pub(crate) fn tokens_match(given: &str, expected: &str) -> bool {
    given.as_bytes().ct_eq(expected.as_bytes()).into()
}

/// A refusal: `status` with `{"error": reason}`.
pub(crate) fn reject(status: StatusCode, reason: impl Into<String>) -> Response {
    (status, Json(json!({ "error": reason.into() }))).into_response()
}

/// The answer when a server's guard layers stop a request: 408 when it timed out, 503 with
/// `retry-after: 1` when every slot was taken (`too many {what} at once; retry`), else 500
/// (logged, naming `server`). 408 and 503 are counted in `refusals` under `endpoint`.
pub(crate) fn guard_response(
    server: &'static str,
    what: &'static str,
    error: BoxError,
    refusals: &Refusals,
    endpoint: &'static str,
) -> Response {
    if error.is::<tower::timeout::error::Elapsed>() {
        refusals.refuse(endpoint, Refusal::Timeout);
        reject(StatusCode::REQUEST_TIMEOUT, "request timed out")
    } else if error.is::<tower::load_shed::error::Overloaded>() {
        refusals.refuse(endpoint, Refusal::Busy);
        let mut r = reject(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("too many {what} at once; retry"),
        );
        r.headers_mut()
            .insert("retry-after", HeaderValue::from_static("1"));
        r
    } else {
        tracing::warn!(error = %error, "{server} layer failed");
        reject(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(tokens_match("abc", "abc"));
        assert!(!tokens_match("abc", "abd"));
        assert!(!tokens_match("abc", "abcd"));
        assert!(!tokens_match("", "abc"));
    }

    #[test]
    fn the_bearer_scheme_is_matched_in_any_case() {
        let headers = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert("authorization", HeaderValue::from_str(v).unwrap());
            h
        };
        for v in ["Bearer tok", "bearer tok", "BEARER  tok ", "bEaReR\ttok"] {
            assert_eq!(bearer(&headers(v)), Some("tok"), "{v:?}");
        }
        for v in ["Basic tok", "Bearer", "Bearer ", "Bearertok", "tok"] {
            assert_eq!(bearer(&headers(v)), None, "{v:?}");
        }
        assert_eq!(bearer(&HeaderMap::new()), None);
    }
}
