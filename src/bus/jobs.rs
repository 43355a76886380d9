//! The heartbeat progress monitor, after the seeds' Heartbeat: a long job's START record, its
//! timed and count pulses and its end, each stored on the bus (kept for `bus.job_retention`,
//! listed by `ebbflow jobs`) and multicast as an `ebbflow.job` event.
//!
//! A queue with `[queues.<name>.heartbeat]` settings records each of its messages' handler runs
//! (the worker does it); any other long-running work starts a [`JobMonitor`] itself.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::debug;

use super::events::PulseKind;
use super::{now_ms, Address, BusHandle, Event};

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Started and not ended yet.
    Running,
    /// Ended; its handler (or owner) said it succeeded.
    Succeeded,
    /// Ended; its handler (or owner) said it failed.
    Failed,
    /// Ended without saying how it went.
    Unknown,
    /// Never stored or sent: how a reader ([`JobRecord::seen_at`]) shows a `Running` record
    /// that has not changed for longer than [`JobRecord::stale_after`] (its instance died
    /// without an end, or its pulses stopped); its elapsed time stays at its last change.
    Stale,
}

impl JobState {
    /// `running`, `succeeded`, `failed` or `unknown`, as stored, sent and printed (`stale`, only
    /// ever shown).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Unknown => "unknown",
            Self::Stale => "stale",
        }
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One job's progress record: stored under its id (kept `bus.job_retention` after its last
/// change) and multicast as an `ebbflow.job` event at its start, each pulse and its end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    /// The job's id: a queue job's is `<queue>/<message id>`.
    pub id: String,
    /// Where the work comes from: the queue's name, or what the owner of a [`JobMonitor`] said.
    pub source: String,
    /// The START record's text.
    pub text: String,
    /// The instance running it.
    pub instance: String,
    /// That instance's role.
    pub role: String,
    /// Where it stands.
    pub state: JobState,
    /// Progress units counted so far.
    pub count: u64,
    /// Timed pulses so far.
    pub timed_pulses: u64,
    /// Count pulses so far.
    pub count_pulses: u64,
    /// What prompted the last pulse (none yet: `None`).
    pub last_pulse: Option<PulseKind>,
    /// The timed pulse interval, milliseconds (`None`: no timed pulses).
    pub interval_ms: Option<u64>,
    /// A count pulse each this many units (`None`: no count pulses).
    pub every: Option<u64>,
    /// When it started, Unix milliseconds.
    pub started_at_ms: u64,
    /// When the record last changed, Unix milliseconds.
    pub updated_at_ms: u64,
    /// Time from its start to the last change (to the end, once ended), milliseconds.
    pub elapsed_ms: u64,
    /// The note its end came with (empty while running or when none was given).
    pub note: String,
}

impl Event for JobRecord {
    const KIND: &'static str = "ebbflow.job";
}

/// Timed pulses a running job may miss before it is shown `stale`.
pub const STALE_AFTER_MISSED_PULSES: u32 = 3;

/// The least quiet time before a job with timed pulses is shown `stale`, however short its
/// interval: the writer's and the reader's clocks may differ by a few seconds.
pub const STALE_AT_LEAST: Duration = Duration::from_secs(10);

/// How long a running job with no timed pulses (`interval_ms` is `None`: count pulses only,
/// which may be far apart) may go without a change before it is shown `stale`.
pub const STALE_WITHOUT_INTERVAL: Duration = Duration::from_secs(10 * 60);

impl JobRecord {
    /// How long this job's record may go without a change while it runs before a reader shows
    /// it `stale`: [`STALE_AFTER_MISSED_PULSES`] of its timed pulse intervals, at least
    /// [`STALE_AT_LEAST`]; without timed pulses, [`STALE_WITHOUT_INTERVAL`].
    pub fn stale_after(&self) -> Duration {
        match self.interval_ms.filter(|ms| *ms > 0) {
            Some(ms) => {
                Duration::from_millis(ms.saturating_mul(u64::from(STALE_AFTER_MISSED_PULSES)))
                    .max(STALE_AT_LEAST)
            }
            None => STALE_WITHOUT_INTERVAL,
        }
    }

    /// The record as a reader shows it at `now_ms` (Unix milliseconds, the reader's clock), as
    /// `ebbflow jobs`, the dashboard and `ebbflow top` do. A `Running` job whose last change is
    /// more than [`JobRecord::stale_after`] old becomes [`JobState::Stale`], its `elapsed_ms`
    /// frozen at that change (start to last change); any other running job's `elapsed_ms` goes
    /// on to `now_ms`. An ended record is returned as it is.
    pub fn seen_at(mut self, now_ms: u64) -> Self {
        if self.state != JobState::Running {
            return self;
        }
        let quiet = now_ms.saturating_sub(self.updated_at_ms);
        let bound = u64::try_from(self.stale_after().as_millis()).unwrap_or(u64::MAX);
        if quiet > bound {
            self.state = JobState::Stale;
            self.elapsed_ms = self.updated_at_ms.saturating_sub(self.started_at_ms);
        } else {
            self.elapsed_ms = now_ms.saturating_sub(self.started_at_ms);
        }
        self
    }
}

/// A hook that shapes or suppresses pulses ([`JobMonitor::shape`], or a queue handler's with
/// `Worker::pulse_hook`): called with each pulse's record before it is stored and sent; it may
/// change the record (its `text`, say) and returns `false` to suppress the pulse.
pub type PulseHook = Arc<dyn Fn(&mut JobRecord) -> bool + Send + Sync>;

/// A running job's monitor: records its start when made, then each pulse and its end, on the
/// bus's job store and as `ebbflow.job` events. Cheap to clone; every call returns at once (the
/// bus calls run in the background, and a failed one is logged at debug and dropped: progress
/// records are best effort).
///
/// ```no_run
/// # async fn demo(bus: ebbflow::bus::BusHandle) {
/// use ebbflow::bus::jobs::{JobMonitor, JobState};
/// let job = JobMonitor::start(&bus, "nightly-export", "export of 2026-12-06", Some(1_000), None);
/// for _row in 0..10_000u64 {
///     job.add(1); // a count pulse every 1,000 rows
/// }
/// job.end(JobState::Succeeded, "10000 rows");
/// # }
/// ```
#[derive(Clone)]
pub struct JobMonitor {
    inner: Arc<Inner>,
}

struct Inner {
    /// The records to store and send, in order (one writer task).
    writes: tokio::sync::mpsc::UnboundedSender<JobRecord>,
    record: Mutex<JobRecord>,
    hook: Mutex<Option<PulseHook>>,
    /// Stops the timed pulses at the end.
    ended: tokio_util::sync::CancellationToken,
}

impl std::fmt::Debug for JobMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let record = self.record();
        f.debug_struct("JobMonitor")
            .field("id", &record.id)
            .field("state", &record.state)
            .field("count", &record.count)
            .finish()
    }
}

impl JobMonitor {
    /// Starts monitoring a job of `source` described by `text` (its START record): an id is
    /// generated (`<source>/<16 hex>`). `every`: a count pulse each time the count passes a
    /// multiple of it; `interval`: a timed pulse that often, until [`JobMonitor::end`] (or the
    /// last clone is dropped). Must be called within a Tokio runtime.
    pub fn start(
        bus: &BusHandle,
        source: &str,
        text: &str,
        every: Option<u64>,
        interval: Option<Duration>,
    ) -> Self {
        let id = format!("{source}/{:016x}", rand::random::<u64>());
        Self::start_with_id(bus, &id, source, text, every, interval)
    }

    /// Like [`JobMonitor::start`], with the job's id given (a queue job's is
    /// `<queue>/<message id>`). Must be called within a Tokio runtime.
    pub fn start_with_id(
        bus: &BusHandle,
        id: &str,
        source: &str,
        text: &str,
        every: Option<u64>,
        interval: Option<Duration>,
    ) -> Self {
        Self::begin(bus, id, source, text, every, interval, true)
    }

    /// A monitor whose pulses someone else drives (a queue's listener): `interval` is recorded,
    /// no timer runs.
    pub(crate) fn driven(
        bus: &BusHandle,
        id: &str,
        source: &str,
        text: &str,
        every: Option<u64>,
        interval: Option<Duration>,
    ) -> Self {
        Self::begin(bus, id, source, text, every, interval, false)
    }

    fn begin(
        bus: &BusHandle,
        id: &str,
        source: &str,
        text: &str,
        every: Option<u64>,
        interval: Option<Duration>,
        timer: bool,
    ) -> Self {
        let now = now_ms();
        let member = bus.member();
        let record = JobRecord {
            id: id.to_string(),
            source: source.to_string(),
            text: text.to_string(),
            instance: member.instance.to_string(),
            role: member.role.to_string(),
            state: JobState::Running,
            count: 0,
            timed_pulses: 0,
            count_pulses: 0,
            last_pulse: None,
            interval_ms: interval.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            every: every.filter(|n| *n > 0),
            started_at_ms: now,
            updated_at_ms: now,
            elapsed_ms: 0,
            note: String::new(),
        };
        let (writes, mut pending) = tokio::sync::mpsc::unbounded_channel::<JobRecord>();
        let writer = bus.clone();
        // One writer, so the records are stored in the order they changed (a later one is
        // never overwritten by an earlier one); it ends once the monitor is gone.
        tokio::spawn(async move {
            while let Some(record) = pending.recv().await {
                if let Err(e) = writer.transport().record_job(&record).await {
                    debug!(job = %record.id, error = %e, "job record not stored");
                }
                if let Err(e) = writer.publish_at_most_once(&record, Address::All).await {
                    debug!(job = %record.id, error = %e, "job record not published");
                }
            }
        });
        let monitor = Self {
            inner: Arc::new(Inner {
                writes,
                record: Mutex::new(record.clone()),
                hook: Mutex::new(None),
                ended: tokio_util::sync::CancellationToken::new(),
            }),
        };
        monitor.store(record);
        if let Some(every) = interval.filter(|d| timer && !d.is_zero()) {
            let weak = Arc::downgrade(&monitor.inner);
            let ended = monitor.inner.ended.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.tick().await;
                loop {
                    tokio::select! {
                        _ = ended.cancelled() => return,
                        _ = tick.tick() => {}
                    }
                    let Some(inner) = weak.upgrade() else { return };
                    Self { inner }.pulse(PulseKind::Timed);
                }
            });
        }
        monitor
    }

    /// Sets a hook called with each pulse's record before it is stored and sent: it may change
    /// the record (its `text`, say) and returns `false` to suppress the pulse (nothing stored or
    /// sent; the counters still move). The START record and the end are never suppressed.
    pub fn shape(&self, hook: PulseHook) {
        if let Ok(mut h) = self.inner.hook.lock() {
            *h = Some(hook);
        }
    }

    /// Adds `n` units of progress; a count pulse when a multiple of `every` is passed.
    pub fn add(&self, n: u64) {
        let crossed = {
            let Ok(mut r) = self.inner.record.lock() else {
                return;
            };
            let before = r.count;
            r.count = before.saturating_add(n);
            r.every
                .is_some_and(|every| r.count / every > before / every)
        };
        if crossed {
            self.pulse(PulseKind::Count);
        }
    }

    /// Sets the progress count (a queue job's heartbeat keeps its own count).
    pub fn set_count(&self, count: u64) {
        if let Ok(mut r) = self.inner.record.lock() {
            r.count = count;
        }
    }

    /// Records a pulse of `kind` now (a [`JobMonitor::shape`] hook may suppress it).
    pub fn pulse(&self, kind: PulseKind) {
        let record = {
            let Ok(mut r) = self.inner.record.lock() else {
                return;
            };
            if r.state != JobState::Running {
                return;
            }
            match kind {
                PulseKind::Timed => r.timed_pulses += 1,
                PulseKind::Count => r.count_pulses += 1,
            }
            r.last_pulse = Some(kind);
            r.updated_at_ms = now_ms();
            r.elapsed_ms = r.updated_at_ms.saturating_sub(r.started_at_ms);
            r.clone()
        };
        let hook = self.inner.hook.lock().ok().and_then(|h| h.clone());
        let mut record = record;
        if let Some(hook) = hook {
            if !hook(&mut record) {
                return;
            }
        }
        self.store(record);
    }

    /// Ends the job with `state` (`Running` and `Stale` are taken as `Unknown`) and a note;
    /// later calls do nothing.
    pub fn end(&self, state: JobState, note: impl Into<String>) {
        let record = {
            let Ok(mut r) = self.inner.record.lock() else {
                return;
            };
            if r.state != JobState::Running {
                return;
            }
            r.state = match state {
                JobState::Running | JobState::Stale => JobState::Unknown,
                other => other,
            };
            r.note = note.into();
            r.updated_at_ms = now_ms();
            r.elapsed_ms = r.updated_at_ms.saturating_sub(r.started_at_ms);
            r.clone()
        };
        self.inner.ended.cancel();
        self.store(record);
    }

    /// The record as it stands.
    pub fn record(&self) -> JobRecord {
        self.inner
            .record
            .lock()
            .map(|r| r.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Stores `record` and multicasts it, in the background.
    fn store(&self, record: JobRecord) {
        let _ = self.inner.writes.send(record);
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.ended.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A job started at 1,000,000 ms whose record last changed 5 s later.
    fn job(state: JobState, interval_ms: Option<u64>) -> JobRecord {
        JobRecord {
            id: "imports/m1".into(),
            source: "imports".into(),
            text: "message m1 (dequeue 1)".into(),
            instance: "w-1".into(),
            role: "worker".into(),
            state,
            count: 7,
            timed_pulses: 1,
            count_pulses: 0,
            last_pulse: Some(PulseKind::Timed),
            interval_ms,
            every: None,
            started_at_ms: 1_000_000,
            updated_at_ms: 1_005_000,
            elapsed_ms: 5_000,
            note: String::new(),
        }
    }

    #[test]
    fn a_running_job_is_stale_past_three_missed_pulses_with_its_elapsed_frozen() {
        let j = job(JobState::Running, Some(5_000));
        assert_eq!(j.stale_after(), Duration::from_secs(15));
        // Exactly three intervals after its last change: still running, elapsed goes on.
        let at = j.clone().seen_at(1_020_000);
        assert_eq!((at.state, at.elapsed_ms), (JobState::Running, 20_000));
        // One millisecond more: stale, elapsed at its last change, however late it is read.
        for now in [1_020_001, 1_100_000, 9_000_000] {
            let seen = j.clone().seen_at(now);
            assert_eq!(
                (seen.state, seen.elapsed_ms),
                (JobState::Stale, 5_000),
                "at {now}"
            );
            assert_eq!(seen.state.to_string(), "stale");
        }
    }

    #[test]
    fn the_bound_has_a_floor_and_a_default_without_timed_pulses() {
        // A 200 ms interval: not stale within 10 s (clocks differ between machines).
        let short = job(JobState::Running, Some(200));
        assert_eq!(short.stale_after(), STALE_AT_LEAST);
        assert_eq!(short.clone().seen_at(1_015_000).state, JobState::Running);
        assert_eq!(short.seen_at(1_015_001).state, JobState::Stale);
        // Count pulses only (and a zero interval, which sends none): the default, 10 min.
        for interval in [None, Some(0)] {
            let counted = job(JobState::Running, interval);
            assert_eq!(counted.stale_after(), STALE_WITHOUT_INTERVAL);
            assert_eq!(counted.clone().seen_at(1_605_000).state, JobState::Running);
            assert_eq!(counted.seen_at(1_605_001).state, JobState::Stale);
        }
    }

    #[test]
    fn an_ended_job_is_never_stale_and_a_reader_behind_the_writer_sees_it_running() {
        for state in [JobState::Succeeded, JobState::Failed, JobState::Unknown] {
            assert_eq!(
                job(state, Some(1_000)).seen_at(9_000_000),
                job(state, Some(1_000))
            );
        }
        // The reader's clock is behind the record's: running, no negative elapsed time.
        let behind = job(JobState::Running, Some(1_000)).seen_at(999_000);
        assert_eq!((behind.state, behind.elapsed_ms), (JobState::Running, 0));
    }
}
