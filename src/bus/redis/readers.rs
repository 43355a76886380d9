//! The Redis transport's background tasks, each supervised (named, restarted after a panic):
//! pub/sub push messages (events sent at most once, nudges, the connection's news), the stream
//! reads (fan-out streams through this instance's group, competing and work streams through the
//! group `ebbflow`, `reach = "all"` work streams by range), the take-over of unacknowledged
//! competing entries, the removal of departed instances' groups, and a watchdog that keeps a
//! lost connection reconnecting while nothing else calls.
//!
//! Errors never end a task: they mark the bus down, wait a little (up to 2 s), and try again;
//! the connection managers reconnect underneath.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use redis::{PushInfo, PushKind};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::deliver::{self, Entry, Source};
use super::droplog::Drop;
use super::{bump, is_connection_error, millis, scripts, Shared, GROUP, POLL};
use crate::bus::supervise::restarting;
use crate::bus::{signing, Envelope, Health, Inbound};

/// The connection's own tasks: pub/sub pushes, take-over, group sweep, watchdog.
pub(super) fn spawn(shared: &Arc<Shared>, pushes: mpsc::UnboundedReceiver<PushInfo>) {
    let pushes = Arc::new(tokio::sync::Mutex::new(pushes));
    let closed = shared.closed.clone();
    let s = shared.clone();
    restarting("bus pub/sub reader", closed.clone(), move || {
        push_loop(s.clone(), pushes.clone())
    });
    let s = shared.clone();
    restarting("bus take-over", closed.clone(), move || {
        reclaim_loop(s.clone())
    });
    let s = shared.clone();
    restarting("bus group sweep", closed.clone(), move || {
        sweep_loop(s.clone())
    });
    let s = shared.clone();
    restarting("bus watchdog", closed, move || watchdog(s.clone()));
}

/// The stream reads, once delivery starts: by then the worker joined its queues' work streams,
/// so the first read already covers them (entries sent before wait in the streams).
pub(super) fn spawn_reads(shared: &Arc<Shared>) {
    let s = shared.clone();
    restarting("bus stream reader", shared.closed.clone(), move || {
        read_loop(s.clone())
    });
}

/// Pub/sub messages, and the connection's own news: a disconnection marks the bus down; the
/// subscribe confirmations that follow a reconnect (automatic resubscription) mark it up.
async fn push_loop(
    shared: Arc<Shared>,
    pushes: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<PushInfo>>>,
) {
    let mut pushes = pushes.lock().await;
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
                on_message(&shared, &msg);
            }
            _ => {}
        }
    }
}

/// A pub/sub message: a nudge (`~`: an entry was appended) or an event sent at most once.
fn on_message(shared: &Shared, msg: &redis::Msg) {
    let payload = msg.get_payload_bytes();
    if payload == b"~" {
        shared.nudge.notify_one();
        return;
    }
    // Anyone who can PUBLISH under the prefix can send these: counted, logged throttled.
    if payload.len() as u64 > shared.limits.max_envelope {
        shared.drops.dropped(Drop::TooLarge);
        return;
    }
    let Ok(text) = std::str::from_utf8(payload) else {
        shared.drops.dropped(Drop::NotText);
        return;
    };
    let Some(json) = signing::open(shared.signer.as_ref(), text) else {
        bump(&shared.stats.refused);
        shared.drops.dropped(Drop::Unsigned);
        return;
    };
    match serde_json::from_str::<Envelope>(json) {
        Ok(envelope) if envelope.is_expired(crate::bus::now_ms()) => {
            bump(&shared.stats.expired);
        }
        Ok(envelope) if envelope.is_for(&shared.member) => {
            let _ = shared.inbox.send(Inbound::Event {
                envelope,
                receipt: None,
            });
        }
        Ok(_) => {}
        Err(_) => shared.drops.dropped(Drop::NotEnvelope),
    }
}

/// Waits `delay` unless the bus closes; `false` when it closed.
async fn pause(shared: &Shared, delay: Duration) -> bool {
    tokio::select! {
        _ = shared.closed.cancelled() => false,
        _ = tokio::time::sleep(delay) => true,
    }
}

/// After a failed read: a lost connection marks the bus down (logged there), any other error
/// is logged; then waits `backoff` (doubling it, up to 2 s). False once the bus closed.
async fn after_read_error(
    shared: &Shared,
    since: u64,
    e: &redis::RedisError,
    backoff: &mut Duration,
) -> bool {
    if is_connection_error(e) {
        shared.mark_since(Some(since), false, &e.to_string());
    } else {
        warn!(error = %shared.url.scrub(&e.to_string()), "bus stream read failed");
    }
    if !pause(shared, *backoff).await {
        return false;
    }
    *backoff = (*backoff * 2).min(Duration::from_secs(2));
    true
}

/// One read's plan: the streams, how each is read, and from where.
struct Plan {
    keys: Vec<String>,
    args: Vec<(char, String, String)>,
    sources: BTreeMap<String, Source>,
}

fn plan(shared: &Shared) -> Plan {
    let me = shared.member.instance.to_string();
    let work = shared.key(&["work", ""]);
    let mut plan = Plan {
        keys: Vec::new(),
        args: Vec::new(),
        sources: BTreeMap::new(),
    };
    let Ok(streams) = shared.streams.lock() else {
        return plan;
    };
    for (key, from) in &streams.fan {
        plan.keys.push(key.clone());
        plan.args.push(('g', me.clone(), from.clone()));
        plan.sources.insert(key.clone(), Source::Fan);
    }
    for key in &streams.groups {
        plan.keys.push(key.clone());
        plan.args.push(('g', GROUP.into(), ">".into()));
        let source = if key.starts_with(&work) {
            Source::WorkOne
        } else {
            Source::Competing
        };
        plan.sources.insert(key.clone(), source);
    }
    for (key, last) in &streams.watched {
        plan.keys.push(key.clone());
        plan.args.push(('x', String::new(), last.clone()));
        plan.sources.insert(key.clone(), Source::WorkAll);
    }
    plan
}

/// The stream reads: without blocking, every entry checked by the script, then a wait for a
/// nudge (or [`POLL`]) whenever a read found less than a full batch.
async fn read_loop(shared: Arc<Shared>) {
    let mut backoff = Duration::from_millis(100);
    let count = shared.limits.read_count();
    loop {
        if shared.closed.is_cancelled() {
            return;
        }
        let plan = plan(&shared);
        let mut more = false;
        // The sender's carbon copies held before this read: every entry appended before them is
        // in this read (or a later one, past a full batch), so they take their place among them.
        let copies = deliver::take_copies(&shared);
        if plan.keys.is_empty() {
            deliver::hold(&shared, copies);
        } else {
            let keys: Vec<&str> = plan.keys.iter().map(String::as_str).collect();
            let mut inv = scripts::READ.call(&keys);
            inv.arg(shared.member.instance.as_str())
                .arg(count)
                .arg(shared.limits.max_envelope)
                .arg(shared.key(&["poison"]));
            for (kind, group, from) in &plan.args {
                inv.arg(kind.to_string()).arg(group).arg(from);
            }
            let mut con = shared.reader.clone();
            bump(&shared.stats.reads);
            let since = shared.epoch();
            let read = tokio::select! {
                _ = shared.closed.cancelled() => return,
                r = inv.query_async::<Vec<Vec<Vec<u8>>>>(&mut con) => r,
            };
            match read {
                Ok(raw) => {
                    backoff = Duration::from_millis(100);
                    shared.mark_since(Some(since), true, "");
                    // Copies held while the read was under way: the read may hold entries
                    // sent after them.
                    let late = deliver::take_copies(&shared);
                    more = received(&shared, &plan, raw, count, copies, late).await;
                }
                Err(e) if e.code() == Some("NOGROUP") => {
                    deliver::hold(&shared, copies);
                    reread_pending(&shared);
                    // Redis lost a stream or group (a restart without persistence, an expired
                    // stream): make them again and read on.
                    debug!(error = %shared.url.scrub(&e.to_string()), "bus consumer group missing; recreating it");
                    if let Err(e) = shared.ensure_groups(true).await {
                        warn!(error = %e, "cannot recreate the bus consumer groups");
                        if !pause(&shared, backoff).await {
                            return;
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                    }
                    continue;
                }
                Err(e) => {
                    deliver::hold(&shared, copies);
                    reread_pending(&shared);
                    if !after_read_error(&shared, since, &e, &mut backoff).await {
                        return;
                    }
                    continue;
                }
            }
        }
        if more {
            tokio::task::yield_now().await;
            continue;
        }
        tokio::select! {
            _ = shared.closed.cancelled() => return,
            _ = shared.nudge.notified() => {
                // Every instance of a role hears the same nudge: a random head start of up to
                // 2 ms spreads competing entries over them, as Redis's queue of blocked readers
                // would (the first to read takes what is there).
                let jitter = rand::Rng::random_range(&mut rand::rng(), 0..=2_000u64);
                tokio::time::sleep(Duration::from_micros(jitter)).await;
            }
            _ = tokio::time::sleep(POLL) => {}
        }
    }
}

/// After a read that failed: the next read of each fan-out stream starts with this instance's
/// pending entries (`0`). A read that fails may still have taken new entries: the script stops
/// at a stream whose group is gone after the streams before it moved their entries into this
/// consumer's pending list, and a reply lost with the connection took them all. Read with `>`
/// they would never come again; entries that did arrive before are dropped as already seen.
fn reread_pending(shared: &Shared) {
    if let Ok(mut streams) = shared.streams.lock() {
        for from in streams.fan.values_mut() {
            *from = "0".into();
        }
    }
}

/// Delivers a read's entries and the carbon copies held before it (`copies`, in `seq` order),
/// acknowledges the fan-out entries, moves the read positions on. Whether a stream returned a
/// full batch (more may wait).
///
/// `late`: copies held while the read was under way (on another connection than the sends, so
/// it may have run on the server after sends that followed them). One whose `seq` is below an
/// entry of this read takes its place among them: `seq` is given in the order the appends run,
/// so that entry was appended after the copy's event, and the read, later still, holds every
/// entry appended before that event. The other late copies wait for the next read.
async fn received(
    shared: &Shared,
    plan: &Plan,
    raw: Vec<Vec<Vec<u8>>>,
    count: u64,
    copies: Vec<(u64, Envelope)>,
    late: Vec<(u64, Envelope)>,
) -> bool {
    let mut entries: Vec<Entry> = raw.into_iter().filter_map(Entry::parse).collect();
    // Fan-out entries carry one counter over all streams, other entries the server's clock in
    // their ids: so events sent to different addresses (one stream each) arrive in the order
    // they were sent.
    entries.sort_by_key(|e| (e.seq(), entry_order(&e.id)));
    let mut per_stream: BTreeMap<String, (u64, String, u64)> = BTreeMap::new();
    for e in &entries {
        let slot = per_stream.entry(e.stream.clone()).or_default();
        slot.0 += 1;
        slot.1 = e.id.clone();
        slot.2 = slot.2.max(e.seq());
    }
    // A fan-out stream that returned a full batch may hold more entries past its last one: a
    // copy sent after that entry waits for a later read.
    let bound = per_stream
        .iter()
        .filter(|(key, (n, _, _))| *n >= count && plan.sources.get(*key) == Some(&Source::Fan))
        .map(|(_, (_, _, seq))| *seq)
        .min()
        .unwrap_or(u64::MAX);
    let newest = entries.iter().map(Entry::seq).max().unwrap_or(0);
    let (mut ready, mut later): (Vec<_>, Vec<_>) =
        copies.into_iter().partition(|(seq, _)| *seq < bound);
    let (late_ready, late_later): (Vec<_>, Vec<_>) = late
        .into_iter()
        .partition(|(seq, _)| *seq < bound && *seq < newest);
    ready.extend(late_ready);
    ready.sort_by_key(|(seq, _)| *seq);
    later.extend(late_later);
    deliver::hold(shared, later);
    let mut acks: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (seq, envelope) in ready {
        let before = entries
            .iter()
            .position(|e| e.seq() > seq)
            .unwrap_or(entries.len());
        let first: Vec<Entry> = entries.drain(..before).collect();
        for (stream, ids) in deliver::batch(shared, first, &plan.sources).await {
            acks.entry(stream).or_default().extend(ids);
        }
        let _ = shared.inbox.send(Inbound::Event {
            envelope,
            receipt: None,
        });
    }
    for (stream, ids) in deliver::batch(shared, entries, &plan.sources).await {
        acks.entry(stream).or_default().extend(ids);
    }
    if !acks.is_empty() {
        let me = shared.member.instance.to_string();
        let mut pipe = redis::pipe();
        for (stream, ids) in &acks {
            pipe.cmd("XACK").arg(stream).arg(&me).arg(ids).ignore();
        }
        let mut con = shared.cmd.clone();
        if let Err(e) = pipe.query_async::<()>(&mut con).await {
            // Not acknowledged: re-read after a restart, then dropped as already seen.
            debug!(error = %shared.url.scrub(&e.to_string()), "cannot acknowledge fan-out entries");
        }
    }
    if let Ok(mut streams) = shared.streams.lock() {
        for (key, from) in streams.fan.iter_mut() {
            // This instance's entries pending from before a restart are read first (`0`);
            // once a read returns less than a full batch of them, new ones (`>`).
            let got = per_stream.get(key).map_or(0, |(n, _, _)| *n);
            if from == "0" && got < count {
                *from = ">".into();
            }
        }
        for (key, last) in streams.watched.iter_mut() {
            if let Some((_, id, _)) = per_stream.get(key) {
                *last = id.clone();
            }
        }
    }
    per_stream.values().any(|(n, _, _)| *n >= count)
}

/// `<ms>-<seq>` as a sortable pair.
fn entry_order(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

/// Takes over competing entries delivered (to a consumer that died, or to this one, whose
/// handler failed) and not acknowledged within the claim timeout; moves those delivered
/// `bus.max_deliveries` times to the poison stream.
async fn reclaim_loop(shared: Arc<Shared>) {
    let claim = shared.limits.claim_timeout;
    let every = (claim / 2).max(Duration::from_millis(50));
    let mut sources = BTreeMap::new();
    while pause(&shared, every).await {
        let streams: Vec<String> = shared
            .streams
            .lock()
            .map(|s| s.groups.clone())
            .unwrap_or_default();
        let work = shared.key(&["work", ""]);
        for stream in streams {
            let mut inv = scripts::RECLAIM.call(&[&stream]);
            inv.arg(GROUP)
                .arg(shared.member.instance.as_str())
                .arg(millis(claim))
                .arg(shared.limits.max_deliveries)
                .arg(shared.limits.read_count())
                .arg(shared.limits.max_envelope)
                .arg(shared.key(&["poison"]))
                .arg(shared.key(&["error", ""]));
            let source = if stream.starts_with(&work) {
                Source::WorkOne
            } else {
                Source::Competing
            };
            sources.insert(stream.clone(), source);
            match shared.script::<Vec<Vec<Vec<u8>>>>(&inv).await {
                Ok(raw) => {
                    let entries: Vec<Entry> = raw.into_iter().filter_map(Entry::parse).collect();
                    for e in &entries {
                        debug!(stream, entry = %e.id, "bus entry taken over after the claim timeout");
                        bump(&shared.stats.reclaimed);
                    }
                    deliver::batch(&shared, entries, &sources).await;
                }
                Err(e) if e.code() == Some("NOGROUP") => {
                    let _ = shared.ensure_groups(true).await;
                }
                Err(e) => {
                    debug!(stream, error = %shared.url.scrub(&e.to_string()), "bus take-over failed")
                }
            }
        }
    }
}

/// Removes departed instances' groups from the fan-out streams this instance reads, and keeps
/// its own stream from expiring while it lives.
async fn sweep_loop(shared: Arc<Shared>) {
    let retention = shared.limits.retention;
    let every = (retention / 4).clamp(Duration::from_millis(500), Duration::from_secs(60));
    while pause(&shared, every).await {
        let me = shared.member.instance.to_string();
        let own = shared.fan_of(&crate::bus::Address::Instance(me.clone())).0;
        let shared_streams: Vec<String> = shared
            .streams
            .lock()
            .map(|s| s.fan.keys().filter(|k| **k != own).cloned().collect())
            .unwrap_or_default();
        let keys: Vec<&str> = shared_streams.iter().map(String::as_str).collect();
        let mut inv = scripts::SWEEP.call(&keys);
        inv.arg(&me).arg(millis(retention));
        match shared.script::<i64>(&inv).await {
            Ok(0) => {}
            Ok(gone) => debug!(
                groups = gone,
                "bus: removed the groups of instances gone longer than bus.retention"
            ),
            Err(e) => debug!(error = %shared.url.scrub(&e.to_string()), "bus group sweep failed"),
        }
        let mut cmd = redis::cmd("PEXPIRE");
        cmd.arg(&own).arg(millis(retention));
        let _ = shared.raw::<i64>(&cmd).await;
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

/// At close: competing entries this instance read and did not handle go to another instance
/// at its next take-over sweep, not a claim timeout later.
pub(super) async fn release(shared: &Shared) {
    let streams: Vec<String> = shared
        .streams
        .lock()
        .map(|s| s.groups.clone())
        .unwrap_or_default();
    for stream in streams {
        let mut inv = scripts::RELEASE.call(&[&stream]);
        inv.arg(GROUP)
            .arg(shared.member.instance.as_str())
            .arg(millis(shared.limits.claim_timeout));
        match shared.script::<i64>(&inv).await {
            Ok(0) => {}
            Ok(n) => debug!(
                stream,
                entries = n,
                "bus: released unhandled entries at close"
            ),
            Err(e) => {
                debug!(stream, error = %shared.url.scrub(&e.to_string()), "bus: cannot release entries at close")
            }
        }
    }
}
