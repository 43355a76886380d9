//! Whether the bus is up, as the results of its calls say: the rule that keeps a result that was
//! under way across a change from undoing it.
//!
//! Calls run on two connections and many tasks. A slow process (a loaded machine) may handle
//! the answer to a call made before Redis went away after the loss was already seen, or the
//! error of a call made before the reconnect after the bus was back. Applied, such a result
//! flips the health back and forth: every flip up wakes every listener once more and counts one
//! more outage. So a call's result changes the health only when no change happened since the
//! call began; the connection's own events (a disconnection, the subscriptions confirmed after
//! a reconnect) always do.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::watch;

use crate::bus::Health;

/// Sets `health` to `now`, unless `since` is the count of changes when the call whose result
/// this is began and a change happened after it (`None`: an event of the connection itself,
/// always applied). `changes` counts the changes. Whether the health changed.
pub(super) fn apply(
    health: &watch::Sender<Health>,
    changes: &AtomicU64,
    since: Option<u64>,
    now: Health,
) -> bool {
    health.send_if_modified(|h| {
        let stale = since.is_some_and(|s| s != changes.load(Ordering::SeqCst));
        if stale || *h == now {
            return false;
        }
        *h = now;
        changes.fetch_add(1, Ordering::SeqCst);
        true
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_under_way_across_a_change_does_not_undo_it() {
        let (health, _rx) = watch::channel(Health::Up);
        let changes = AtomicU64::new(0);
        let read = |c: &AtomicU64| c.load(Ordering::SeqCst);
        // Two calls begin while the bus is up; the connection drops.
        let (pulse, read_call) = (read(&changes), read(&changes));
        assert!(apply(&health, &changes, None, Health::Down));
        // The pulse's answer had arrived before the drop: it does not bring the bus back.
        assert!(!apply(&health, &changes, Some(pulse), Health::Up));
        assert_eq!(*health.borrow(), Health::Down);
        // A call made while down that still fails changes nothing; one that succeeds does.
        let ping = read(&changes);
        assert!(!apply(&health, &changes, Some(ping), Health::Down));
        assert!(apply(&health, &changes, Some(ping), Health::Up));
        // The error of the read that began before the reconnect does not take it down again.
        assert!(!apply(&health, &changes, Some(read_call), Health::Down));
        assert_eq!(*health.borrow(), Health::Up);
        // A call made since fails: down again, counted once.
        let next = read(&changes);
        assert!(apply(&health, &changes, Some(next), Health::Down));
        assert_eq!(read(&changes), 3);
        // The connection's own events always apply.
        assert!(apply(&health, &changes, None, Health::Up));
    }
}
