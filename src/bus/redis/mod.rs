//! The Redis transport: one RESP3 connection manager for commands and pub/sub (push messages,
//! automatic resubscription after a reconnect), and one for stream reads.
//!
//! Keys and channels, under `bus.channel_prefix` (`P`):
//! - streams `P:fan:all`, `P:fan:role:<role>`, `P:fan:instance:<id>`: fan-out events (field
//!   `envelope`, and `sig` when signed), each instance reading through a consumer group named by
//!   its instance id, so one away for less than `bus.retention` resumes where it stopped;
//!   trimmed to entries younger than the retention; an instance's own stream expires a
//!   retention after its last event; groups of instances gone longer are removed;
//! - stream `P:group:<role>`, consumer group `ebbflow`: competing-consumer events,
//!   re-delivered when not acknowledged within the claim timeout, moved to `P:poison` after
//!   `bus.max_deliveries`, bounded by `bus.max_backlog` (publishing fails beyond it); an
//!   acknowledged entry is deleted;
//! - stream `P:poison`: entries moved aside with their reason (`P:error:<id>` holds a failed
//!   entry's last error meanwhile);
//! - stream `P:work:<queue>`: work notices (fields `queue`, optional `from`, `messages`,
//!   `hops`), read through the group `ebbflow` (`reach = "one"`) or by every listener
//!   (`reach = "all"`), about the newest 10,000 kept (a notice is a hint);
//! - channels `P:all`, `P:role:<role>`, `P:instance:<id>`, `P:work:<queue>`: events published
//!   at most once, and the one-byte nudge (`~`) that wakes readers when an entry was appended;
//! - `P:busy:<queue>`, `P:sent:<queue>`: the publish modes' state;
//! - `P:presence:<id>` (JSON, signed when signing is on, expiring) and the sorted set
//!   `P:instances`: presence;
//! - `P:dedup:done:<key>`, `P:dedup:run:<key>`: shared de-duplication marks (`dedup.rs`),
//!   each expiring (the layer's window, the running lease).

mod connect;
mod dedup;
mod deliver;
mod droplog;
mod health;
mod poison;
mod presence;
mod readers;
mod scripts;
mod shared;
mod transport;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

use super::Inbound;
use shared::{is_connection_error, millis, Shared};

/// The consumer group every competing stream uses.
const GROUP: &str = "ebbflow";
/// Work notices a work stream keeps (approximately): they are hints.
const WORK_CAP: u64 = 10_000;
/// How long a reader waits for a nudge before it reads anyway.
const POLL: Duration = Duration::from_millis(1_000);
/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long an answer may take (a loaded machine's Redis can take seconds; the client's own
/// default, 500 ms, would refuse a healthy one).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// What one read of a stream may hold, bytes: entries per read are this over the envelope
/// limit (1..=64), so a reader's memory is bounded whatever is written to Redis.
const READ_BUDGET: u64 = 16 * 1024 * 1024;
/// Fan-out event ids remembered to drop a second delivery.
const SEEN: usize = 65_536;

/// Counters of the Redis transport, for metrics and tests.
#[derive(Debug, Default)]
pub struct RedisStats {
    /// Times the bus went down (connection lost, commands failing).
    pub outages: AtomicU64,
    /// Times it came back.
    pub reconnects: AtomicU64,
    /// Competing-consumer entries taken over from another consumer (or retried).
    pub reclaimed: AtomicU64,
    /// Envelopes and presence refused for their signature.
    pub refused: AtomicU64,
    /// Entries moved to the poison stream.
    pub poisoned: AtomicU64,
    /// Events dropped past their time to live.
    pub expired: AtomicU64,
    /// Fan-out events received twice and dropped.
    pub duplicates: AtomicU64,
    /// Stream reads (each one script call).
    pub reads: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// The Redis transport of one instance.
pub struct RedisBus {
    shared: Arc<Shared>,
    inbox: Mutex<Option<mpsc::UnboundedReceiver<Inbound>>>,
    /// Connected to receive (not a client only).
    listening: bool,
}

impl std::fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBus")
            .field("member", &self.shared.member)
            .field("url", &self.shared.url)
            .finish()
    }
}

impl Drop for RedisBus {
    fn drop(&mut self) {
        self.shared.closed.cancel();
    }
}
