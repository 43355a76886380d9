//! The test kit as a newcomer uses it: `HandlerTest` applies the queue's handler timeout as the
//! runtime does, gives each run a fresh message id, and reports a release's real reason; the
//! shipped layers refuse zero arguments with an error naming the argument.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ebbflow::config::QueueSettings;
use ebbflow::handler::layers::{CircuitBreaker, ConcurrencyLimit, Dedup, RateLimit};
use ebbflow::testing::{self, HandlerTest, Outcome};
use ebbflow::{Context, Handler, HandlerError};

/// Sleeps `for_` (ending early with `Ok` when `honour` is set and its timeout fires), counts
/// its runs.
#[derive(Clone, Default)]
struct Slow {
    for_: Duration,
    honour: bool,
    runs: Arc<AtomicU32>,
}

impl Handler for Slow {
    type Message = String;
    async fn handle(&self, _: String, ctx: Context) -> Result<(), HandlerError> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        tokio::select! {
            () = tokio::time::sleep(self.for_) => Ok(()),
            () = ctx.timeout().cancelled(), if self.honour => {
                assert!(ctx.cancellation().is_cancelled(), "cancellation fires with the timeout");
                Ok(())
            }
        }
    }
}

fn with_timeout(timeout: Duration, grace: Duration) -> QueueSettings {
    let mut settings = QueueSettings::default();
    settings.handler_timeout = Some(timeout);
    settings.handler_timeout_grace = grace;
    settings
}

#[tokio::test(start_paused = true)]
async fn the_kit_applies_the_handler_timeout_as_the_runtime_does() {
    let settings = with_timeout(Duration::from_secs(2), Duration::from_secs(1));
    // Past the timeout and the grace: dropped, retried as a timeout (a failure).
    let hangs = Slow {
        for_: Duration::from_secs(60),
        ..Slow::default()
    };
    let outcome = HandlerTest::new(hangs)
        .settings(settings.clone())
        .run("x")
        .await;
    let Outcome::Retried { error, .. } = &outcome else {
        panic!("{outcome:?}")
    };
    assert!(error.contains("timed out after 2s"), "{error}");
    // Ends within the grace with Ok after its timeout fired: the work is done, deleted.
    let honours = Slow {
        for_: Duration::from_secs(60),
        honour: true,
        ..Slow::default()
    };
    let test = HandlerTest::new(honours).settings(settings.clone());
    assert_eq!(test.run("x").await, Outcome::Deleted);
    // Ends within the grace without watching the signal: deleted too.
    let late = Slow {
        for_: Duration::from_millis(2_500),
        ..Slow::default()
    };
    let test = HandlerTest::new(late).settings(settings);
    assert_eq!(test.run("x").await, Outcome::Deleted);
    // Without a timeout configured a long run is just long.
    let long = Slow {
        for_: Duration::from_secs(600),
        ..Slow::default()
    };
    assert_eq!(HandlerTest::new(long).run("x").await, Outcome::Deleted);
}

#[tokio::test(start_paused = true)]
async fn each_run_is_a_new_message_unless_the_test_names_the_id() {
    let handler = Slow::default();
    let test = HandlerTest::new(handler.clone()).layer(Dedup::by_message_id(100));
    assert_eq!(test.run("x").await, Outcome::Deleted);
    assert_eq!(test.run("x").await, Outcome::Deleted);
    let batch = test.run_batch(["y", "z"]).await;
    assert_eq!(batch, [Outcome::Deleted, Outcome::Deleted]);
    assert_eq!(
        handler.runs.load(Ordering::SeqCst),
        4,
        "four messages, four runs"
    );
    // The same id twice (a redelivery): the second is a duplicate and does not run.
    let again = || testing::context("test-queue").message_id("m-7").build();
    assert_eq!(test.run_with("x", again()).await, Outcome::Deleted);
    assert_eq!(test.run_with("x", again()).await, Outcome::Deleted);
    assert_eq!(handler.runs.load(Ordering::SeqCst), 5);
}

/// Fails every run (for the breaker).
struct Down;

impl Handler for Down {
    type Message = String;
    async fn handle(&self, _: String, _: Context) -> Result<(), HandlerError> {
        Err(HandlerError::retry("downstream down"))
    }
}

/// Says "not now" for a minute.
struct NotNow;

impl Handler for NotNow {
    type Message = String;
    async fn handle(&self, _: String, _: Context) -> Result<(), HandlerError> {
        Err(HandlerError::release(Duration::from_secs(60)))
    }
}

fn reason(outcome: Outcome) -> String {
    match outcome {
        Outcome::Released { reason, .. } => reason,
        other => panic!("not released: {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_release_carries_the_reason_of_whoever_released_it() {
    let limited =
        HandlerTest::new(Slow::default()).layer(RateLimit::new(1, Duration::from_secs(10)));
    assert_eq!(limited.run("x").await, Outcome::Deleted);
    assert_eq!(reason(limited.run("x").await), "over the rate limit");
    let broken = HandlerTest::new(Down).layer(CircuitBreaker::new(1, Duration::from_secs(30)));
    assert!(matches!(broken.run("x").await, Outcome::Retried { .. }));
    assert_eq!(reason(broken.run("x").await), "circuit breaker open");
    assert_eq!(
        reason(HandlerTest::new(NotNow).run("x").await),
        "the handler said not now"
    );
}

#[test]
fn zero_arguments_are_refused_naming_the_argument() {
    let err = RateLimit::try_new(0, Duration::from_secs(1)).unwrap_err();
    assert_eq!(err.key, "RateLimit::new(calls)", "{err}");
    let err = RateLimit::try_new(5, Duration::ZERO).unwrap_err();
    assert_eq!(err.key, "RateLimit::new(every)", "{err}");
    let err = ConcurrencyLimit::try_new(0).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("ConcurrencyLimit::new(n) = 0: must be at least 1"),
        "{err}"
    );
    let err = CircuitBreaker::try_new(0, Duration::from_secs(1)).unwrap_err();
    assert_eq!(err.key, "CircuitBreaker::new(failures)", "{err}");
    assert!(RateLimit::try_new(1, Duration::from_secs(1)).is_ok());
    assert!(ConcurrencyLimit::try_new(1).is_ok());
}

#[test]
#[should_panic(expected = "RateLimit::new(calls) = 0: must be at least 1")]
fn new_with_zero_panics_naming_the_argument() {
    let _ = RateLimit::new(0, Duration::from_secs(1));
}
