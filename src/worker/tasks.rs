//! The worker's own background tasks (bus presence, outage watch and probes, and the short
//! bus calls listeners start: drained marks, passed-on notices, job pulses, acks), supervised
//! as the listener's supervisor does its dequeue tasks: each runs by name on the worker's
//! tracker, and its end is classified and logged.
//!
//! - A *service* runs until it returns; it watches `stop` itself and gets a 2 s grace after it
//!   before it is dropped (presence says goodbye on the bus then). If it panics, the panic is logged with the task's name and
//!   the service is started again after a back-off (100 ms, doubling to 30 s; a service that
//!   ran a minute starts over at 100 ms). None of them is needed to consume a queue (they are
//!   the bus's hints and presence), so a service that keeps panicking is restarted, not fatal.
//! - A *call* is one short job. It ends at `stop` (a bus call cut short then is a lost hint, no
//!   more), so it never holds a drain up; a panic is logged with its name.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, error, Instrument};

use crate::listener::Lifecycle;

/// The first restart delay of a panicked service; doubles up to [`MAX_RESTART_DELAY`].
const FIRST_RESTART_DELAY: Duration = Duration::from_millis(100);
const MAX_RESTART_DELAY: Duration = Duration::from_secs(30);
/// How long a service may go on after `stop` (to say goodbye) before it is dropped.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// A service that ran this long before it panicked restarts with the first delay again.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// Spawns the worker's background tasks on its tracker, each supervised.
#[derive(Clone, Default)]
pub(crate) struct Tasks {
    life: Lifecycle,
}

impl Tasks {
    pub(crate) fn new(life: &Lifecycle) -> Self {
        Self { life: life.clone() }
    }

    /// The worker's stop token: a service watches it to end at once.
    pub(crate) fn stop(&self) -> tokio_util::sync::CancellationToken {
        self.life.stop.clone()
    }

    /// Runs the service `name` (made anew by `make` after a panic) until it returns or `stop`.
    pub(crate) fn service<F, Fut>(&self, name: String, make: F)
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let stop = self.life.stop.clone();
        let span = tracing::info_span!("task", task = %name);
        self.life.tracker.spawn(
            async move {
                let mut delay = FIRST_RESTART_DELAY;
                loop {
                    let started = Instant::now();
                    let run = CatchPanic(Box::pin(make()));
                    tokio::pin!(run);
                    let ended = tokio::select! {
                        ended = &mut run => ended,
                        // The service sees `stop` itself and may have a last word (presence
                        // says it leaves): it gets a short grace, so a hung call never holds
                        // the drain up.
                        _ = stop.cancelled() => match tokio::time::timeout(STOP_GRACE, &mut run).await {
                            Ok(ended) => ended,
                            Err(_) => {
                                debug!(task = %name, grace = ?STOP_GRACE, "background task cut short after the stop");
                                return;
                            }
                        },
                    };
                    match ended {
                        Ok(()) => {
                            debug!(task = %name, "background task ended");
                            return;
                        }
                        Err(panic) => {
                            if started.elapsed() >= HEALTHY_RUN {
                                delay = FIRST_RESTART_DELAY;
                            }
                            error!(task = %name, panic, restart_in = ?delay,
                                   "background task panicked; restarting it");
                        }
                    }
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(MAX_RESTART_DELAY);
                }
            }
            .instrument(span),
        );
    }

    /// Runs the short job `name` (about queue `queue`) once, until it ends or `stop`.
    pub(crate) fn call<Fut>(&self, name: &'static str, queue: &str, job: Fut)
    where
        Fut: Future<Output = ()> + Send + 'static,
    {
        let stop = self.life.stop.clone();
        let queue = queue.to_string();
        self.life.tracker.spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {
                    debug!(task = name, queue, "background call cut short by the stop");
                }
                ended = CatchPanic(Box::pin(job)) => {
                    if let Err(panic) = ended {
                        error!(task = name, queue, panic, "background call panicked");
                    }
                }
            }
        });
    }
}

/// `future`, with how it ended logged by `name`: for the servers that run beside the tracker
/// (ops and trigger endpoints, aborted when the worker is done, never holding the drain up).
pub(crate) async fn logged(name: &'static str, future: impl Future<Output = ()> + Send) {
    match CatchPanic(Box::pin(future)).await {
        Ok(()) => debug!(task = name, "server ended"),
        Err(panic) => error!(task = name, panic, "server panicked; it no longer answers"),
    }
}

/// A future with a panic inside it turned into `Err(panic text)`.
struct CatchPanic<'a>(Pin<Box<dyn Future<Output = ()> + Send + 'a>>);

impl Future for CatchPanic<'_> {
    type Output = Result<(), String>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let future = &mut self.0;
        // Never polled again after a panic: the caller stops at the first Ready.
        match std::panic::catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx))) {
            Ok(Poll::Ready(())) => Poll::Ready(Ok(())),
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => Poll::Ready(Err(crate::listener::panic_text(payload))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn a_panicking_service_is_restarted_until_stop_and_the_drain_waits_for_it() {
        let life = Lifecycle::default();
        let tasks = Tasks::new(&life);
        let starts = Arc::new(AtomicU32::new(0));
        let counted = starts.clone();
        let stop = life.stop.clone();
        tasks.service("flaky".into(), move || {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            let stop = stop.clone();
            async move {
                if n < 3 {
                    panic!("flaky service, start {n}");
                }
                stop.cancelled().await;
            }
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(
            starts.load(Ordering::SeqCst),
            4,
            "three panics, three restarts"
        );
        life.tracker.close();
        assert!(!life.tracker.is_empty());
        life.stop.cancel();
        tokio::time::timeout(Duration::from_secs(1), life.tracker.wait())
            .await
            .expect("the service ends at stop");
    }

    #[tokio::test(start_paused = true)]
    async fn a_service_that_ignores_stop_is_dropped_after_the_grace() {
        let life = Lifecycle::default();
        Tasks::new(&life).service("deaf".into(), std::future::pending);
        life.tracker.close();
        life.stop.cancel();
        let started = Instant::now();
        life.tracker.wait().await;
        assert_eq!(started.elapsed(), STOP_GRACE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_ends_at_stop_and_its_panic_is_contained() {
        let life = Lifecycle::default();
        let tasks = Tasks::new(&life);
        tasks.call("boom", "q", async { panic!("boom") });
        tasks.call("hangs", "q", std::future::pending());
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            life.tracker.len(),
            1,
            "the panicked call ended, the hanging one runs"
        );
        life.stop.cancel();
        life.tracker.close();
        tokio::time::timeout(Duration::from_secs(1), life.tracker.wait())
            .await
            .expect("a call ends at stop");
    }
}
