//! Turns stream entries read by [`super::readers`] into inbound events and work notices: the
//! size, signature, time to live and de-duplication checks, and what happens to an entry that
//! fails one (a competing one moves to the poison stream, a fan-out one is dropped and counted).

use std::collections::BTreeMap;

use tracing::{debug, warn};

use super::{bump, poison, Shared, GROUP};
use crate::bus::{now_ms, Envelope, Inbound, Receipt, WorkNotice};

/// How a stream is read, and so what its entries are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Source {
    /// A fan-out stream through this instance's own group (acknowledged once received).
    Fan,
    /// A competing stream of events (acknowledged by the handler).
    Competing,
    /// A work stream through the group (`reach = "one"`).
    WorkOne,
    /// A work stream read by every listener (`reach = "all"`).
    WorkAll,
}

/// One entry as read: its stream, id and field/value pairs.
pub(super) struct Entry {
    pub(super) stream: String,
    pub(super) id: String,
    pub(super) fields: Vec<(String, Vec<u8>)>,
}

impl Entry {
    /// Parses `[stream, id, field, value, ...]`.
    pub(super) fn parse(raw: Vec<Vec<u8>>) -> Option<Self> {
        let mut it = raw.into_iter();
        let stream = String::from_utf8(it.next()?).ok()?;
        let id = String::from_utf8(it.next()?).ok()?;
        let mut fields = Vec::new();
        while let (Some(f), Some(v)) = (it.next(), it.next()) {
            fields.push((String::from_utf8_lossy(&f).into_owned(), v));
        }
        Some(Self { stream, id, fields })
    }

    /// The fan-out order counter (0 on other entries).
    pub(super) fn seq(&self) -> u64 {
        self.text("seq").and_then(|t| t.parse().ok()).unwrap_or(0)
    }

    fn get(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|(f, _)| f == name)
            .map(|(_, v)| v.as_slice())
    }

    fn text(&self, name: &str) -> Option<String> {
        self.get(name)
            .and_then(|v| std::str::from_utf8(v).ok())
            .map(str::to_string)
    }
}

/// Why an entry cannot be delivered.
fn open_envelope(shared: &Shared, entry: &Entry) -> Result<Envelope, (String, bool)> {
    let json = entry
        .get("envelope")
        .ok_or_else(|| ("the entry has no `envelope` field".to_string(), false))?;
    if let Some(signer) = &shared.signer {
        let verified = entry
            .text("sig")
            .is_some_and(|sig| signer.verify(json, &sig));
        if !verified {
            return Err((
                "refused: unsigned or wrongly signed (bus.signing_key is set)".to_string(),
                true,
            ));
        }
    }
    serde_json::from_slice::<Envelope>(json)
        .map_err(|e| (format!("not an ebbflow envelope: {e}"), false))
}

/// Delivers one batch; returns the fan-out entries to acknowledge, by stream.
pub(super) async fn batch(
    shared: &Shared,
    entries: Vec<Entry>,
    sources: &BTreeMap<String, Source>,
) -> BTreeMap<String, Vec<String>> {
    let mut fan_acks: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for entry in entries {
        let Some(source) = sources.get(&entry.stream) else {
            continue;
        };
        if let Some(size) = entry.text("~oversized") {
            if *source != Source::WorkAll {
                bump(&shared.stats.poisoned);
                warn!(stream = %entry.stream, entry = %entry.id, size, limit = shared.limits.max_envelope,
                      "bus entry over bus.max_envelope_size: moved to the poison stream unread");
            }
            continue;
        }
        if let Some(deliveries) = entry.text("~poisoned") {
            bump(&shared.stats.poisoned);
            warn!(stream = %entry.stream, entry = %entry.id, deliveries, limit = shared.limits.max_deliveries,
                  "bus event delivered bus.max_deliveries times without an acknowledgement: moved to the poison stream");
            continue;
        }
        match source {
            Source::Fan => {
                fan_acks
                    .entry(entry.stream.clone())
                    .or_default()
                    .push(entry.id.clone());
                fan_out(shared, &entry);
            }
            Source::Competing => competing(shared, entry).await,
            Source::WorkOne | Source::WorkAll => {
                let receipt = (*source == Source::WorkOne).then(|| Receipt {
                    stream: entry.stream.clone(),
                    entry: entry.id.clone(),
                });
                let Some(queue) = entry.text("queue") else {
                    warn!(stream = %entry.stream, entry = %entry.id, "bus work entry without `queue`; skipped");
                    if let Some(r) = receipt {
                        let _ = poison::reject(
                            shared,
                            &r,
                            &entry.fields,
                            "a work entry without `queue`",
                        )
                        .await;
                    }
                    continue;
                };
                let number = |name: &str| entry.text(name).and_then(|t| t.parse().ok());
                let notice = WorkNotice {
                    queue,
                    from: entry.text("from"),
                    messages: number("messages"),
                    hops: number("hops").map_or(0, |h: u64| u32::try_from(h).unwrap_or(u32::MAX)),
                };
                // A notice this instance passed on through the work stream (it had more than it
                // could take and knew no other replica yet; passed-on notices normally go to a
                // chosen replica as `ebbflow.work-passed`) is for another replica: hand it back
                // at once so the next take-over sweep of another instance takes it (this one's
                // own sweep skips it).
                let mine = notice.hops > 0
                    && notice.from.as_deref() == Some(shared.member.instance.as_str());
                if let (true, Some(r)) = (mine, &receipt) {
                    let mut cmd = redis::cmd("XCLAIM");
                    cmd.arg(&r.stream)
                        .arg(GROUP)
                        .arg(shared.member.instance.as_str())
                        .arg(0)
                        .arg(&r.entry)
                        .arg("IDLE")
                        .arg(super::millis(shared.limits.claim_timeout))
                        .arg("JUSTID");
                    let _ = shared.raw::<redis::Value>(&cmd).await;
                    continue;
                }
                let _ = shared.inbox.send(Inbound::Work { notice, receipt });
            }
        }
    }
    fan_acks
}

fn fan_out(shared: &Shared, entry: &Entry) {
    let envelope = match open_envelope(shared, entry) {
        Ok(e) => e,
        Err((why, refused)) => {
            if refused {
                bump(&shared.stats.refused);
            }
            warn!(stream = %entry.stream, entry = %entry.id, reason = %why, "bus event dropped");
            return;
        }
    };
    if envelope.is_expired(now_ms()) {
        bump(&shared.stats.expired);
        debug!(kind = %envelope.kind, id = %envelope.id, "bus event past its time to live; dropped");
        return;
    }
    let first = shared
        .seen
        .lock()
        .map(|mut s| s.insert(&envelope.id))
        .unwrap_or(true);
    if !first {
        bump(&shared.stats.duplicates);
        debug!(kind = %envelope.kind, id = %envelope.id, "bus event received again; dropped");
        return;
    }
    if envelope.is_for(&shared.member) {
        let _ = shared.inbox.send(Inbound::Event {
            envelope,
            receipt: None,
        });
    }
}

async fn competing(shared: &Shared, entry: Entry) {
    let receipt = Receipt {
        stream: entry.stream.clone(),
        entry: entry.id.clone(),
    };
    let envelope = match open_envelope(shared, &entry) {
        Ok(e) => e,
        Err((why, refused)) => {
            if refused {
                bump(&shared.stats.refused);
            }
            warn!(stream = %entry.stream, entry = %entry.id, reason = %why, "bus event moved to the poison stream");
            let _ = poison::reject(shared, &receipt, &entry.fields, &why).await;
            return;
        }
    };
    if envelope.is_expired(now_ms()) {
        bump(&shared.stats.expired);
        debug!(kind = %envelope.kind, id = %envelope.id, "bus event past its time to live; dropped");
        let mut cmd = redis::cmd("XACK");
        cmd.arg(&receipt.stream).arg(GROUP).arg(&receipt.entry);
        let _ = shared.raw::<i64>(&cmd).await;
        let mut cmd = redis::cmd("XDEL");
        cmd.arg(&receipt.stream).arg(&receipt.entry);
        let _ = shared.raw::<i64>(&cmd).await;
        return;
    }
    let _ = shared.inbox.send(Inbound::Event {
        envelope,
        receipt: Some(receipt),
    });
}

/// The carbon copies waiting for the reader, in `seq` order.
pub(super) fn take_copies(shared: &Shared) -> Vec<(u64, Envelope)> {
    let mut copies = shared
        .copies
        .lock()
        .map(|mut c| std::mem::take(&mut *c))
        .unwrap_or_default();
    copies.sort_by_key(|(seq, _)| *seq);
    copies
}

/// Puts carbon copies back for a later read.
pub(super) fn hold(shared: &Shared, copies: Vec<(u64, Envelope)>) {
    if copies.is_empty() {
        return;
    }
    match shared.copies.lock() {
        Ok(mut held) => held.extend(copies),
        Err(_) => {
            for (_, envelope) in copies {
                let _ = shared.inbox.send(Inbound::Event {
                    envelope,
                    receipt: None,
                });
            }
        }
    }
}
