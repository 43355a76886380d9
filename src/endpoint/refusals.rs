//! Refused connections and requests of the HTTP endpoints: counted for the metrics, and logged
//! at most twice a second per endpoint with how many there were by reason, so a flood of bad
//! tokens or idle connections neither floods the logs nor goes unseen. Nothing a caller sent
//! (its token, its path, its query) is logged.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::time::Instant;

use crate::throttle::{self, Due, Throttle};

/// Why an endpoint refused a connection or a request: the `reason` label of
/// `ebbflow_http_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Every connection slot was taken; the connection was closed at once.
    MaxConnections,
    /// The connection's peer (its source IP address) held all the slots it may; the
    /// connection was closed at once.
    MaxConnectionsPerPeer,
    /// A request's head did not arrive within the header-read timeout (or a kept-alive
    /// connection sat idle that long); the connection was closed.
    HeaderTimeout,
    /// A missing or wrong token (401).
    Unauthorized,
    /// Every request slot was taken (503).
    Busy,
    /// A request not answered within its timeout (408).
    Timeout,
}

impl Refusal {
    const ALL: [Refusal; 6] = [
        Refusal::MaxConnections,
        Refusal::MaxConnectionsPerPeer,
        Refusal::HeaderTimeout,
        Refusal::Unauthorized,
        Refusal::Busy,
        Refusal::Timeout,
    ];

    const fn label(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "max_connections",
            Refusal::MaxConnectionsPerPeer => "max_connections_per_peer",
            Refusal::HeaderTimeout => "header_timeout",
            Refusal::Unauthorized => "unauthorized",
            Refusal::Busy => "busy",
            Refusal::Timeout => "timeout",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

type RefusedLabels = Vec<(&'static str, &'static str)>;

/// Refused connections and requests of the HTTP endpoints, by `endpoint` (`trigger`, `ops`)
/// and `reason` ([`Refusal`]), exported as `ebbflow_http_refused_total`. Clones share counts.
/// Each endpoint logs its refusals at most once per 500 ms (info, target
/// `ebbflow::endpoint`), with the count by reason since its last such line; refusals held back
/// are logged by a line of their own once the interval has passed, so a short burst is never
/// reported as one.
#[derive(Debug, Clone, Default)]
pub struct Refusals {
    counts: Family<RefusedLabels, Counter>,
    throttle: Arc<Mutex<Throttles>>,
}

/// Each endpoint's log throttle, by endpoint.
#[derive(Debug, Default)]
struct Throttles(Vec<(&'static str, Throttle<{ Refusal::ALL.len() }>)>);

/// The least time between two refusal log lines of one endpoint.
pub(crate) const LOG_EVERY: Duration = Duration::from_millis(500);

fn log(endpoint: &'static str, (refused, reasons): (u64, String)) {
    tracing::info!(
        target: "ebbflow::endpoint",
        endpoint,
        refused,
        reasons = %reasons,
        "{endpoint} endpoint refused {refused} connection(s) or request(s) since its last such \
         line ({reasons})"
    );
}

impl Refusals {
    /// Counts one refusal by `endpoint` and logs it (throttled).
    pub(crate) fn refuse(&self, endpoint: &'static str, why: Refusal) {
        self.counts
            .get_or_create(&vec![("endpoint", endpoint), ("reason", why.label())])
            .inc();
        let due = {
            let mut all = self.throttle.lock().unwrap_or_else(|e| e.into_inner());
            let at = match all.0.iter().position(|(e, _)| *e == endpoint) {
                Some(i) => i,
                None => {
                    let labels = Refusal::ALL.map(Refusal::label);
                    all.0.push((endpoint, Throttle::new(labels, LOG_EVERY)));
                    all.0.len() - 1
                }
            };
            all.0[at].1.count(why.index(), Instant::now())
        };
        match due {
            Due::Now(refused, reasons) => log(endpoint, (refused, reasons)),
            Due::At(at) => self.flush_at(endpoint, at),
            Due::Held => {}
        }
    }

    /// Logs what `endpoint` holds back at `at` (on the runtime refusals happen on; without one,
    /// the next refusal's line carries the count).
    fn flush_at(&self, endpoint: &'static str, at: Instant) {
        let throttle = self.throttle.clone();
        throttle::later(at, move || {
            let line = {
                let mut all = throttle.lock().unwrap_or_else(|e| e.into_inner());
                all.0
                    .iter_mut()
                    .find(|(e, _)| *e == endpoint)
                    .and_then(|(_, t)| t.flush(Instant::now()))
            };
            if let Some(line) = line {
                log(endpoint, line);
            }
        });
    }

    /// How many refusals of `endpoint` for `why` were counted.
    pub fn count(&self, endpoint: &'static str, why: Refusal) -> u64 {
        self.counts
            .get_or_create(&vec![("endpoint", endpoint), ("reason", why.label())])
            .get()
    }

    /// The counter family, for a metrics registry.
    pub(crate) fn family(&self) -> Family<RefusedLabels, Counter> {
        self.counts.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_flood_of_refusals_logs_a_couple_of_lines_a_second_counting_every_one() {
        let logs = crate::throttle::captured::Captured::start();
        let refusals = Refusals::default();
        // 3 s of refusals, one a millisecond, mostly bad tokens.
        for i in 0..3_000u32 {
            let why = if i % 10 == 0 {
                Refusal::MaxConnections
            } else {
                Refusal::Unauthorized
            };
            refusals.refuse("trigger", why);
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // The tail is logged once its interval has passed, without another refusal.
        tokio::time::sleep(LOG_EVERY * 2).await;
        let got = logs.counted("refused");
        assert!(
            (6..=8).contains(&got.len()),
            "about two lines a second: {got:#?}"
        );
        assert_eq!(got.iter().map(|(n, _)| n).sum::<u64>(), 3_000, "{got:#?}");
        assert!(
            got[1].1.contains("unauthorized=") && got[1].1.contains("max_connections="),
            "{got:#?}"
        );
        assert_eq!(refusals.count("trigger", Refusal::Unauthorized), 2_700);
        // A short burst is reported whole, not as its first refusal.
        logs.clear();
        for _ in 0..40 {
            refusals.refuse("ops", Refusal::Unauthorized);
        }
        tokio::time::sleep(LOG_EVERY + Duration::from_millis(1)).await;
        let got = logs.counted("refused");
        assert_eq!(
            got.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            vec![1, 39],
            "{got:#?}"
        );
    }
}
