//! Progress and status of a long job, reported by its handler.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::bus::events::PulseKind;
use crate::bus::jobs::{JobMonitor, JobState};

/// How a job (one message's handler run) ended, as the handler reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    /// The handler said it succeeded.
    Succeeded,
    /// The handler said it failed.
    Failed,
    /// The handler ended without saying.
    Unknown,
}

impl JobStatus {
    /// `succeeded`, `failed` or `unknown`, as logged.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Unknown => "unknown",
        }
    }
}

/// Progress of a long job, after the heartbeat monitor of the seeds: the handler counts items
/// done with [`Heartbeat::add`]; each time the count passes a multiple of the queue's
/// `heartbeat.every` a count pulse fires, and every `heartbeat.interval` a timed pulse does.
/// Each pulse is logged as a structured event (`job pulse`, with kind, count and elapsed
/// time) and renews the message's visibility. At the end the job is logged with the status the
/// handler set ([`Heartbeat::succeeded`], [`Heartbeat::failed`]), or `unknown`.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    inner: Arc<HeartbeatInner>,
}

#[derive(Debug)]
struct HeartbeatInner {
    every: Option<u64>,
    count: AtomicU64,
    count_pulses: AtomicU64,
    status: Mutex<Option<(JobStatus, String)>>,
    pulse: tokio::sync::Notify,
    /// The job's progress record on the bus (queues with heartbeat settings).
    monitor: Mutex<Option<JobMonitor>>,
}

impl Heartbeat {
    pub(crate) fn new(every: Option<u64>) -> Self {
        Self {
            inner: Arc::new(HeartbeatInner {
                every,
                count: AtomicU64::new(0),
                count_pulses: AtomicU64::new(0),
                status: Mutex::new(None),
                pulse: tokio::sync::Notify::new(),
                monitor: Mutex::new(None),
            }),
        }
    }

    /// Adds `n` units of progress; fires a count pulse when a multiple of `heartbeat.every`
    /// is passed.
    pub fn add(&self, n: u64) {
        let before = self.inner.count.fetch_add(n, Ordering::Relaxed);
        if let Some(every) = self.inner.every {
            let crossed = (before + n) / every - before / every;
            if crossed > 0 {
                self.inner.count_pulses.fetch_add(1, Ordering::Relaxed);
                self.inner.pulse.notify_one();
            }
        }
    }

    /// Adds one unit of progress.
    pub fn increment(&self) {
        self.add(1);
    }

    /// Progress so far.
    pub fn count(&self) -> u64 {
        self.inner.count.load(Ordering::Relaxed)
    }

    /// Marks the job succeeded, with a note for the log.
    pub fn succeeded(&self, note: impl Into<String>) {
        self.set(JobStatus::Succeeded, note.into());
    }

    /// Marks the job failed, with a note for the log.
    pub fn failed(&self, note: impl Into<String>) {
        self.set(JobStatus::Failed, note.into());
    }

    fn set(&self, status: JobStatus, note: String) {
        if let Ok(mut s) = self.inner.status.lock() {
            *s = Some((status, note));
        }
    }

    /// The status the handler set, or `Unknown` with an empty note.
    pub fn status(&self) -> (JobStatus, String) {
        self.inner
            .status
            .lock()
            .ok()
            .and_then(|s| s.clone())
            .unwrap_or((JobStatus::Unknown, String::new()))
    }

    /// Records this job's progress on the bus with `monitor` (its START record is stored
    /// already): each pulse and the end go to it.
    pub(crate) fn monitor(&self, monitor: JobMonitor) {
        if let Ok(mut m) = self.inner.monitor.lock() {
            *m = Some(monitor);
        }
    }

    fn monitored(&self) -> Option<JobMonitor> {
        self.inner.monitor.lock().ok().and_then(|m| m.clone())
    }

    /// A pulse of `kind`, recorded on the bus.
    pub(crate) fn record_pulse(&self, kind: PulseKind) {
        if let Some(m) = self.monitored() {
            m.set_count(self.count());
            m.pulse(kind);
        }
    }

    /// The job's end on the bus: the status the handler set, with its note (or, without one,
    /// how the run ended: `result` is `ok`, `error`, `panic`, `timeout` or `aborted`).
    pub(crate) fn record_end(&self, result: &str) {
        let Some(m) = self.monitored() else {
            return;
        };
        let (status, note) = self.status();
        let state = match status {
            JobStatus::Succeeded => JobState::Succeeded,
            JobStatus::Failed => JobState::Failed,
            JobStatus::Unknown => JobState::Unknown,
        };
        let note = if note.is_empty() {
            format!("result {result}")
        } else {
            format!("{note} (result {result})")
        };
        m.set_count(self.count());
        m.end(state, note);
    }

    /// Waits for the next count pulse.
    pub(crate) async fn count_pulse(&self) {
        self.inner.pulse.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn count_pulses_fire_when_a_multiple_is_passed() {
        let hb = Heartbeat::new(Some(100));
        hb.add(99);
        assert_eq!(hb.inner.count_pulses.load(Ordering::Relaxed), 0);
        hb.increment();
        assert_eq!(hb.inner.count_pulses.load(Ordering::Relaxed), 1);
        // The pulse is kept for the listener even though nobody waited yet.
        tokio::time::timeout(Duration::from_millis(1), hb.count_pulse())
            .await
            .expect("a pending count pulse");
        hb.add(250);
        assert_eq!(hb.count(), 350);
        assert_eq!(hb.inner.count_pulses.load(Ordering::Relaxed), 2);
        assert_eq!(hb.status().0, JobStatus::Unknown);
        hb.failed("disk full");
        assert_eq!(hb.status(), (JobStatus::Failed, "disk full".to_string()));
        let quiet = Heartbeat::new(None);
        quiet.add(1_000_000);
        assert_eq!(quiet.inner.count_pulses.load(Ordering::Relaxed), 0);
    }
}
