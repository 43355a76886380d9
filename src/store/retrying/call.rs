//! One store call retried on transient errors: the policy behind the retrying layer.
//!
//! [`retry_call`] retries one store call on transient errors (throttling, 5xx, our cut-off,
//! connection errors, an unavailable token) with `backon`'s exponential back-off and jitter, a
//! bounded number of times, and reports how many tries went unanswered, so the caller can tell
//! what a retry after one means. A refusal of our credentials (401/403) is retried too, until
//! `refusals_before_fatal` refusals in a row (over every call of the store) make it final.
//! Every other error is returned at once.

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::store::settings::RetrySettings;
use crate::store::StoreError;

/// Refusals of our credentials (401/403) in a row, over every call of one store: a refusal
/// becomes final only once this reaches `refusals_before_fatal`; any answer that proves the
/// credentials work resets it.
#[derive(Debug, Default)]
pub(crate) struct RefusalStreak(AtomicU32);

impl RefusalStreak {
    /// Refusals in a row so far.
    #[cfg(test)]
    pub(crate) fn get(&self) -> u32 {
        self.0.load(Ordering::SeqCst)
    }
}

/// How one call went over its tries.
#[derive(Debug)]
pub(crate) struct CallReport<T> {
    /// The last try's result.
    pub result: Result<T, StoreError>,
    /// Tries that went unanswered ([`StoreError::Unanswered`]): each may have taken effect.
    pub unanswered: u32,
    /// Tries made.
    pub tries: u32,
}

/// Runs `op` (one store call named `what`, on `queue`) and retries it on transient errors:
/// exponential back-off with jitter between `min_delay` and `max_delay`, at most
/// `max_attempts` tries in all. A try that takes longer than `request_timeout` is cut off and
/// counts as unanswered. A refusal (401/403) is retried on its own back-off, outside
/// `max_attempts`, until `refusals` reaches `refusals_before_fatal`. Each retry is logged at
/// warn.
pub(crate) async fn retry_call<T, F, Fut>(
    settings: &RetrySettings,
    refusals: &RefusalStreak,
    queue: &str,
    what: &str,
    op: F,
) -> CallReport<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    retry_call_until(settings, refusals, queue, what, None, op).await
}

/// [`retry_call`], and with `until` set, transient errors are retried past `max_attempts` for
/// as long as the next try can start before `until` (a delete while its message's lease
/// lasts): the back-off keeps growing to `max_delay` and stays there. `until` never shortens
/// the `max_attempts` budget.
pub(crate) async fn retry_call_until<T, F, Fut>(
    settings: &RetrySettings,
    refusals: &RefusalStreak,
    queue: &str,
    what: &str,
    until: Option<Instant>,
    mut op: F,
) -> CallReport<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let cutoff = settings.request_timeout;
    let curve = ExponentialBuilder::default()
        .with_min_delay(settings.min_delay)
        .with_max_delay(settings.max_delay)
        .with_jitter();
    // With a deadline the curve has no count of its own: the deadline bounds it.
    let mut transient_delays = curve.without_max_times().build();
    let budget = settings.max_attempts;
    // Bounded by the streak, not by a count of its own.
    let mut refusal_delays = curve.without_max_times().build();
    let (mut tries, mut unanswered) = (0, 0);
    loop {
        tries += 1;
        let result = tokio::time::timeout(cutoff, op())
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::Unanswered {
                    queue: queue.to_string(),
                    detail: format!("no answer within {cutoff:?}"),
                    source: None,
                })
            });
        let retry_in = match &result {
            Err(e @ StoreError::Unauthorized { .. }) => {
                let streak = refusals.0.fetch_add(1, Ordering::SeqCst) + 1;
                let limit = settings.refusals_before_fatal;
                let delay = (streak < limit).then(|| refusal_delays.next()).flatten();
                if let Some(delay) = delay {
                    debug!(queue, call = what, refusals = streak, limit, retry_in = ?delay, error = %e,
                          "the service refused our credentials; retrying before taking it as final");
                }
                delay
            }
            Err(e) if e.is_transient() => {
                if matches!(e, StoreError::Unanswered { .. }) {
                    unanswered += 1;
                }
                let delay = transient_delays.next().filter(|delay| {
                    tries < budget || until.is_some_and(|t| Instant::now() + *delay < t)
                });
                if let Some(delay) = delay {
                    debug!(queue, call = what, tries, retry_in = ?delay, error = %e, "transient error; retrying");
                }
                delay
            }
            // The service answered, and not with a refusal: the credentials work.
            _ => {
                refusals.0.store(0, Ordering::SeqCst);
                None
            }
        };
        match retry_in {
            Some(delay) => tokio::time::sleep(delay).await,
            None => {
                let result = match result {
                    // One fault, one line: a send or receive with an unanswered try logs
                    // its own WARN (what the lost try may have done, with the tries).
                    Ok(value) if tries > 1 && unanswered > 0 && SAYS_UNANSWERED.contains(&what) => {
                        debug!(
                            queue,
                            call = what,
                            tries,
                            "the call succeeded after transient faults"
                        );
                        Ok(value)
                    }
                    Ok(value) if tries > 1 => {
                        warn!(
                            queue,
                            call = what,
                            tries,
                            "the call succeeded after transient faults"
                        );
                        Ok(value)
                    }
                    Err(e) if tries > 1 => Err(with_tries(e, tries)),
                    result => result,
                };
                return CallReport {
                    result,
                    unanswered,
                    tries,
                };
            }
        }
    }
}

/// The calls whose callers log their own WARN line for an unanswered try (`Retrying::send`,
/// `Retrying::receive`), so a success after one is not said twice.
const SAYS_UNANSWERED: &[&str] = &["send", "receive"];

/// `e` with the number of tries the call took at the end of its detail.
fn with_tries(e: StoreError, tries: u32) -> StoreError {
    let count = |detail: String| format!("{detail} (after {tries} tries)");
    match e {
        StoreError::Transient {
            queue,
            detail,
            source,
        } => StoreError::Transient {
            queue,
            detail: count(detail),
            source,
        },
        StoreError::Unanswered {
            queue,
            detail,
            source,
        } => StoreError::Unanswered {
            queue,
            detail: count(detail),
            source,
        },
        StoreError::TokenUnavailable {
            queue,
            detail,
            source,
        } => StoreError::TokenUnavailable {
            queue,
            detail: count(detail),
            source,
        },
        StoreError::Unauthorized {
            queue,
            detail,
            source,
        } => StoreError::Unauthorized {
            queue,
            detail: count(detail),
            source,
        },
        e => e,
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::Levels;
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    fn transient() -> StoreError {
        StoreError::Transient {
            queue: "q".into(),
            detail: "503 ServerBusy".into(),
            source: None,
        }
    }

    fn settings(max_attempts: u32, refusals_before_fatal: u32) -> RetrySettings {
        RetrySettings {
            max_attempts,
            min_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(300),
            request_timeout: Duration::from_secs(2),
            refusals_before_fatal,
        }
    }

    fn refused() -> StoreError {
        StoreError::Unauthorized {
            queue: "q".into(),
            detail: "403 AuthenticationFailed".into(),
            source: None,
        }
    }

    /// Runs a call whose n-th try (from 0) answers `script(n)`, and counts the tries.
    async fn scripted<T>(
        settings: &RetrySettings,
        refusals: &RefusalStreak,
        script: impl Fn(u32) -> Result<T, StoreError>,
    ) -> CallReport<T> {
        let tries = AtomicU32::new(0);
        let report = retry_call(settings, refusals, "q", "receive", || {
            let n = tries.fetch_add(1, Ordering::SeqCst);
            std::future::ready(script(n))
        })
        .await;
        assert_eq!(report.tries, tries.load(Ordering::SeqCst));
        report
    }

    #[tokio::test(start_paused = true)]
    async fn transient_errors_are_retried_with_growing_bounded_delays() {
        let start = tokio::time::Instant::now();
        let report = scripted::<()>(&settings(4, 3), &RefusalStreak::default(), |_| {
            Err(transient())
        })
        .await;
        assert!(report.result.unwrap_err().is_transient());
        assert_eq!(report.tries, 4, "max_attempts tries, no more");
        assert_eq!(report.unanswered, 0, "a 503 is an answer");
        // Three sleeps: 100, 200, 300 (capped) ms, each plus up to its own size in jitter.
        let slept = start.elapsed();
        assert!(
            slept >= Duration::from_millis(600) && slept <= Duration::from_millis(1200),
            "{slept:?}"
        );
    }

    /// The delays are jittered: without jitter every run sleeps exactly 600 ms (the bound the
    /// test above accepts), so each run here sleeps more, and the runs differ.
    #[tokio::test(start_paused = true)]
    async fn retry_delays_are_jittered() {
        let mut slept = Vec::new();
        for _ in 0..5 {
            let start = tokio::time::Instant::now();
            let report = scripted::<()>(&settings(4, 3), &RefusalStreak::default(), |_| {
                Err(transient())
            })
            .await;
            assert_eq!(report.tries, 4);
            slept.push(start.elapsed());
        }
        assert!(
            slept.iter().all(|d| *d > Duration::from_millis(600)),
            "{slept:?}"
        );
        slept.sort();
        slept.dedup();
        assert!(slept.len() > 1, "five runs slept alike: {slept:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_after_faults_is_returned_and_other_errors_are_not_retried() {
        let refusals = RefusalStreak::default();
        let report = scripted(&settings(6, 3), &refusals, |n| {
            if n < 2 {
                Err(transient())
            } else {
                Ok(n)
            }
        })
        .await;
        assert_eq!(report.result.unwrap(), 2);
        let report = scripted::<()>(&settings(6, 3), &refusals, |_| {
            Err(StoreError::MessageNotFound {
                queue: "q".into(),
                id: "m".into(),
            })
        })
        .await;
        assert!(matches!(
            report.result,
            Err(StoreError::MessageNotFound { .. })
        ));
        assert_eq!(report.tries, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_try_is_cut_off_counted_unanswered_and_retried() {
        let tries = AtomicU32::new(0);
        let report = retry_call(
            &settings(3, 3),
            &RefusalStreak::default(),
            "q",
            "delete",
            || {
                let n = tries.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n < 2 {
                        // Hangs past the cut-off.
                        std::future::pending::<()>().await;
                    }
                    Ok::<_, StoreError>(n)
                }
            },
        )
        .await;
        assert_eq!(report.result.unwrap(), 2);
        assert_eq!((report.tries, report.unanswered), (3, 2));
        let report = scripted::<()>(&settings(2, 3), &RefusalStreak::default(), |_| {
            Err(StoreError::Unanswered {
                queue: "q".into(),
                detail: "connection reset".into(),
                source: None,
            })
        })
        .await;
        let e = report.result.unwrap_err();
        assert!(e.is_transient() && report.unanswered == 2, "{e}");
    }

    #[tokio::test(start_paused = true)]
    async fn one_refusal_is_retried_and_only_a_streak_is_final() {
        // max_attempts = 1: refusals are retried outside it.
        let s = settings(1, 3);
        let refusals = RefusalStreak::default();
        let report = scripted(
            &s,
            &refusals,
            |n| if n < 2 { Err(refused()) } else { Ok(n) },
        )
        .await;
        assert_eq!(report.result.unwrap(), 2);
        assert_eq!(refusals.get(), 0, "an answer resets the streak");
        let report = scripted::<()>(&s, &refusals, |_| Err(refused())).await;
        assert!(matches!(
            report.result,
            Err(StoreError::Unauthorized { .. })
        ));
        assert_eq!(report.tries, 3, "final at the third refusal in a row");
        // The streak spans calls: two refused calls in a row, the second ends it.
        let refusals = RefusalStreak::default();
        let first = scripted::<()>(&s, &refusals, |n| {
            if n == 0 {
                Err(refused())
            } else {
                Err(transient())
            }
        })
        .await;
        assert!(first.result.unwrap_err().is_transient());
        assert_eq!(refusals.get(), 1, "a 503 proves nothing about credentials");
        let second = scripted::<()>(&s, &refusals, |_| Err(refused())).await;
        assert_eq!(second.tries, 2);
        assert!(matches!(
            second.result,
            Err(StoreError::Unauthorized { .. })
        ));
        // With refusals_before_fatal = 1 the first refusal is final, as before.
        let report = scripted::<()>(&settings(6, 1), &RefusalStreak::default(), |_| {
            Err(refused())
        })
        .await;
        assert_eq!(report.tries, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn with_a_deadline_transient_errors_are_retried_until_it() {
        let s = settings(3, 3);
        let start = Instant::now();
        let until = start + Duration::from_secs(20);
        let tries = AtomicU32::new(0);
        let report = retry_call_until(
            &s,
            &RefusalStreak::default(),
            "q",
            "delete",
            Some(until),
            || {
                tries.fetch_add(1, Ordering::SeqCst);
                std::future::ready(Err::<(), _>(transient()))
            },
        )
        .await;
        assert!(report.result.is_err());
        assert!(report.tries > 3, "past max_attempts: {}", report.tries);
        let ended = start.elapsed();
        // The last try started before the deadline; none after it.
        assert!(
            ended <= Duration::from_secs(20) && ended >= Duration::from_secs(19),
            "{ended:?}"
        );
        // A deadline already passed keeps the max_attempts budget.
        let report = retry_call_until(
            &s,
            &RefusalStreak::default(),
            "q",
            "delete",
            Some(Instant::now()),
            || std::future::ready(Err::<(), _>(transient())),
        )
        .await;
        assert_eq!(report.tries, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_log_at_debug_and_a_fault_costs_one_warn_line_or_a_counted_error() {
        use tracing_subscriber::layer::SubscriberExt;
        let levels = Levels::default();
        let _guard =
            tracing::subscriber::set_default(tracing_subscriber::registry().with(levels.clone()));
        // Fails every try: no warn while retrying; the error says how many tries it took.
        let report = scripted::<()>(&settings(4, 3), &RefusalStreak::default(), |_| {
            Err(transient())
        })
        .await;
        let e = report.result.unwrap_err();
        assert!(e.to_string().ends_with("(after 4 tries)"), "{e}");
        assert!(e.is_transient(), "still the same kind of error: {e}");
        assert_eq!(levels.count(tracing::Level::WARN), 0);
        // (Debug lines are not counted: under `cargo test` other threads' first use of a
        // callsite can race this thread's interest, and a missed one proves nothing.)
        // Recovers after two faults: one warn line for the fault.
        let report = scripted(&settings(6, 3), &RefusalStreak::default(), |n| {
            if n < 2 {
                Err(transient())
            } else {
                Ok(n)
            }
        })
        .await;
        assert_eq!(report.result.unwrap(), 2);
        assert_eq!(levels.count(tracing::Level::WARN), 1);
        // A first-try success or a non-transient error: nothing added.
        let report = scripted(&settings(6, 3), &RefusalStreak::default(), Ok).await;
        assert_eq!(report.result.unwrap(), 0);
        let report = scripted::<()>(&settings(6, 3), &RefusalStreak::default(), |_| {
            Err(StoreError::MessageNotFound {
                queue: "q".into(),
                id: "m".into(),
            })
        })
        .await;
        let e = report.result.unwrap_err();
        assert!(!e.to_string().contains("tries"), "{e}");
        // One try in all (max_attempts = 1): the service's error as it is, no count of tries.
        let report = scripted::<()>(&settings(1, 3), &RefusalStreak::default(), |_| {
            Err(transient())
        })
        .await;
        assert_eq!(report.tries, 1);
        assert_eq!(
            report.result.unwrap_err().to_string(),
            transient().to_string()
        );
        assert_eq!(levels.count(tracing::Level::WARN), 1);
    }
}
