//! Readiness as named checks: each part of the worker registers one and says how it is
//! (ready, degraded with a reason, unready with a reason); `/readyz` answers 200 while none is
//! unready and the worker is not draining, 503 with the reasons otherwise.
//!
//! A degraded check (say, a bus that lost its connection: triggers are hints, the queue still
//! holds the work) is reported in the JSON but keeps the worker ready. Once a drain begins the
//! worker is unready until it exits, whatever the checks say.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use serde::Serialize;

/// How one check stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", content = "reason", rename_all = "lowercase")]
pub enum CheckState {
    /// All is well.
    Ready,
    /// Working, but less well (reported; still ready).
    Degraded(String),
    /// Not fit to be counted on (`/readyz` answers 503).
    Unready(String),
}

type Probe = Arc<dyn Fn() -> CheckState + Send + Sync>;
/// A check's state, or the probe to run for it.
type Pending = Result<CheckState, Probe>;

enum Source {
    /// Set by the owner through its [`ReadinessCheck`].
    Set(CheckState),
    /// Computed at each request (cheap reads of state kept elsewhere).
    Probe(Probe),
}

#[derive(Default)]
struct Inner {
    checks: BTreeMap<String, Source>,
    draining: bool,
}

/// The worker's readiness: a set of named checks plus the drain latch. Clones share it.
#[derive(Clone, Default)]
pub struct Readiness {
    inner: Arc<Mutex<Inner>>,
}

impl fmt::Debug for Readiness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Readiness")
            .field("report", &self.report())
            .finish()
    }
}

/// The handle of one registered check: its owner sets its state.
#[derive(Clone)]
pub struct ReadinessCheck {
    name: Arc<str>,
    readiness: Readiness,
}

impl std::fmt::Debug for ReadinessCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadinessCheck")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// What `/readyz` shows: the overall status, the first reason for it, and every check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReadinessReport {
    /// `ready`, `degraded` (still ready) or `unready`.
    pub status: ReadinessStatus,
    /// Why not ready (or degraded): `draining`, or `<check>: <reason>` of the first check at
    /// fault; absent when ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Every check by name.
    pub checks: BTreeMap<String, CheckState>,
}

impl ReadinessReport {
    /// Whether `/readyz` answers 200 (ready or degraded).
    pub fn is_ready(&self) -> bool {
        self.status != ReadinessStatus::Unready
    }
}

/// The overall state `/readyz` reports (written `ready`, `degraded`, `unready`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadinessStatus {
    /// Every check is ready (200).
    Ready,
    /// Some check works less well; still ready (200).
    Degraded,
    /// Draining, or some check is unready (503).
    Unready,
}

impl ReadinessStatus {
    /// The name `/readyz` shows.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Degraded => "degraded",
            Self::Unready => "unready",
        }
    }
}

impl PartialEq<&str> for ReadinessStatus {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl std::fmt::Display for ReadinessStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Readiness {
    /// Registers the check `name`, unready ("starting") until its owner says otherwise.
    /// Registering a name again replaces the earlier check.
    pub fn register(&self, name: &str) -> ReadinessCheck {
        let check = ReadinessCheck {
            name: Arc::from(name),
            readiness: self.clone(),
        };
        check.set(CheckState::Unready("starting".into()));
        check
    }

    /// Registers the check `name` whose state `probe` computes at each request; it must be
    /// cheap (read state kept elsewhere, never call a service).
    pub fn register_probe(
        &self,
        name: &str,
        probe: impl Fn() -> CheckState + Send + Sync + 'static,
    ) {
        self.lock()
            .checks
            .insert(name.to_string(), Source::Probe(Arc::new(probe)));
    }

    /// Marks the worker as draining: unready from now until it exits.
    pub fn begin_drain(&self) {
        self.lock().draining = true;
    }

    /// Whether a drain began.
    pub fn is_draining(&self) -> bool {
        self.lock().draining
    }

    /// Every check now, and the overall status.
    pub fn report(&self) -> ReadinessReport {
        // Probes run outside the lock: one may read state guarded by locks of its own.
        let (draining, entries): (bool, Vec<(String, Pending)>) = {
            let inner = self.lock();
            let entries = inner
                .checks
                .iter()
                .map(|(name, source)| {
                    let state = match source {
                        Source::Set(state) => Ok(state.clone()),
                        Source::Probe(probe) => Err(probe.clone()),
                    };
                    (name.clone(), state)
                })
                .collect();
            (inner.draining, entries)
        };
        let checks: BTreeMap<String, CheckState> = entries
            .into_iter()
            .map(|(name, state)| (name, state.unwrap_or_else(|probe| probe())))
            .collect();
        let first = |pick: fn(&CheckState) -> Option<&String>| {
            checks
                .iter()
                .find_map(|(name, state)| pick(state).map(|why| format!("{name}: {why}")))
        };
        let unready = first(|s| match s {
            CheckState::Unready(why) => Some(why),
            _ => None,
        });
        let degraded = first(|s| match s {
            CheckState::Degraded(why) => Some(why),
            _ => None,
        });
        let (status, reason) = if draining {
            (ReadinessStatus::Unready, Some("draining".to_string()))
        } else if unready.is_some() {
            (ReadinessStatus::Unready, unready)
        } else if degraded.is_some() {
            (ReadinessStatus::Degraded, degraded)
        } else {
            (ReadinessStatus::Ready, None)
        };
        ReadinessReport {
            status,
            reason,
            checks,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave it half-written (single inserts), so a
        // poisoned lock is still good to read.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl ReadinessCheck {
    /// The check's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// All is well.
    pub fn ready(&self) {
        self.set(CheckState::Ready);
    }

    /// Working, but less well: reported, still ready.
    pub fn degraded(&self, reason: impl Into<String>) {
        self.set(CheckState::Degraded(reason.into()));
    }

    /// Not fit to be counted on: `/readyz` answers 503 with `reason`.
    pub fn unready(&self, reason: impl Into<String>) {
        self.set(CheckState::Unready(reason.into()));
    }

    /// Sets the state.
    pub fn set(&self, state: CheckState) {
        self.readiness
            .lock()
            .checks
            .insert(self.name.to_string(), Source::Set(state));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_check_is_unready_until_its_owner_says_ready() {
        let readiness = Readiness::default();
        assert!(readiness.report().is_ready(), "no checks: ready");
        let startup = readiness.register("startup");
        let report = readiness.report();
        assert_eq!(report.status, "unready");
        assert_eq!(report.reason.as_deref(), Some("startup: starting"));
        startup.ready();
        assert_eq!(readiness.report().status, "ready");
        assert_eq!(readiness.report().reason, None);
    }

    #[test]
    fn degraded_stays_ready_and_unready_wins_over_degraded() {
        let readiness = Readiness::default();
        let bus = readiness.register("bus");
        let store = readiness.register("store");
        store.ready();
        bus.degraded("redis unreachable");
        let report = readiness.report();
        assert!(report.is_ready());
        assert_eq!(report.status, "degraded");
        assert_eq!(report.reason.as_deref(), Some("bus: redis unreachable"));
        store.unready("failing for 61s");
        let report = readiness.report();
        assert!(!report.is_ready());
        assert_eq!(report.reason.as_deref(), Some("store: failing for 61s"));
        assert_eq!(
            report.checks["bus"],
            CheckState::Degraded("redis unreachable".into())
        );
    }

    #[test]
    fn a_drain_makes_it_unready_for_good() {
        let readiness = Readiness::default();
        readiness.register("startup").ready();
        readiness.begin_drain();
        let report = readiness.report();
        assert_eq!(report.status, "unready");
        assert_eq!(report.reason.as_deref(), Some("draining"));
        readiness.register("late").ready();
        assert!(!readiness.report().is_ready());
        assert!(readiness.is_draining());
    }

    #[test]
    fn probes_are_computed_at_each_report() {
        let readiness = Readiness::default();
        let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let f = flag.clone();
        readiness.register_probe("listeners", move || {
            if f.load(std::sync::atomic::Ordering::SeqCst) {
                CheckState::Ready
            } else {
                CheckState::Unready("orders: supervisor ended".into())
            }
        });
        assert!(!readiness.report().is_ready());
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(readiness.report().is_ready());
    }

    #[test]
    fn the_report_serializes_as_short_json() {
        let readiness = Readiness::default();
        readiness.register("store").unready("failing");
        readiness.register("startup").ready();
        let json = serde_json::to_value(readiness.report()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "status": "unready",
                "reason": "store: failing",
                "checks": {
                    "startup": {"status": "ready"},
                    "store": {"status": "unready", "reason": "failing"},
                }
            })
        );
    }
}
