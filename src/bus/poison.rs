//! The bus poison stream's entries: competing-consumer events delivered `bus.max_deliveries`
//! times without an acknowledgement, and stream entries that cannot be delivered at all (larger
//! than `bus.max_envelope_size`, not an envelope, wrongly signed). Each keeps where it came
//! from and why it was moved; list, show and requeue them with
//! [`super::Bus::poison_list`] / `poison_show` / `poison_requeue` (or `ebbflow bus poison`).

use serde::{Deserialize, Serialize};

/// One entry of the bus poison stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoisonEntry {
    /// Its id in the poison stream (what `show` and `requeue` take).
    pub id: String,
    /// The stream it was moved from (Redis key).
    pub stream: String,
    /// Its entry id there.
    pub entry: String,
    /// Why it was moved: the handler's last error, or what was wrong with it.
    pub reason: String,
    /// Times it was delivered before it was moved (0: never delivered).
    pub deliveries: u64,
    /// Its size on the stream, bytes.
    pub size: u64,
    /// When it was moved, milliseconds since the Unix epoch.
    pub moved_at_ms: u64,
    /// The envelope's JSON; absent when it was too large to keep (then it cannot be requeued).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envelope: Option<String>,
    /// Its signature, if it had one (kept so a requeued entry is still accepted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sig: Option<String>,
}
