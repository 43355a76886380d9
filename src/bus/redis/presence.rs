//! Presence records and the publish modes' state on Redis: `P:presence:<id>` (signed when
//! signing is on), the sorted set `P:instances`, `P:busy:<queue>` and `P:sent:<queue>`; job
//! progress records `P:job:<id>` (signed likewise) and the sorted set `P:jobs` (by expiry).

use std::time::Duration;

use super::{bump, millis, Shared};
use crate::bus::jobs::JobRecord;
use crate::bus::{BusError, Presence, SentState};

pub(super) async fn sent(s: &Shared, queue: &str, messages: u64) -> Result<SentState, BusError> {
    let mut pipe = redis::pipe();
    pipe.cmd("SET")
        .arg(s.key(&["busy", queue]))
        .arg(1)
        .arg("GET")
        .arg("EX")
        .arg(86_400)
        .cmd("INCRBY")
        .arg(s.key(&["sent", queue]))
        .arg(messages)
        .cmd("EXPIRE")
        .arg(s.key(&["sent", queue]))
        .arg(86_400)
        .ignore();
    let mut con = s.cmd.clone();
    let r = s
        .marked(pipe.query_async::<(Option<String>, u64)>(&mut con))
        .await;
    let (busy, since) = r.map_err(|e| s.error("SET/INCR", &e))?;
    Ok(SentState {
        was_empty: busy.is_none(),
        since_empty: since,
    })
}

pub(super) async fn drained(s: &Shared, queue: &str) -> Result<(), BusError> {
    let mut cmd = redis::cmd("DEL");
    cmd.arg(s.key(&["busy", queue]))
        .arg(s.key(&["sent", queue]));
    s.query::<i64>("DEL", &cmd).await.map(|_| ())
}

pub(super) async fn pulse(s: &Shared, presence: &Presence, ttl: Duration) -> Result<(), BusError> {
    let json = serde_json::to_string(presence).map_err(|e| BusError::Codec {
        kind: "presence".into(),
        detail: e.to_string(),
    })?;
    let record = match &s.signer {
        Some(k) => k.seal(&json),
        None => json,
    };
    let ttl_ms = millis(ttl).max(1);
    let mut pipe = redis::pipe();
    pipe.cmd("SET")
        .arg(s.key(&["presence", &presence.instance]))
        .arg(record)
        .arg("PX")
        .arg(ttl_ms)
        .ignore()
        .cmd("ZADD")
        .arg(s.key(&["instances"]))
        .arg(presence.pulse_at_ms.saturating_add(ttl_ms))
        .arg(&presence.instance)
        .ignore()
        .cmd("ZREMRANGEBYSCORE")
        .arg(s.key(&["instances"]))
        .arg("-inf")
        .arg(crate::bus::now_ms())
        .ignore();
    let mut con = s.cmd.clone();
    let r = s.marked(pipe.query_async::<()>(&mut con)).await;
    r.map_err(|e| s.error("presence pulse", &e))
}

pub(super) async fn instances(s: &Shared) -> Result<Vec<Presence>, BusError> {
    let mut cmd = redis::cmd("ZRANGE");
    cmd.arg(s.key(&["instances"]))
        .arg(crate::bus::now_ms())
        .arg("+inf")
        .arg("BYSCORE");
    let ids: Vec<String> = s.query("ZRANGE", &cmd).await?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut cmd = redis::cmd("MGET");
    for id in &ids {
        cmd.arg(s.key(&["presence", id]));
    }
    let found: Vec<Option<String>> = s.query("MGET", &cmd).await?;
    let mut list = Vec::new();
    for (id, record) in ids.iter().zip(found) {
        let Some(record) = record else { continue };
        // Bounded like an envelope; with signing on, only what a known key signed; and only
        // under its own instance's key and id, so a signed record copied under another id
        // (`P:presence:forged-2`) does not list its instance twice.
        let json = (record.len() as u64 <= s.limits.max_envelope)
            .then(|| crate::bus::signing::open(s.signer.as_ref(), &record))
            .flatten();
        match json.and_then(|j| serde_json::from_str::<Presence>(j).ok()) {
            Some(p) if p.instance == *id => list.push(p),
            _ => {
                bump(&s.stats.refused);
                tracing::debug!(
                    "presence record refused: too large, unsigned, wrongly signed, not \
                     presence, or under another instance's key"
                );
            }
        }
    }
    list.sort_by(|a, b| a.instance.cmp(&b.instance));
    Ok(list)
}

/// Stores a job's record for `bus.job_retention` after this change.
pub(super) async fn record_job(s: &Shared, record: &JobRecord) -> Result<(), BusError> {
    let json = serde_json::to_string(record).map_err(|e| BusError::Codec {
        kind: "job record".into(),
        detail: e.to_string(),
    })?;
    let stored = match &s.signer {
        Some(k) => k.seal(&json),
        None => json,
    };
    let keep = millis(s.limits.job_retention).max(1);
    let now = crate::bus::now_ms();
    let mut pipe = redis::pipe();
    pipe.cmd("SET")
        .arg(s.key(&["job", &record.id]))
        .arg(stored)
        .arg("PX")
        .arg(keep)
        .ignore()
        .cmd("ZADD")
        .arg(s.key(&["jobs"]))
        .arg(now.saturating_add(keep))
        .arg(&record.id)
        .ignore()
        .cmd("ZREMRANGEBYSCORE")
        .arg(s.key(&["jobs"]))
        .arg("-inf")
        .arg(now)
        .ignore();
    let mut con = s.cmd.clone();
    let r = s.marked(pipe.query_async::<()>(&mut con)).await;
    r.map_err(|e| s.error("job record", &e))
}

/// The job records kept, newest start first.
pub(super) async fn jobs(s: &Shared) -> Result<Vec<JobRecord>, BusError> {
    let mut cmd = redis::cmd("ZRANGE");
    cmd.arg(s.key(&["jobs"]))
        .arg(crate::bus::now_ms())
        .arg("+inf")
        .arg("BYSCORE");
    let ids: Vec<String> = s.query("ZRANGE", &cmd).await?;
    let mut list = Vec::new();
    for chunk in ids.chunks(500) {
        let mut cmd = redis::cmd("MGET");
        for id in chunk {
            cmd.arg(s.key(&["job", id]));
        }
        let found: Vec<Option<String>> = s.query("MGET", &cmd).await?;
        for (id, record) in chunk.iter().zip(found) {
            let Some(record) = record else { continue };
            let json = (record.len() as u64 <= s.limits.max_envelope)
                .then(|| crate::bus::signing::open(s.signer.as_ref(), &record))
                .flatten();
            // Only under its own job's key (a copy under another id is refused).
            match json.and_then(|j| serde_json::from_str::<JobRecord>(j).ok()) {
                Some(r) if r.id == *id => list.push(r),
                _ => {
                    bump(&s.stats.refused);
                    tracing::debug!(
                        "job record refused: too large, unsigned, wrongly signed, not a job \
                         record, or under another job's key"
                    );
                }
            }
        }
    }
    list.sort_by(|a, b| b.started_at_ms.cmp(&a.started_at_ms).then(a.id.cmp(&b.id)));
    Ok(list)
}
