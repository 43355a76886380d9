//! The Redis transport's background tasks: pub/sub push messages, the blocking stream reads
//! (as a consumer of the group, and as a watcher of `reach = "all"` work streams), the
//! take-over of unacknowledged entries (`XAUTOCLAIM`), and a watchdog that keeps a lost
//! connection reconnecting while nothing else calls.
//!
//! Every task ends when the bus closes. Errors never end them: they mark the bus down, wait a
//! little (up to 2 s), and try again; the connection managers reconnect underneath.

use std::sync::Arc;
use std::time::Duration;

use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use redis::{PushInfo, PushKind};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::{is_connection_error, Shared, GROUP};
use crate::bus::{Envelope, Health, Inbound, Receipt, WorkNotice};

/// The connection's own tasks: pub/sub pushes, take-over, watchdog.
pub(super) fn spawn(shared: &Arc<Shared>, pushes: mpsc::UnboundedReceiver<PushInfo>) {
    tokio::spawn(push_loop(shared.clone(), pushes));
    tokio::spawn(reclaim_loop(shared.clone()));
    tokio::spawn(watchdog(shared.clone()));
}

/// The stream reads, once delivery starts: by then the worker joined its queues' work streams,
/// so the first blocking read already covers them (entries sent before wait in the streams).
pub(super) fn spawn_reads(shared: &Arc<Shared>) {
    tokio::spawn(group_loop(shared.clone()));
    tokio::spawn(watch_loop(shared.clone()));
}

/// Pub/sub messages, and the connection's own news: a disconnection marks the bus down; the
/// subscribe confirmations that follow a reconnect (automatic resubscription) mark it up.
async fn push_loop(shared: Arc<Shared>, mut pushes: mpsc::UnboundedReceiver<PushInfo>) {
    loop {
        let push = tokio::select! {
            _ = shared.closed.cancelled() => return,
            push = pushes.recv() => match push { Some(p) => p, None => return },
        };
        match push.kind {
            PushKind::Disconnection => shared.mark(false, "connection closed"),
            PushKind::Subscribe => shared.mark(true, ""),
            PushKind::Message => {
                let Some(msg) = redis::Msg::from_push_info(push) else {
                    continue;
                };
                match serde_json::from_slice::<Envelope>(msg.get_payload_bytes()) {
                    Ok(envelope) if envelope.is_for(&shared.member) => {
                        let _ = shared.inbox.send(Inbound::Event {
                            envelope,
                            receipt: None,
                        });
                    }
                    Ok(_) => {}
                    Err(e) => {
                        warn!(channel = msg.get_channel_name(), error = %e, "bus message is not an ebbflow envelope; ignored")
                    }
                }
            }
            _ => {}
        }
    }
}

/// Waits `delay` unless the bus closes; `false` when it closed.
async fn pause(shared: &Shared, delay: Duration) -> bool {
    tokio::select! {
        _ = shared.closed.cancelled() => false,
        _ = tokio::time::sleep(delay) => true,
    }
}

/// After a failed stream read: a lost connection marks the bus down (logged there), any other
/// error is logged; then waits `backoff` (doubling it, up to 2 s). False once the bus closed.
async fn after_read_error(shared: &Shared, e: &redis::RedisError, backoff: &mut Duration) -> bool {
    if is_connection_error(e) {
        shared.mark(false, &e.to_string());
    } else {
        warn!(error = %shared.url.scrub(&e.to_string()), "bus stream read failed");
    }
    if !pause(shared, *backoff).await {
        return false;
    }
    *backoff = (*backoff * 2).min(Duration::from_secs(2));
    true
}

/// The consumer-group read: role events and `reach = "one"` work notices.
async fn group_loop(shared: Arc<Shared>) {
    let mut backoff = Duration::from_millis(100);
    let me = shared.member.instance.to_string();
    loop {
        let streams: Vec<String> = shared.groups.lock().map(|g| g.clone()).unwrap_or_default();
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(GROUP)
            .arg(&me)
            .arg("COUNT")
            .arg(32)
            .arg("BLOCK")
            .arg(super::BLOCK.as_millis() as u64)
            .arg("STREAMS");
        for s in &streams {
            cmd.arg(s);
        }
        for _ in &streams {
            cmd.arg(">");
        }
        let mut con = shared.reader.clone();
        let read = tokio::select! {
            _ = shared.closed.cancelled() => return,
            r = cmd.query_async::<Option<StreamReadReply>>(&mut con) => r,
        };
        match read {
            Ok(reply) => {
                backoff = Duration::from_millis(100);
                shared.mark(true, "");
                for key in reply.map(|r| r.keys).unwrap_or_default() {
                    for entry in key.ids {
                        deliver(&shared, &key.key, entry, true);
                    }
                }
            }
            Err(e) if e.code() == Some("NOGROUP") => {
                // Redis lost the stream or the group (a restart without persistence): make
                // them again and read on.
                warn!(error = %shared.url.scrub(&e.to_string()), "bus consumer group missing; recreating it");
                for s in &streams {
                    let _ = shared.ensure_group(s).await;
                }
            }
            Err(e) => {
                if !after_read_error(&shared, &e, &mut backoff).await {
                    return;
                }
            }
        }
    }
}

/// The `reach = "all"` work streams, read with `XREAD` from the last entry seen.
async fn watch_loop(shared: Arc<Shared>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let watched: Vec<(String, String)> = shared
            .watched
            .lock()
            .map(|w| w.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        if watched.is_empty() {
            tokio::select! {
                _ = shared.closed.cancelled() => return,
                _ = shared.changed.notified() => continue,
                _ = tokio::time::sleep(super::BLOCK) => continue,
            }
        }
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(32)
            .arg("BLOCK")
            .arg(super::BLOCK.as_millis() as u64)
            .arg("STREAMS");
        for (k, _) in &watched {
            cmd.arg(k);
        }
        for (_, id) in &watched {
            cmd.arg(id);
        }
        let mut con = shared.fan_reader.clone();
        let read = tokio::select! {
            _ = shared.closed.cancelled() => return,
            r = cmd.query_async::<Option<StreamReadReply>>(&mut con) => r,
        };
        match read {
            Ok(reply) => {
                backoff = Duration::from_millis(100);
                shared.mark(true, "");
                for key in reply.map(|r| r.keys).unwrap_or_default() {
                    if let Some(last) = key.ids.last() {
                        if let Ok(mut w) = shared.watched.lock() {
                            w.insert(key.key.clone(), last.id.clone());
                        }
                    }
                    for entry in key.ids {
                        deliver(&shared, &key.key, entry, false);
                    }
                }
            }
            Err(e) => {
                if !after_read_error(&shared, &e, &mut backoff).await {
                    return;
                }
            }
        }
    }
}

/// Takes over entries of the group's streams that were delivered (to a consumer that died,
/// or to this one, whose handler failed) and not acknowledged within the claim timeout.
async fn reclaim_loop(shared: Arc<Shared>) {
    let every = (shared.claim_timeout / 2).max(Duration::from_millis(50));
    let idle_ms = u64::try_from(shared.claim_timeout.as_millis()).unwrap_or(u64::MAX);
    let me = shared.member.instance.to_string();
    while pause(&shared, every).await {
        let streams: Vec<String> = shared.groups.lock().map(|g| g.clone()).unwrap_or_default();
        for stream in streams {
            let mut cmd = redis::cmd("XAUTOCLAIM");
            cmd.arg(&stream)
                .arg(GROUP)
                .arg(&me)
                .arg(idle_ms)
                .arg("0-0")
                .arg("COUNT")
                .arg(32);
            let mut con = shared.cmd.clone();
            match cmd.query_async::<StreamAutoClaimReply>(&mut con).await {
                Ok(reply) => {
                    for entry in reply.claimed {
                        shared
                            .stats
                            .reclaimed
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        debug!(stream, entry = %entry.id, "bus entry taken over after the claim timeout");
                        deliver(&shared, &stream, entry, true);
                    }
                }
                Err(e) if e.code() == Some("NOGROUP") => {
                    let _ = shared.ensure_group(&stream).await;
                }
                Err(e) => {
                    if is_connection_error(&e) {
                        shared.mark(false, &e.to_string());
                    }
                }
            }
        }
    }
}

/// While the bus is down, sends a `PING` every second: the connection manager reconnects only
/// when called, and an idle instance might otherwise not call for a long time.
async fn watchdog(shared: Arc<Shared>) {
    while pause(&shared, Duration::from_secs(1)).await {
        if *shared.health.borrow() == Health::Down {
            let _ = shared.query::<String>("PING", &redis::cmd("PING")).await;
        }
    }
}

/// Turns a stream entry into an inbound event or work notice.
fn deliver(shared: &Shared, stream: &str, entry: StreamId, grouped: bool) {
    let receipt = grouped.then(|| Receipt {
        stream: stream.to_string(),
        entry: entry.id.clone(),
    });
    let inbound = if let Some(json) = entry.get::<String>("envelope") {
        match serde_json::from_str::<Envelope>(&json) {
            Ok(envelope) => Inbound::Event { envelope, receipt },
            Err(e) => {
                warn!(stream, entry = %entry.id, error = %e, "bus stream entry is not an ebbflow envelope; acknowledged and dropped");
                ack_later(shared, receipt);
                return;
            }
        }
    } else if let Some(queue) = entry.get::<String>("queue") {
        Inbound::Work {
            notice: WorkNotice {
                queue,
                from: entry.get("from"),
                messages: entry.get("messages"),
                hops: entry.get("hops").unwrap_or(0),
            },
            receipt,
        }
    } else {
        warn!(stream, entry = %entry.id, "bus stream entry has neither `envelope` nor `queue`; acknowledged and dropped");
        ack_later(shared, receipt);
        return;
    };
    let _ = shared.inbox.send(inbound);
}

fn ack_later(shared: &Shared, receipt: Option<Receipt>) {
    let Some(r) = receipt else { return };
    let mut con = shared.cmd.clone();
    tokio::spawn(async move {
        let _ = redis::cmd("XACK")
            .arg(&r.stream)
            .arg(GROUP)
            .arg(&r.entry)
            .query_async::<i64>(&mut con)
            .await;
    });
}
