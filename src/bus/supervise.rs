//! The bus's background tasks, supervised: each has a name, its end is classified (finished,
//! cancelled, panicked) and logged, and a reader that panics or returns while the bus is open
//! is restarted after a back-off (100 ms doubling to 30 s), never silently gone.

use std::future::Future;
use std::time::Duration;

use tokio::task::{JoinError, JoinHandle};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, error, warn};

/// How a task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum End {
    /// It returned.
    Finished,
    /// It was aborted.
    Cancelled,
    /// It panicked, with this message.
    Panicked(String),
}

impl End {
    pub(crate) fn of(result: Result<(), JoinError>) -> Self {
        match result {
            Ok(()) => Self::Finished,
            Err(e) if e.is_cancelled() => Self::Cancelled,
            Err(e) => {
                let panic = e.into_panic();
                let text = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "(no message)".into());
                Self::Panicked(text)
            }
        }
    }
}

/// Runs `fut` as the task `name`; a panic is logged with the name. Aborting the returned handle
/// aborts the task.
pub(crate) fn watched<F>(name: &'static str, fut: F) -> JoinHandle<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        let inner = AbortOnDropHandle::new(tokio::spawn(fut));
        match End::of(inner.await) {
            End::Panicked(panic) => error!(task = name, panic, "bus task panicked"),
            end => debug!(task = name, ?end, "bus task ended"),
        }
    })
}

/// Runs `make()` as the task `name` until `closed`: whenever it panics or returns while the
/// bus is open, the end is logged and a fresh one starts after a back-off.
pub(crate) fn restarting<M, F>(name: &'static str, closed: CancellationToken, make: M)
where
    M: Fn() -> F + Send + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        let mut delay = Duration::from_millis(100);
        let mut restarts = 0u64;
        loop {
            let mut task = AbortOnDropHandle::new(tokio::spawn(make()));
            let end = tokio::select! {
                _ = closed.cancelled() => {
                    task.abort();
                    debug!(task = name, "bus task stopped: the bus closed");
                    return;
                }
                r = &mut task => End::of(r),
            };
            if closed.is_cancelled() {
                debug!(task = name, ?end, "bus task ended with the bus");
                return;
            }
            restarts += 1;
            match &end {
                End::Panicked(panic) => {
                    error!(task = name, panic, restarts, restart_in = ?delay, "bus task panicked; restarting it");
                }
                other => {
                    warn!(task = name, end = ?other, restarts, restart_in = ?delay, "bus task ended while the bus is open; restarting it");
                }
            }
            tokio::select! {
                _ = closed.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(30));
        }
    });
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_panicking_reader_is_restarted_until_the_bus_closes() {
        let runs = Arc::new(AtomicU32::new(0));
        let closed = CancellationToken::new();
        let counter = runs.clone();
        restarting("test reader", closed.clone(), move || {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 2 {
                    panic!("reader {n} broke");
                }
                std::future::pending::<()>().await;
            }
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 3, "two panics, two restarts");
        closed.cancel();
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(
            runs.load(Ordering::SeqCst),
            3,
            "nothing restarts after close"
        );
    }

    #[tokio::test]
    async fn ends_are_classified() {
        let panicked = tokio::spawn(async { panic!("boom") }).await;
        assert_eq!(End::of(panicked), End::Panicked("boom".into()));
        let t = tokio::spawn(std::future::pending::<()>());
        t.abort();
        assert_eq!(End::of(t.await), End::Cancelled);
        assert_eq!(End::of(tokio::spawn(async {}).await), End::Finished);
    }
}
