//! Pub/sub messages dropped unread (over `bus.max_envelope_size`, not text, unsigned or wrongly
//! signed, not an envelope): anyone who can `PUBLISH` to the prefix can send them, so each is
//! not a line of its own. They are logged at most once a second (warn, target
//! `ebbflow::bus::redis::droplog`), with the count by reason since the last such line; drops held
//! back are logged by a line of their own once the second has passed, so a short burst is
//! reported whole. The `refused` ones are counted in `ebbflow_bus_refused_total` as before.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::throttle::{self, Due, Throttle};

/// Why a pub/sub message was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Drop {
    /// Larger than `bus.max_envelope_size`.
    TooLarge,
    /// Not UTF-8 text.
    NotText,
    /// Unsigned or wrongly signed while `bus.signing_key` is set.
    Unsigned,
    /// Not an ebbflow envelope (JSON that does not decode as one).
    NotEnvelope,
}

impl Drop {
    const ALL: [Drop; 4] = [
        Drop::TooLarge,
        Drop::NotText,
        Drop::Unsigned,
        Drop::NotEnvelope,
    ];

    const fn label(self) -> &'static str {
        match self {
            Drop::TooLarge => "over_max_envelope_size",
            Drop::NotText => "not_text",
            Drop::Unsigned => "unsigned_or_wrongly_signed",
            Drop::NotEnvelope => "not_an_envelope",
        }
    }
}

/// The least time between two lines.
pub(super) const LOG_EVERY: Duration = Duration::from_secs(1);

/// The throttled log of dropped pub/sub messages; clones share it.
#[derive(Debug, Clone)]
pub(super) struct DropLog(Arc<Mutex<Throttle<{ Drop::ALL.len() }>>>);

impl Default for DropLog {
    fn default() -> Self {
        let labels = Drop::ALL.map(Drop::label);
        Self(Arc::new(Mutex::new(Throttle::new(labels, LOG_EVERY))))
    }
}

fn log((dropped, reasons): (u64, String)) {
    tracing::warn!(
        dropped,
        reasons = %reasons,
        "bus dropped {dropped} pub/sub message(s) since its last such line ({reasons}); \
         something else publishes under bus.channel_prefix"
    );
}

impl DropLog {
    /// Counts one drop for `why` and logs it (throttled).
    pub(super) fn dropped(&self, why: Drop) {
        let due = {
            let mut held = self.0.lock().unwrap_or_else(|e| e.into_inner());
            held.count(why as usize, Instant::now())
        };
        match due {
            Due::Now(dropped, reasons) => log((dropped, reasons)),
            Due::At(at) => {
                let held = self.0.clone();
                throttle::later(at, move || {
                    let line = {
                        let mut held = held.lock().unwrap_or_else(|e| e.into_inner());
                        held.flush(Instant::now())
                    };
                    if let Some(line) = line {
                        log(line);
                    }
                });
            }
            Due::Held => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2,000 `PUBLISH ebbflow:all notjson` in 2 s: a few lines, every drop counted.
    #[tokio::test(start_paused = true)]
    async fn a_flood_of_foreign_messages_logs_a_line_a_second_counting_every_one() {
        let logs = crate::throttle::captured::Captured::start();
        let log = DropLog::default();
        for i in 0..2_000u32 {
            log.dropped(if i % 100 == 0 {
                Drop::NotText
            } else {
                Drop::NotEnvelope
            });
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(LOG_EVERY * 2).await;
        let text = logs.text();
        let counts = logs.counts("dropped");
        assert!((2..=4).contains(&counts.len()), "{text}");
        assert_eq!(counts.iter().sum::<u64>(), 2_000, "{text}");
        assert!(
            text.contains("not_an_envelope=") && text.contains("not_text="),
            "{text}"
        );
    }
}
