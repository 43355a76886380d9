//! The readiness checks the worker registers beside `startup`: `listeners` and `store`, both
//! computed at each `/readyz` from state kept anyway (no call of their own).

use std::sync::OnceLock;
use std::time::Duration;

use crate::listener::{Fatal, QueueListener};
use crate::observability::CheckState;
use crate::store::metered::{Metering, StoreHealth};

/// How the listeners stand, for `/readyz`: unready once a fatal error was raised or any
/// listener's supervisor ended; one that ended after a stop was asked (`stopping`) says it
/// stopped for the drain, not that it ended (which reads like a crash).
pub(super) fn listeners_state(
    listeners: &OnceLock<Vec<QueueListener>>,
    fatal: &Fatal,
    stopping: bool,
) -> CheckState {
    if let Some(e) = fatal.error() {
        return CheckState::Unready(format!("stopping: {e}"));
    }
    let Some(listeners) = listeners.get() else {
        return CheckState::Unready("starting".into());
    };
    match listeners.iter().find(|l| !l.is_running()) {
        Some(l) if stopping => CheckState::Unready(format!(
            "the listener of {} stopped for the drain",
            l.queue()
        )),
        Some(l) => CheckState::Unready(format!("the listener of {} ended", l.queue())),
        None => CheckState::Ready,
    }
}

/// The longest store error `/readyz` repeats, in characters.
const MAX_REASON_CHARS: usize = 120;

/// A store error as `/readyz` shows it, to anyone who can reach the port (it needs no token):
/// its first line only (the service's multi-line XML bodies stay in the logs), every URL
/// replaced by `<url>` (a request URL names the account and queue, and a SAS's fields), cut
/// at [`MAX_REASON_CHARS`].
fn short_reason(error: &str) -> String {
    let first = error.lines().next().unwrap_or_default();
    let words: Vec<&str> = first
        .split(' ')
        .map(|w| if w.contains("://") { "<url>" } else { w })
        .collect();
    let joined = words.join(" ");
    match joined.char_indices().nth(MAX_REASON_CHARS) {
        Some((cut, _)) => format!("{}...", &joined[..cut]),
        None => joined,
    }
}

/// How long store calls may fail in a row (no usable answer, retries included) before the
/// worker reports itself unready; shorter runs report it degraded.
pub const STORE_UNREADY_AFTER: Duration = Duration::from_secs(60);

/// How the store stands, for `/readyz`: see [`crate::store::metered`].
pub(super) fn store_state(metering: &Metering) -> CheckState {
    match metering.health() {
        StoreHealth::Answering => CheckState::Ready,
        StoreHealth::Failing { error, .. } => {
            let failing = metering.failing_for();
            let why = format!(
                "store calls failing for {}s: {}",
                failing.as_secs(),
                short_reason(&error.to_string())
            );
            if failing > STORE_UNREADY_AFTER {
                CheckState::Unready(why)
            } else {
                CheckState::Degraded(why)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::short_reason;

    #[test]
    fn a_store_error_on_readyz_is_one_short_line_without_urls() {
        let error = "HTTP error: error sending request for url \
                     (http://127.0.0.1:10001/devstoreaccount1/orders/messages?sv=2022&sig=<redacted>)\n\
                     <?xml version=\"1.0\"?>\n<Error><Code>AuthenticationFailed</Code></Error>";
        let reason = short_reason(error);
        assert!(!reason.contains('\n'), "{reason}");
        assert!(!reason.contains("devstoreaccount1"), "{reason}");
        assert!(reason.contains("<url>"), "{reason}");
        let long = "é".repeat(500);
        let cut = short_reason(&long);
        assert_eq!(cut.chars().count(), 123, "{cut}");
        assert_eq!(short_reason(""), "");
    }
}
