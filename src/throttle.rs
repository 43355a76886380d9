//! A log line at most once per interval for events anyone can cause (refused requests, foreign
//! bus messages): each event is counted by reason, the first after a quiet interval is logged
//! at once, and what is held back meanwhile is logged by a line of its own once the interval
//! has passed, so a short burst is reported whole and a flood costs a line per interval. A
//! leaf: it imports no room; the endpoints and the bus each keep their own reasons and words.

use std::fmt::Write as _;
use std::time::Duration;

use tokio::time::Instant;

/// What to do after counting one event.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Due {
    /// Log this line now: the total and `reason=count` pairs since the last line.
    Now(u64, String),
    /// Log what is held at this instant (see [`later`]); nothing is scheduled yet.
    At(Instant),
    /// Held: a line is already scheduled.
    Held,
}

/// One throttled log: `N` reasons, named by `labels` in the lines.
#[derive(Debug)]
pub(crate) struct Throttle<const N: usize> {
    labels: [&'static str; N],
    every: Duration,
    last: Option<Instant>,
    held: [u64; N],
    scheduled: bool,
}

impl<const N: usize> Throttle<N> {
    /// At most one line per `every`, reasons named by `labels`.
    pub(crate) fn new(labels: [&'static str; N], every: Duration) -> Self {
        Self {
            labels,
            every,
            last: None,
            held: [0; N],
            scheduled: false,
        }
    }

    /// Counts one event of reason `reason` (an index into the labels) at `now`.
    pub(crate) fn count(&mut self, reason: usize, now: Instant) -> Due {
        self.held[reason] += 1;
        match self.last {
            Some(last) if now.duration_since(last) < self.every => {
                if self.scheduled {
                    Due::Held
                } else {
                    self.scheduled = true;
                    Due::At(last + self.every)
                }
            }
            _ => self.take(now).map_or(Due::Held, |(n, r)| Due::Now(n, r)),
        }
    }

    /// The scheduled line's fields (what is held, emptied), at `now`.
    pub(crate) fn flush(&mut self, now: Instant) -> Option<(u64, String)> {
        self.scheduled = false;
        self.take(now)
    }

    /// What is held, as a line's fields, emptied: the total and `reason=count` pairs.
    fn take(&mut self, now: Instant) -> Option<(u64, String)> {
        let total: u64 = self.held.iter().sum();
        if total == 0 {
            return None;
        }
        let mut reasons = String::new();
        for (n, label) in self.held.iter_mut().zip(self.labels) {
            let n = std::mem::take(n);
            if n > 0 {
                let sep = if reasons.is_empty() { "" } else { " " };
                let _ = write!(reasons, "{sep}{label}={n}");
            }
        }
        self.last = Some(now);
        Some((total, reasons))
    }
}

/// Runs `flush` at `at` on the current Tokio runtime (without one, nothing runs and the next
/// event's line carries the count).
pub(crate) fn later(at: Instant, flush: impl FnOnce() + Send + 'static) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move {
            tokio::time::sleep_until(at).await;
            flush();
        });
    }
}

/// For the tests of the throttled logs: every line logged on this thread while a [`Captured`]
/// lives, and the counts they carry.
#[cfg(test)]
pub(crate) mod captured {
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Captures this thread's log lines (plain text) until dropped.
    pub(crate) struct Captured {
        lines: Lines,
        _guard: tracing::subscriber::DefaultGuard,
    }

    impl Captured {
        pub(crate) fn start() -> Self {
            let lines = Lines::default();
            let out = lines.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_writer(move || out.clone())
                .with_ansi(false)
                .finish();
            Self {
                lines,
                _guard: tracing::subscriber::set_default(subscriber),
            }
        }

        /// Everything logged so far.
        pub(crate) fn text(&self) -> String {
            String::from_utf8(self.lines.0.lock().unwrap().clone()).unwrap()
        }

        /// Forgets what was logged so far.
        pub(crate) fn clear(&self) {
            self.lines.0.lock().unwrap().clear();
        }

        /// Each line with the `<field>=N` it carries (a line without one panics the test).
        pub(crate) fn counted(&self, field: &str) -> Vec<(u64, String)> {
            let key = format!("{field}=");
            self.text()
                .lines()
                .map(|l| {
                    let n = l
                        .split(key.as_str())
                        .nth(1)
                        .and_then(|r| r.split(' ').next())
                        .and_then(|n| n.parse().ok())
                        .unwrap_or_else(|| panic!("no {key} in {l}"));
                    (n, l.to_string())
                })
                .collect()
        }

        /// The `<field>=N` of each line.
        pub(crate) fn counts(&self, field: &str) -> Vec<u64> {
            self.counted(field).into_iter().map(|(n, _)| n).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_is_logged_then_one_schedule_holds_the_rest_until_the_flush() {
        let every = Duration::from_secs(1);
        let mut t = Throttle::new(["a", "b"], every);
        let start = Instant::now();
        assert_eq!(t.count(0, start), Due::Now(1, "a=1".into()));
        let soon = start + Duration::from_millis(100);
        assert_eq!(t.count(1, soon), Due::At(start + every));
        assert_eq!(t.count(1, soon), Due::Held);
        assert_eq!(t.count(0, soon), Due::Held);
        assert_eq!(t.flush(start + every), Some((3, "a=1 b=2".into())));
        assert_eq!(t.flush(start + every), None);
        // After a quiet interval the next one is logged at once again.
        assert_eq!(t.count(1, start + every * 3), Due::Now(1, "b=1".into()));
    }
}
