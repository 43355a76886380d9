//! The restart policy (message-life.md): a replacement waits 100 ms, doubling after each task in a
//! row that ended within 10 s of starting (25.6 s for the ninth), and the tenth is not replaced.

use std::time::Duration;

use tokio::time::Instant;

use super::{Restarts, QUICK_FAILURE};

#[tokio::test(start_paused = true)]
async fn replacements_wait_longer_after_each_quick_failure_and_the_tenth_is_not_replaced() {
    let mut restarts = Restarts::default();
    let mut delays = Vec::new();
    while let Some(delay) = restarts.failed(Some(Instant::now())) {
        delays.push(delay.as_millis());
        assert!(delays.len() < 20, "the budget never ran out: {delays:?}");
    }
    assert_eq!(
        delays,
        vec![100, 200, 400, 800, 1_600, 3_200, 6_400, 12_800, 25_600]
    );
    // A task that never got to start (its back-off was cut) counts as quick too.
    let mut never_started = Restarts::default();
    for _ in 0..9 {
        assert!(never_started.failed(None).is_some());
    }
    assert_eq!(never_started.failed(None), None);
}

#[tokio::test(start_paused = true)]
async fn a_task_that_ran_10_s_starts_the_count_over() {
    let mut restarts = Restarts { quick_in_a_row: 8 };
    // Exactly 10 s after its start is no longer "right after it started".
    let started = Instant::now();
    tokio::time::advance(QUICK_FAILURE).await;
    assert_eq!(
        restarts.failed(Some(started)),
        Some(Duration::from_millis(100))
    );
    let started = Instant::now();
    tokio::time::advance(QUICK_FAILURE - Duration::from_millis(1)).await;
    assert_eq!(
        restarts.failed(Some(started)),
        Some(Duration::from_millis(200)),
        "just under 10 s: quick, the second in a row"
    );
}
