//! The runtime's own events on the bus (type names start with `ebbflow.`): presence pulses,
//! instances leaving, long jobs' heartbeat pulses, and role-wide commands (drain, reload).
//! Subscribe to them like any event: `bus.subscribe::<JobPulse>(Filter::new())`.

use serde::{Deserialize, Serialize};

use super::{Event, Presence, Request};

/// An instance's presence pulse, multicast every `bus.pulse_interval` (also kept in Redis for
/// `ebbflow instances`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstancePulse(pub Presence);

impl Event for InstancePulse {
    const KIND: &'static str = "ebbflow.pulse";
}

/// An instance stopped (multicast when it drains; a crashed one just stops pulsing).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceLeft {
    /// Its id.
    pub instance: String,
    /// Its role.
    pub role: String,
}

impl Event for InstanceLeft {
    const KIND: &'static str = "ebbflow.left";
}

/// A long job's heartbeat pulse (`ctx.heartbeat()`), multicast so another process can watch
/// the job's progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobPulse {
    /// The queue of the job's message.
    pub queue: String,
    /// The message id.
    pub message_id: String,
    /// What prompted the pulse: `timed` or `count`.
    pub kind: PulseKind,
    /// The handler's progress count.
    pub count: u64,
    /// Time since the handler started, milliseconds.
    pub elapsed_ms: u64,
}

/// What prompted a heartbeat pulse, as logged (`kind="timed"`) and sent on the bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PulseKind {
    /// The queue's `heartbeat.interval` passed.
    Timed,
    /// The handler's progress count passed a multiple of `heartbeat.every`.
    Count,
}

impl PulseKind {
    /// The name, as logged and sent: `timed` or `count`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Timed => "timed",
            Self::Count => "count",
        }
    }
}

impl std::fmt::Display for PulseKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Event for JobPulse {
    const KIND: &'static str = "ebbflow.job-pulse";
}

/// A work notice passed on by a replica that found more on `queue` than it could take, sent to
/// one chosen replica (unicast, so never read back by its sender; see the book's bus chapter,
/// "Work detected across instances"). The receiver wakes its listener as a work notice would.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkPassed {
    /// The queue that holds more work.
    pub queue: String,
    /// Times the notice was passed on, this time included (at least 1).
    pub hops: u32,
}

impl Event for WorkPassed {
    const KIND: &'static str = "ebbflow.work-passed";
}

/// A role-wide command: the instances it reaches stop taking work, drain and exit 0 (so the
/// orchestrator replaces them), as on SIGTERM. Sent by `ebbflow drain --role R` (to the role,
/// or to one instance at a time).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainRequested {
    /// Why, for the log (the operator's words, or `ebbflow drain`).
    pub reason: String,
}

impl Event for DrainRequested {
    const KIND: &'static str = "ebbflow.drain";
}

/// A role-wide command, as a request: the instance it reaches reads its config files again and
/// applies the scaling rules that changed (see `RunningWorker::reload`), answering with what it
/// did ([`Reloaded`]) or why it kept the old rules (the requester's `BusError::Remote`, naming
/// the key). Sent by `ebbflow reload --role R` to each live instance of the role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadRequested {
    /// Why, for the instances' logs (the operator's words, or `ebbflow reload`).
    pub reason: String,
}

impl Event for ReloadRequested {
    const KIND: &'static str = "ebbflow.reload";
}

impl Request for ReloadRequested {
    type Reply = Reloaded;
}

/// What a reload of the config did: the values it applied, and the changed keys it did not
/// apply because they need a restart. Both empty: nothing changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reloaded {
    /// Each applied value, in key order.
    pub applied: Vec<Change>,
    /// Changed keys that take effect only after a restart (not applied), e.g. `bus.url`,
    /// `queues.orders.encoding`, `queues.new_queue`. Keys only: their values may be secrets.
    pub needs_restart: Vec<String>,
}

/// One applied value: its key and its old and new values as the config writes them (`"5s"`,
/// `8`; a key that was unset reads `none`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// The full key, e.g. `queues.orders.scaling.max_tasks`.
    pub key: String,
    /// The value before the reload.
    pub old: String,
    /// The value now.
    pub new: String,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} -> {}", self.key, self.old, self.new)
    }
}
