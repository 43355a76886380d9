//! What an SDK error means for us: which [`StoreError`] it is, and in particular whether the
//! service may have done the work (then a retry can repeat it; see `store::retrying`).

use azure_core::error::ErrorKind;

use crate::secret::redact;
use crate::store::{Cause, StoreError};

/// An error with its causes ("... : tcp connect error: Connection refused"): the SDK's own
/// text often leaves out why a request failed.
pub(super) fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

/// An error's text as one line for logs and `/readyz`: the service's XML error body
/// (`<?xml ...?><Error><Code>..</Code><Message>..\nRequestId:..\nTime:..</Message></Error>`)
/// shrinks to its code and the message's first line, and what is left of line breaks and runs
/// of spaces becomes single spaces.
pub(super) fn one_line(text: &str) -> String {
    let between = |open: &str, close: &str| {
        let start = text.find(open)? + open.len();
        let end = start + text[start..].find(close)?;
        Some(&text[start..end])
    };
    let text = match text.find("<?xml").or_else(|| text.find("<Error>")) {
        Some(xml) => {
            let code = between("<Code>", "</Code>").unwrap_or_default();
            let message = between("<Message>", "</Message>")
                .and_then(|m| m.lines().next())
                .unwrap_or_default();
            format!("{} {code}: {message}", &text[..xml])
        }
        None => text.to_string(),
    };
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Classifies an SDK error of a call on `queue` (about message `message_id`, for deletes and
/// updates). Secrets are redacted from the detail.
///
/// | what happened | class | did the service act? |
/// |---|---|---|
/// | 404 QueueNotFound | `QueueNotFound` | no |
/// | 404 / 400 PopReceiptMismatch on a message | `MessageNotFound` | no |
/// | another 404 on a queue call (`ResourceNotFound`: no such account) | `AccountNotFound` | no |
/// | 401, 403 | `Unauthorized` | no |
/// | 503 (ServerBusy), 429, 408, 500 OperationTimedOut | `Transient` | no: it says it did not finish |
/// | other 5xx (500 InternalError, 502, 504) | `Unanswered` | unknown |
/// | connection could not be opened | `Transient` | no: the request was never sent |
/// | connection lost after sending, answer cut | `Unanswered` | unknown |
/// | no token from the credential | `TokenUnavailable` | no: the request was never sent |
pub(super) fn classify(queue: &str, e: azure_core::Error, message_id: Option<&str>) -> StoreError {
    let queue = queue.to_string();
    let detail = one_line(&redact(&describe(&e)));
    let source = None;
    let class = match e.kind() {
        ErrorKind::HttpResponse {
            status, error_code, ..
        } => {
            let code = error_code.as_deref().unwrap_or_default();
            let status = u16::from(*status);
            match (status, code, message_id) {
                (404, "QueueNotFound", _) => StoreError::QueueNotFound { queue },
                (404, _, Some(id)) | (400, "PopReceiptMismatch", Some(id)) => {
                    StoreError::MessageNotFound {
                        queue,
                        id: id.to_string(),
                    }
                }
                // Only a queue call answered with another code: the account or the endpoint's
                // path is wrong (Azurite answers ResourceNotFound for an unknown account).
                (404, _, None) => StoreError::AccountNotFound {
                    queue,
                    detail,
                    source,
                },
                (401 | 403, _, _) => StoreError::Unauthorized {
                    queue,
                    detail,
                    source,
                },
                (408 | 429 | 503, _, _) | (500, "OperationTimedOut", _) => StoreError::Transient {
                    queue,
                    detail,
                    source,
                },
                (500..=599, _, _) => StoreError::Unanswered {
                    queue,
                    detail,
                    source,
                },
                _ => StoreError::Invalid {
                    queue,
                    detail,
                    source,
                },
            }
        }
        ErrorKind::Credential => StoreError::TokenUnavailable {
            queue,
            detail,
            source,
        },
        ErrorKind::Connection => StoreError::Transient {
            queue,
            detail,
            source,
        },
        ErrorKind::Io => StoreError::Unanswered {
            queue,
            detail,
            source,
        },
        ErrorKind::DataConversion => StoreError::Invalid {
            queue,
            detail,
            source,
        },
        _ => StoreError::Transient {
            queue,
            detail,
            source,
        },
    };
    class.with_source(Cause::new(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_error_body_becomes_one_line() {
        let text = "HttpResponse(Forbidden, \"AuthenticationFailed\"):\n<?xml version=\"1.0\" \
                    encoding=\"utf-8\"?>\n<Error>\n  <Code>AuthenticationFailed</Code>\n  \
                    <Message>Server failed to authenticate the request.\nRequestId:1\nTime:2\
                    </Message>\n</Error>";
        assert_eq!(
            one_line(text),
            "HttpResponse(Forbidden, \"AuthenticationFailed\"): AuthenticationFailed: Server \
             failed to authenticate the request."
        );
        assert_eq!(
            one_line("tcp connect error:\n  refused"),
            "tcp connect error: refused"
        );
        assert_eq!(one_line(""), "");
        assert_eq!(one_line("<?xml <Code>unclosed"), ":");
    }
    use azure_core::http::StatusCode;

    fn http(status: StatusCode, code: &str) -> azure_core::Error {
        azure_core::Error::with_message(
            ErrorKind::HttpResponse {
                status,
                error_code: Some(code.to_string()),
                raw_response: None,
            },
            "answer",
        )
    }

    fn class(e: azure_core::Error, id: Option<&str>) -> &'static str {
        match classify("q", e, id) {
            StoreError::QueueNotFound { .. } => "queue-not-found",
            StoreError::MessageNotFound { .. } => "message-not-found",
            StoreError::Invalid { .. } => "invalid",
            StoreError::Unauthorized { .. } => "unauthorized",
            StoreError::Transient { .. } => "transient",
            StoreError::Unanswered { .. } => "unanswered",
            StoreError::TokenUnavailable { .. } => "token",
            StoreError::InDoubt { .. } => "in-doubt",
            StoreError::Unconsumable { .. } => "unconsumable",
            StoreError::AccountNotFound { .. } => "account-not-found",
            StoreError::Setup(_) => "setup",
            StoreError::PayloadTooLarge { .. } => "payload-too-large",
        }
    }

    #[test]
    fn answers_that_say_not_done_are_transient_and_the_rest_unanswered() {
        let cases = [
            (StatusCode::ServiceUnavailable, "ServerBusy", "transient"),
            (StatusCode::TooManyRequests, "", "transient"),
            (StatusCode::RequestTimeout, "", "transient"),
            (
                StatusCode::InternalServerError,
                "OperationTimedOut",
                "transient",
            ),
            (
                StatusCode::InternalServerError,
                "InternalError",
                "unanswered",
            ),
            (StatusCode::BadGateway, "", "unanswered"),
            (StatusCode::GatewayTimeout, "", "unanswered"),
            (
                StatusCode::Forbidden,
                "AuthenticationFailed",
                "unauthorized",
            ),
            (
                StatusCode::Unauthorized,
                "InvalidAuthenticationInfo",
                "unauthorized",
            ),
            (StatusCode::NotFound, "QueueNotFound", "queue-not-found"),
            (StatusCode::NotFound, "MessageNotFound", "message-not-found"),
            (
                StatusCode::NotFound,
                "ResourceNotFound",
                "message-not-found",
            ),
            (
                StatusCode::BadRequest,
                "PopReceiptMismatch",
                "message-not-found",
            ),
            (StatusCode::BadRequest, "OutOfRangeInput", "invalid"),
        ];
        for (status, code, expected) in cases {
            assert_eq!(
                class(http(status, code), Some("m")),
                expected,
                "{status} {code}"
            );
        }
        // Without a message: a 404 other than QueueNotFound means no such account.
        let wrong_account = http(StatusCode::NotFound, "ResourceNotFound");
        assert_eq!(class(wrong_account, None), "account-not-found");
        let no_queue = http(StatusCode::NotFound, "QueueNotFound");
        assert_eq!(class(no_queue, None), "queue-not-found");
    }

    #[test]
    fn transport_and_token_failures_say_whether_the_request_left() {
        let refused = azure_core::Error::with_message(ErrorKind::Connection, "connection refused");
        assert_eq!(class(refused, None), "transient");
        let cut = azure_core::Error::with_message(ErrorKind::Io, "connection reset by peer");
        assert_eq!(class(cut, None), "unanswered");
        // A token failure wraps the identity endpoint's own error (here: unreachable); the
        // outer kind decides, so it is a token outage, not a refused connection to storage.
        let token = azure_core::Error::with_error(
            ErrorKind::Credential,
            azure_core::Error::with_message(ErrorKind::Connection, "169.254.169.254 unreachable"),
            "could not obtain an access token",
        );
        let e = classify("q", token, None);
        assert!(matches!(e, StoreError::TokenUnavailable { .. }) && e.is_transient());
        assert!(e.to_string().contains("169.254.169.254 unreachable"), "{e}");
    }

    #[test]
    fn the_sdk_error_is_kept_as_the_source() {
        let e = classify(
            "q",
            http(StatusCode::ServiceUnavailable, "ServerBusy"),
            None,
        );
        let sdk = e
            .cause()
            .and_then(|c| c.downcast_ref::<azure_core::Error>())
            .expect("the SDK's error, by type");
        assert_eq!(sdk.http_status().map(u16::from), Some(503));
        let source = std::error::Error::source(&e).expect("a source");
        assert!(source.to_string().contains("answer"), "{source}");
    }
}
