//! The runtime's own events on the bus (type names start with `ebbflow.`): presence pulses,
//! instances leaving, and long jobs' heartbeat pulses. Subscribe to them like any event:
//! `bus.subscribe::<JobPulse>(Filter::new())`.

use serde::{Deserialize, Serialize};

use super::{Event, Presence};

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
    /// `timed` or `count`.
    pub kind: String,
    /// The handler's progress count.
    pub count: u64,
    /// Time since the handler started, milliseconds.
    pub elapsed_ms: u64,
}

impl Event for JobPulse {
    const KIND: &'static str = "ebbflow.job-pulse";
}
