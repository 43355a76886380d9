//! The readiness checks the worker registers beside `startup`: `listeners` and `store`, both
//! computed at each `/readyz` from state kept anyway (no call of their own).

use std::sync::OnceLock;
use std::time::Duration;

use crate::listener::{Fatal, QueueListener};
use crate::observability::CheckState;
use crate::store::metered::{Metering, StoreHealth};

/// How the listeners stand, for `/readyz`: unready once a fatal error was raised or any
/// listener's supervisor ended.
pub(super) fn listeners_state(
    listeners: &OnceLock<Vec<QueueListener>>,
    fatal: &Fatal,
) -> CheckState {
    if let Some(e) = fatal.error() {
        return CheckState::Unready(format!("stopping: {e}"));
    }
    let Some(listeners) = listeners.get() else {
        return CheckState::Unready("starting".into());
    };
    match listeners.iter().find(|l| !l.is_running()) {
        Some(l) => CheckState::Unready(format!("the listener of {} ended", l.queue())),
        None => CheckState::Ready,
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
            let why = format!("store calls failing for {}s: {error}", failing.as_secs());
            if failing > STORE_UNREADY_AFTER {
                CheckState::Unready(why)
            } else {
                CheckState::Degraded(why)
            }
        }
    }
}
