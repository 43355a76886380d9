//! The flow rules a queue's tasks share: the moving average of handler time, the ahead
//! allowance it gives, the refill size and the refill's patience (docs/src/message-life.md).

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio::sync::Notify;

use super::{slots, Flow};

const VISIBILITY: Duration = Duration::from_secs(30);

/// A queue's flow at `concurrency` and `batch`, with `refill` (set in config when `set`).
fn flow(concurrency: usize, batch: u8, refill: usize, set: bool) -> Flow {
    Flow {
        slots: slots::Slots::new(concurrency),
        wake: Notify::new(),
        batch,
        refill,
        refill_set: set,
        covered: false,
        wakes: AtomicU64::new(0),
        handler_ms: AtomicU64::new(0),
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn the_average_starts_at_the_first_run_then_weighs_each_run_an_eighth() {
    let f = flow(4, 32, 2, false);
    f.observe_run(ms(800));
    assert_eq!(f.handler_ms.load(std::sync::atomic::Ordering::Relaxed), 800);
    f.observe_run(ms(1_600));
    // 800 - 800/8 + 1600/8
    assert_eq!(f.handler_ms.load(std::sync::atomic::Ordering::Relaxed), 900);
    // A run under a millisecond counts as one.
    let g = flow(4, 32, 2, false);
    g.observe_run(Duration::from_micros(10));
    assert_eq!(g.handler_ms.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[test]
fn nothing_waits_ahead_before_a_run_or_when_a_run_takes_a_quarter_of_the_timeout() {
    let f = flow(4, 32, 2, false);
    assert_eq!(f.ahead_limit(VISIBILITY), 0, "no handler has run yet");
    // A quarter of 30 s is 7.5 s: a run of exactly that, or longer, holds nobody waiting.
    f.observe_run(ms(7_500));
    assert_eq!(f.ahead_limit(VISIBILITY), 0);
    let g = flow(4, 32, 2, false);
    g.observe_run(ms(9_000));
    assert_eq!(g.ahead_limit(VISIBILITY), 0);
}

#[test]
fn the_ahead_allowance_is_whole_runs_in_a_quarter_of_the_timeout_per_slot_up_to_a_batch() {
    // 7.5 s / 3 s = 2 whole runs, on each of 4 slots: 8 may wait.
    let f = flow(4, 32, 2, false);
    f.observe_run(ms(3_000));
    assert_eq!(f.ahead_limit(VISIBILITY), 8);
    // Just under a quarter: one run per slot.
    let g = flow(5, 32, 2, false);
    g.observe_run(ms(7_499));
    assert_eq!(g.ahead_limit(VISIBILITY), 5);
    // Fast handlers: capped at the batch size.
    let h = flow(4, 20, 2, false);
    h.observe_run(ms(20));
    assert_eq!(h.ahead_limit(VISIBILITY), 20);
}

#[test]
fn a_refill_is_the_threshold_unless_messages_may_wait_ahead_and_it_was_not_set() {
    let f = flow(8, 32, 4, false);
    assert_eq!(f.refill_size(0), 4, "no ahead room: the threshold");
    // With ahead room: two thirds of what slots and room hold together, up to a batch.
    assert_eq!(f.refill_size(10), 12, "(8 + 10) * 2 / 3");
    assert_eq!(f.refill_size(32), 21, "min(8 + 32, 32) * 2 / 3");
    // Never below the threshold.
    let g = flow(2, 32, 2, false);
    assert_eq!(g.refill_size(1), 2, "(2 + 1) * 2 / 3 = 2");
    let h = flow(1, 32, 1, false);
    assert_eq!(h.refill_size(0), 1);
    let k = flow(6, 32, 5, false);
    assert_eq!(
        k.refill_size(1),
        5,
        "(6 + 1) * 2 / 3 = 4, under the threshold 5"
    );
    // `refill_threshold` set in config stands, ahead room or not.
    let set = flow(8, 32, 3, true);
    assert_eq!(set.refill_size(10), 3);
}

#[test]
fn a_refill_waits_half_a_run_between_100_ms_and_2_s() {
    let f = flow(4, 32, 2, false);
    assert_eq!(f.refill_patience(), ms(100), "no run yet: the shortest");
    f.observe_run(ms(600));
    assert_eq!(f.refill_patience(), ms(300));
    let g = flow(4, 32, 2, false);
    g.observe_run(ms(60));
    assert_eq!(g.refill_patience(), ms(100));
    let h = flow(4, 32, 2, false);
    h.observe_run(ms(10_000));
    assert_eq!(h.refill_patience(), Duration::from_secs(2));
}
