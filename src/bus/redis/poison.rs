//! The bus poison stream (`P:poison`) on Redis: moving a competing entry there when its handler
//! failed `bus.max_deliveries` times or it cannot be delivered, and listing, showing and
//! requeueing its entries.

use std::collections::HashMap;

use redis::streams::{StreamId, StreamRangeReply};
use tracing::warn;

use super::{bump, millis, scripts, Shared, GROUP};
use crate::bus::{now_ms, BusError, PoisonEntry, Receipt};

fn poison_key(shared: &Shared) -> String {
    shared.key(&["poison"])
}

fn error_prefix(shared: &Shared) -> String {
    shared.key(&["error", ""])
}

/// A handler failed on `receipt`: moves it to the poison stream at the limit (`true`), or keeps
/// the error for when it gets there.
pub(super) async fn fail(
    shared: &Shared,
    receipt: &Receipt,
    error: &str,
) -> Result<bool, BusError> {
    // The error text is the handler's: bounded so a huge one cannot bloat Redis.
    let error: String = error.chars().take(2_000).collect();
    let mut inv = scripts::FAIL.call(&[&receipt.stream]);
    inv.arg(GROUP)
        .arg(&receipt.entry)
        .arg(shared.limits.max_deliveries)
        .arg(poison_key(shared))
        .arg(error_prefix(shared))
        .arg(&error)
        .arg(millis(
            shared.limits.claim_timeout.max(shared.limits.retention),
        ))
        .arg(shared.member.instance.as_str());
    let moved = shared
        .script::<i64>(&inv)
        .await
        .map_err(|e| shared.error("record a failed bus event", &e))?;
    if moved == 1 {
        bump(&shared.stats.poisoned);
        warn!(stream = %receipt.stream, entry = %receipt.entry, limit = shared.limits.max_deliveries, error,
              "bus event failed bus.max_deliveries times: moved to the poison stream");
    }
    Ok(moved == 1)
}

/// Moves an entry that cannot be delivered to the poison stream with `reason`, acknowledged and
/// deleted in one step.
pub(super) async fn reject(
    shared: &Shared,
    receipt: &Receipt,
    fields: &[(String, Vec<u8>)],
    reason: &str,
) -> Result<(), BusError> {
    let size: usize = fields.iter().map(|(f, v)| f.len() + v.len()).sum();
    let mut pipe = redis::pipe();
    pipe.atomic();
    let cmd = pipe.cmd("XADD").arg(poison_key(shared)).arg("*");
    cmd.arg("stream")
        .arg(&receipt.stream)
        .arg("entry")
        .arg(&receipt.entry)
        .arg("reason")
        .arg(reason)
        .arg("deliveries")
        .arg(1)
        .arg("size")
        .arg(size)
        .arg("moved_at_ms")
        .arg(now_ms());
    for (f, v) in fields {
        if f == "envelope" || f == "sig" {
            cmd.arg(f).arg(v.as_slice());
        }
    }
    cmd.ignore();
    pipe.cmd("XACK")
        .arg(&receipt.stream)
        .arg(GROUP)
        .arg(&receipt.entry)
        .ignore()
        .cmd("XDEL")
        .arg(&receipt.stream)
        .arg(&receipt.entry)
        .ignore();
    let mut con = shared.cmd.clone();
    let r = shared.marked(pipe.query_async::<()>(&mut con)).await;
    bump(&shared.stats.poisoned);
    r.map_err(|e| shared.error("move to the poison stream", &e))
}

fn entry_of(raw: StreamId) -> PoisonEntry {
    let text = |name: &str| raw.get::<String>(name);
    let number = |name: &str| text(name).and_then(|t| t.parse().ok()).unwrap_or(0);
    PoisonEntry {
        id: raw.id.clone(),
        stream: text("stream").unwrap_or_default(),
        entry: text("entry").unwrap_or_default(),
        reason: text("reason").unwrap_or_default(),
        deliveries: number("deliveries"),
        size: number("size"),
        moved_at_ms: number("moved_at_ms"),
        envelope: text("envelope"),
        sig: text("sig"),
    }
}

pub(super) async fn list(shared: &Shared, limit: usize) -> Result<Vec<PoisonEntry>, BusError> {
    let mut cmd = redis::cmd("XREVRANGE");
    cmd.arg(poison_key(shared))
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(limit.max(1));
    let reply: StreamRangeReply = shared.query("XREVRANGE", &cmd).await?;
    Ok(reply.ids.into_iter().map(entry_of).collect())
}

pub(super) async fn show(shared: &Shared, id: &str) -> Result<PoisonEntry, BusError> {
    let mut cmd = redis::cmd("XRANGE");
    cmd.arg(poison_key(shared)).arg(id).arg(id);
    let reply: Result<StreamRangeReply, BusError> = shared.query("XRANGE", &cmd).await;
    match reply {
        Ok(r) => r
            .ids
            .into_iter()
            .next()
            .map(entry_of)
            .ok_or_else(|| BusError::NotFound(format!("poison entry {id}"))),
        // An id that is not an id is not there either.
        Err(BusError::Transport(t)) if t.contains("Invalid stream ID") => {
            Err(BusError::NotFound(format!("poison entry {id}")))
        }
        Err(e) => Err(e),
    }
}

pub(super) async fn requeue(shared: &Shared, id: &str) -> Result<(), BusError> {
    let entry = show(shared, id).await?;
    let Some(envelope) = &entry.envelope else {
        return Err(BusError::Unsupported(format!(
            "poison entry {id} was kept without its envelope ({}); it cannot be requeued",
            entry.reason
        )));
    };
    let group = shared.key(&["group", ""]);
    let Some(role) = entry.stream.strip_prefix(&group) else {
        return Err(BusError::Unsupported(format!(
            "poison entry {id} came from {}, not a competing-consumer stream; it cannot be requeued",
            entry.stream
        )));
    };
    let mut fields = vec![("envelope", envelope.as_str())];
    if let Some(sig) = &entry.sig {
        fields.push(("sig", sig.as_str()));
    }
    let channel = shared.key(&["role", role]);
    let kind = serde_json::from_str::<HashMap<String, serde_json::Value>>(envelope)
        .ok()
        .and_then(|m| m.get("type").and_then(|t| t.as_str()).map(str::to_string))
        .unwrap_or_else(|| "requeued".into());
    shared
        .append(
            &kind,
            &entry.stream,
            "backlog",
            std::time::Duration::ZERO,
            &channel,
            &fields,
        )
        .await?;
    let mut cmd = redis::cmd("XDEL");
    cmd.arg(poison_key(shared)).arg(id);
    shared.query::<i64>("XDEL", &cmd).await.map(|_| ())
}
