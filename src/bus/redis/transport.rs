//! The [`Bus`] trait over Redis: sending to streams or channels, work notices, acknowledgement,
//! claims, the poison stream, presence, and leaving.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, watch};

use super::{dedup, poison, presence, readers, RedisBus, GROUP};
use crate::bus::jobs::JobRecord;
use crate::bus::{
    Address, Bus, BusError, DedupClaim, Envelope, Health, Inbound, Member, PoisonEntry, Presence,
    Reach, Receipt, SentState, TransportCounters, WorkNotice,
};

#[async_trait]
impl Bus for RedisBus {
    fn member(&self) -> &Member {
        &self.shared.member
    }

    async fn send(&self, envelope: &Envelope) -> Result<(), BusError> {
        let s = &self.shared;
        let json = serde_json::to_string(envelope).map_err(|e| BusError::Codec {
            kind: envelope.kind.clone(),
            detail: e.to_string(),
        })?;
        let size = json.len() as u64;
        if size > s.limits.max_envelope {
            return Err(BusError::TooLarge {
                kind: envelope.kind.clone(),
                size,
                limit: s.limits.max_envelope,
            });
        }
        let me = &s.member;
        let local_copy = match &envelope.to {
            Address::Instance(id) => id != me.instance.as_str(),
            Address::All => false,
            Address::Role(r) => r != me.role.as_str(),
            Address::OneOf(_) => true,
        };
        let sig = s.signer.as_ref().map(|k| k.sign(json.as_bytes()));
        let mut fields = vec![("envelope", json.as_str())];
        if let Some(sig) = &sig {
            fields.push(("sig", sig.as_str()));
        }
        let (stream, channel) = s.fan_of(&envelope.to);
        // The fan-out order counter of the entry, for a carbon copy to keep its place.
        let mut seq = 0;
        match &envelope.to {
            _ if envelope.at_most_once => {
                let payload = match &s.signer {
                    Some(k) => k.seal(&json),
                    None => json.clone(),
                };
                let mut cmd = redis::cmd("PUBLISH");
                cmd.arg(&channel).arg(payload);
                s.query::<i64>("PUBLISH", &cmd).await?;
            }
            Address::OneOf(role) => {
                let stream = s.key(&["group", role]);
                s.append(
                    &envelope.kind,
                    &stream,
                    "backlog",
                    Duration::ZERO,
                    &channel,
                    &fields,
                )
                .await?;
            }
            Address::Instance(_) => {
                // An instance's own stream goes when it is gone for longer than the retention.
                let expiry = s.limits.retention;
                seq = s
                    .append(&envelope.kind, &stream, "fan", expiry, &channel, &fields)
                    .await?
                    .1;
            }
            Address::All | Address::Role(_) => {
                seq = s
                    .append(
                        &envelope.kind,
                        &stream,
                        "fan",
                        Duration::ZERO,
                        &channel,
                        &fields,
                    )
                    .await?
                    .1;
            }
        }
        // A carbon copy the sender would not get through its own streams. A fan-out one waits
        // for the stream reader, which releases it after the events appended before it (a cc
        // to `All` reaches the sender through the reader: the copy must not overtake it).
        if envelope.cc && local_copy {
            let held = seq > 0
                && self.listening
                && s.copies
                    .lock()
                    .map(|mut copies| copies.push((seq, envelope.clone())))
                    .is_ok();
            if held {
                s.nudge.notify_one();
            } else {
                let _ = s.inbox.send(Inbound::Event {
                    envelope: envelope.clone(),
                    receipt: None,
                });
            }
        }
        Ok(())
    }

    async fn announce(&self, notice: &WorkNotice) -> Result<(), BusError> {
        let s = &self.shared;
        let stream = s.key(&["work", &notice.queue]);
        let hops = notice.hops.to_string();
        let messages = notice.messages.map(|n| n.to_string());
        let mut fields = vec![("queue", notice.queue.as_str()), ("hops", hops.as_str())];
        if let Some(from) = &notice.from {
            fields.push(("from", from.as_str()));
        }
        if let Some(n) = &messages {
            fields.push(("messages", n.as_str()));
        }
        s.append(
            "work notice",
            &stream,
            "cap",
            Duration::ZERO,
            &stream,
            &fields,
        )
        .await
        .map(|_| ())
    }

    async fn listen_work(&self, queue: &str, reach: Reach) -> Result<(), BusError> {
        let s = &self.shared;
        let stream = s.key(&["work", queue]);
        let mut con = s.cmd.clone();
        con.subscribe(&stream)
            .await
            .map_err(|e| s.error("SUBSCRIBE", &e))?;
        match reach {
            Reach::One => {
                s.ensure_group(&stream, GROUP, "0").await?;
                if let Ok(mut st) = s.streams.lock() {
                    if !st.groups.contains(&stream) {
                        st.groups.push(stream);
                    }
                }
            }
            Reach::All => {
                // From the newest entry on: older notices were for work found since.
                let mut cmd = redis::cmd("XREVRANGE");
                cmd.arg(&stream).arg("+").arg("-").arg("COUNT").arg(1);
                let last: redis::streams::StreamRangeReply = s.query("XREVRANGE", &cmd).await?;
                let from = last
                    .ids
                    .first()
                    .map(|e| e.id.clone())
                    .unwrap_or_else(|| "0-0".into());
                if let Ok(mut st) = s.streams.lock() {
                    st.watched.entry(stream).or_insert(from);
                }
            }
        }
        s.nudge.notify_one();
        Ok(())
    }

    async fn ack(&self, receipt: &Receipt) -> Result<(), BusError> {
        let s = &self.shared;
        let mut pipe = redis::pipe();
        pipe.cmd("XACK")
            .arg(&receipt.stream)
            .arg(GROUP)
            .arg(&receipt.entry)
            .ignore();
        // A handled competing event is deleted: the stream holds only what waits or is being
        // handled, which `bus.max_backlog` bounds. (Work streams are read by watchers too.)
        if receipt.stream.starts_with(&s.key(&["group", ""])) {
            pipe.cmd("XDEL")
                .arg(&receipt.stream)
                .arg(&receipt.entry)
                .ignore()
                .cmd("DEL")
                .arg(s.key(&["error", &receipt.entry]))
                .ignore();
        }
        let mut con = s.cmd.clone();
        let r = s.marked(pipe.query_async::<()>(&mut con)).await;
        r.map_err(|e| s.error("XACK", &e))
    }

    async fn fail(&self, receipt: &Receipt, error: &str) -> Result<bool, BusError> {
        poison::fail(&self.shared, receipt, error).await
    }

    async fn poison_list(&self, limit: usize) -> Result<Vec<PoisonEntry>, BusError> {
        poison::list(&self.shared, limit).await
    }

    async fn poison_show(&self, id: &str) -> Result<PoisonEntry, BusError> {
        poison::show(&self.shared, id).await
    }

    async fn poison_requeue(&self, id: &str) -> Result<(), BusError> {
        poison::requeue(&self.shared, id).await
    }

    async fn renew(&self, receipt: &Receipt) -> Result<bool, BusError> {
        // Atomically: still pending for this consumer? Then its idle time starts again.
        const RENEW: &str =
            "if #redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1, ARGV[3]) == 0 \
             then return 0 end \
             redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[2], 'JUSTID') return 1";
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(RENEW)
            .arg(1)
            .arg(&receipt.stream)
            .arg(GROUP)
            .arg(&receipt.entry)
            .arg(self.shared.member.instance.as_str());
        self.shared
            .query::<i64>("renew claim", &cmd)
            .await
            .map(|mine| mine == 1)
    }

    fn claim_timeout(&self) -> Option<Duration> {
        Some(self.shared.limits.claim_timeout)
    }

    fn take_inbox(&self) -> Option<mpsc::UnboundedReceiver<Inbound>> {
        let inbox = self.inbox.lock().ok().and_then(|mut i| i.take());
        if inbox.is_some() && self.listening {
            readers::spawn_reads(&self.shared);
        }
        inbox
    }

    fn health(&self) -> watch::Receiver<Health> {
        self.shared.health.subscribe()
    }

    async fn sent(&self, queue: &str, messages: u64) -> Result<SentState, BusError> {
        presence::sent(&self.shared, queue, messages).await
    }

    async fn drained(&self, queue: &str) -> Result<(), BusError> {
        presence::drained(&self.shared, queue).await
    }

    async fn pulse(&self, presence: &Presence, ttl: Duration) -> Result<(), BusError> {
        presence::pulse(&self.shared, presence, ttl).await
    }

    async fn instances(&self) -> Result<Vec<Presence>, BusError> {
        presence::instances(&self.shared).await
    }

    async fn record_job(&self, record: &JobRecord) -> Result<(), BusError> {
        presence::record_job(&self.shared, record).await
    }

    async fn jobs(&self) -> Result<Vec<JobRecord>, BusError> {
        presence::jobs(&self.shared).await
    }

    async fn dedup_claim(
        &self,
        key: &str,
        token: &str,
        lease: Duration,
    ) -> Result<DedupClaim, BusError> {
        dedup::claim(&self.shared, key, token, lease).await
    }

    async fn dedup_renew(&self, key: &str, token: &str, lease: Duration) -> Result<bool, BusError> {
        dedup::renew(&self.shared, key, token, lease).await
    }

    async fn dedup_finish(
        &self,
        key: &str,
        token: &str,
        done_for: Option<Duration>,
    ) -> Result<(), BusError> {
        dedup::finish(&self.shared, key, token, done_for).await
    }

    fn counters(&self) -> TransportCounters {
        let st = &self.shared.stats;
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
        TransportCounters {
            outages: read(&st.outages),
            reconnects: read(&st.reconnects),
            reclaimed: read(&st.reclaimed),
            refused: read(&st.refused),
            poisoned: read(&st.poisoned),
            expired: read(&st.expired),
            duplicates: read(&st.duplicates),
        }
    }

    async fn close(&self) {
        let s = &self.shared;
        if s.closed.is_cancelled() {
            return;
        }
        // Stop reading first: nothing more is taken for an instance that is leaving.
        s.closed.cancel();
        let id = s.member.instance.to_string();
        let mut pipe = redis::pipe();
        pipe.cmd("DEL")
            .arg(s.key(&["presence", &id]))
            .ignore()
            .cmd("ZREM")
            .arg(s.key(&["instances"]))
            .arg(&id)
            .ignore();
        let mut con = s.cmd.clone();
        let _ =
            tokio::time::timeout(Duration::from_secs(2), pipe.query_async::<()>(&mut con)).await;
        if self.listening {
            let _ = tokio::time::timeout(Duration::from_secs(2), readers::release(s)).await;
        }
    }
}
