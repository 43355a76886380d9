//! The bus's durable delivery on a real redis-server: fan-out events kept for an instance that
//! restarts with the same id (exactly once each), fan-out entries taken by a read that failed
//! read again, competing events that always fail moved to the
//! poison stream and requeued, 12,000 competing events waiting for a first consumer, a drained
//! instance that takes nothing more, and bounded envelopes. Signed envelopes are in
//! `bus_signing`, request and reply in `bus_requests`; both use this module's helpers.

use crate::common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::redis::{member, redis_url, settings};
use ebbflow::bus::MaxDeliveries;
use ebbflow::bus::RedisBus;
use ebbflow::bus::{
    Address, BusError, BusHandle, BusSettings, Envelope, Event, Filter, Received, Subscription,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Ping {
    pub(crate) n: u32,
}

impl Event for Ping {
    const KIND: &'static str = "test.ping";
}

pub(crate) fn base(prefix: &str, role: &str, claim: Duration) -> BusSettings {
    settings(&redis_url(), prefix, role, claim)
}

pub(crate) async fn join(s: &BusSettings, id: &str) -> (BusHandle, Subscription<Ping>) {
    let bus = BusHandle::new(Arc::new(
        RedisBus::connect(s, member(id, s.role.as_str()))
            .await
            .unwrap(),
    ));
    let sub = bus.subscribe::<Ping>(Filter::new());
    bus.start();
    (bus, sub)
}

pub(crate) async fn client(s: &BusSettings, id: &str) -> BusHandle {
    BusHandle::new(Arc::new(
        RedisBus::connect_client(s, member(id, s.role.as_str()))
            .await
            .unwrap(),
    ))
}

/// Everything that arrives within `quiet` of the previous one (after a first within 10 s).
pub(crate) async fn drain(sub: &mut Subscription<Ping>, quiet: Duration) -> Vec<u32> {
    let mut got = Vec::new();
    let mut wait = Duration::from_secs(10);
    while let Ok(Some(p)) = tokio::time::timeout(wait, sub.next()).await {
        p.ack().await.unwrap();
        got.push(p.body.n);
        wait = quiet;
    }
    got
}

pub(crate) async fn redis_con() -> redis::aio::MultiplexedConnection {
    crate::redis_admin::admin(&redis_url()).await
}

/// An instance stopped for 5 s and started again with the same id gets every multicast, role
/// and unicast event sent meanwhile, each exactly once (a publish retried with the same event id
/// included), and nothing it had already received.
#[tokio::test]
async fn an_instance_restarted_with_its_id_gets_every_event_sent_while_away_exactly_once() {
    let prefix = common::unique("durable");
    let claim = Duration::from_secs(30);
    let p = base(&prefix, "processor", claim);
    let c = base(&prefix, "controller", claim);
    let sender = client(&c, "c").await;
    let (p1, mut sub) = join(&p, "p1").await;
    sender.publish(&Ping { n: 1 }, Address::All).await.unwrap();
    assert_eq!(drain(&mut sub, Duration::from_millis(500)).await, vec![1]);
    p1.close().await;
    drop((p1, sub));
    let mut sent = Vec::new();
    for n in 10..20 {
        let to = match n % 3 {
            0 => Address::All,
            1 => Address::role("processor"),
            _ => Address::instance("p1"),
        };
        sender.publish(&Ping { n }, to).await.unwrap();
        sent.push(n);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // A publish retried after an answer was lost: the same envelope twice.
    let twice = Envelope::new(
        Ping::KIND,
        sender.member(),
        Address::All,
        serde_json::json!({"n": 20}),
    );
    sender.transport().send(&twice).await.unwrap();
    sender.transport().send(&twice).await.unwrap();
    sent.push(20);
    // Not for it: another role, another instance, sent at most once while it was away.
    sender
        .publish(&Ping { n: 99 }, Address::role("controller"))
        .await
        .unwrap();
    sender
        .publish(&Ping { n: 98 }, Address::instance("p2"))
        .await
        .unwrap();
    sender
        .publish_at_most_once(&Ping { n: 97 }, Address::All)
        .await
        .unwrap();
    let (p1, mut sub) = join(&p, "p1").await;
    let mut got = drain(&mut sub, Duration::from_secs(2)).await;
    got.sort_unstable();
    assert_eq!(got, sent, "every event sent while away, each once");
    // And live delivery goes on.
    sender
        .publish(&Ping { n: 21 }, Address::role("processor"))
        .await
        .unwrap();
    assert_eq!(drain(&mut sub, Duration::from_millis(500)).await, vec![21]);
    assert!(p1.transport().counters().duplicates >= 1);
    p1.close().await;
}

/// Instance `a` (role `initiator`) and a client `c` that sends multicasts, under `prefix`, once
/// a first multicast (1) has reached `a`: `a`'s reader then waits for a nudge.
async fn a_reading_multicasts(prefix: &str) -> (BusHandle, BusHandle, Subscription<Ping>) {
    let claim = Duration::from_secs(30);
    let sender = client(&base(prefix, "controller", claim), "c").await;
    let (a, mut sub) = join(&base(prefix, "initiator", claim), "a").await;
    sender.publish(&Ping { n: 1 }, Address::All).await.unwrap();
    assert_eq!(drain(&mut sub, Duration::from_millis(500)).await, vec![1]);
    (sender, a, sub)
}

/// One read covers all of an instance's streams. When one of them has lost its group (a Redis
/// restarted empty, an expired stream) the read fails, yet the streams read before it in the
/// same call have already moved their new entries into this instance's pending list: those
/// entries are read again from there, not lost. (A Redis restart under load lost a multicast
/// this way when a group made again by the take-over sweep let the read get halfway.)
#[tokio::test]
async fn a_multicast_read_beside_a_stream_that_lost_its_group_is_not_lost() {
    let prefix = common::unique("lostgroup");
    let (sender, a, mut sub) = a_reading_multicasts(&prefix).await;
    // The reader now waits for a nudge. Its own stream (read after `fan:all`) goes, group and
    // all, and a multicast follows at once: the next read takes it from `fan:all`, then fails.
    let mut con = redis_con().await;
    let _: i64 = redis::cmd("DEL")
        .arg(format!("{prefix}:fan:instance:a"))
        .query_async(&mut con)
        .await
        .unwrap();
    sender.publish(&Ping { n: 2 }, Address::All).await.unwrap();
    assert_eq!(
        drain(&mut sub, Duration::from_millis(500)).await,
        vec![2],
        "the multicast read by the failed call arrives, once"
    );
    a.close().await;
}

/// The same for a read that fails for any other reason (here a stream of the instance's that is
/// no stream at all, `WRONGTYPE`, standing in for a reply lost with its connection): the
/// multicast the failed call moved into this instance's pending list comes once the read
/// works again.
#[tokio::test]
async fn a_multicast_taken_by_a_read_that_failed_otherwise_is_not_lost() {
    let prefix = common::unique("failedread");
    let (sender, a, mut sub) = a_reading_multicasts(&prefix).await;
    let mut con = redis_con().await;
    let own = format!("{prefix}:fan:instance:a");
    let all = format!("{prefix}:fan:all");
    let _: () = redis::pipe()
        .cmd("DEL")
        .arg(&own)
        .ignore()
        .cmd("SET")
        .arg(&own)
        .arg("not a stream")
        .ignore()
        .query_async(&mut con)
        .await
        .unwrap();
    sender.publish(&Ping { n: 2 }, Address::All).await.unwrap();
    // The failed read took it from `fan:all`: it waits in this instance's pending list.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (pending, ..): (u64, redis::Value, redis::Value, redis::Value) = redis::cmd("XPENDING")
            .arg(&all)
            .arg("a")
            .query_async(&mut con)
            .await
            .unwrap();
        if pending > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no read took the multicast within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(300), sub.next())
            .await
            .is_err(),
        "nothing arrives while the reads fail"
    );
    let _: () = redis::pipe()
        .cmd("DEL")
        .arg(&own)
        .ignore()
        .cmd("XGROUP")
        .arg("CREATE")
        .arg(&own)
        .arg("a")
        .arg("$")
        .arg("MKSTREAM")
        .ignore()
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(
        drain(&mut sub, Duration::from_secs(3)).await,
        vec![2],
        "the multicast read by the failed call arrives, once"
    );
    a.close().await;
}

/// A competing event whose handler always fails is delivered `bus.max_deliveries` times, then
/// lands in the poison stream with the handler's error; requeued, it is delivered again.
#[tokio::test]
async fn a_competing_event_that_always_fails_lands_in_the_poison_stream() {
    let prefix = common::unique("poison");
    let mut p = base(&prefix, "processor", Duration::from_millis(300));
    p.max_deliveries = MaxDeliveries::new(3).unwrap();
    let bus = BusHandle::new(Arc::new(
        RedisBus::connect(&p, member("p1", "processor"))
            .await
            .unwrap(),
    ));
    let runs = Arc::new(AtomicU32::new(0));
    let r = runs.clone();
    let _observer = bus.observe(Filter::new(), move |e: Received<Ping>| {
        let r = r.clone();
        async move {
            r.fetch_add(1, Ordering::SeqCst);
            Err(format!("cannot handle ping {}", e.body.n).into())
        }
    });
    bus.start();
    bus.publish(&Ping { n: 7 }, Address::one_of("processor"))
        .await
        .unwrap();
    let transport = bus.transport();
    common::wait_for_async("the event is poisoned", Duration::from_secs(20), || {
        let t = transport.clone();
        async move { !t.poison_list(10).await.unwrap().is_empty() }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        runs.load(Ordering::SeqCst),
        3,
        "delivered max_deliveries times"
    );
    let list = transport.poison_list(10).await.unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    let entry = &list[0];
    assert_eq!(entry.deliveries, 3);
    assert!(entry.reason.contains("cannot handle ping 7"), "{entry:?}");
    assert!(entry.stream.ends_with(":group:processor"), "{entry:?}");
    assert_eq!(transport.poison_show(&entry.id).await.unwrap(), *entry);
    assert!(matches!(
        transport.poison_show("1-1").await,
        Err(BusError::NotFound(_))
    ));
    // Requeued from another process (the CLI's client connection).
    let admin = client(&p, "cli").await;
    admin.transport().poison_requeue(&entry.id).await.unwrap();
    common::wait_for(
        "the requeued event is delivered again",
        Duration::from_secs(10),
        || runs.load(Ordering::SeqCst) >= 4,
    )
    .await;
    common::wait_for_async("poisoned again", Duration::from_secs(20), || {
        let t = transport.clone();
        async move { t.poison_list(10).await.unwrap().len() == 1 }
    })
    .await;
    assert_eq!(transport.counters().poisoned, 2);
    bus.close().await;
}

/// 12,000 events to one instance of a role while none runs: every one reaches the first that
/// starts (the stream is bounded by `bus.max_backlog`, an error to the publisher, not trimmed).
/// Sent by 16 tasks at once and acknowledged as they come: one round trip after another, the
/// 24,000 calls took this test from 10 s to over 100 s on a loaded machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twelve_thousand_competing_events_with_no_consumer_all_arrive() {
    let prefix = common::unique("backlog");
    let claim = Duration::from_secs(30);
    let sender = client(&base(&prefix, "controller", claim), "c").await;
    let mut sends = tokio::task::JoinSet::new();
    for part in 0..16 {
        let sender = sender.clone();
        sends.spawn(async move {
            for n in (part..12_000).step_by(16) {
                sender
                    .publish(&Ping { n }, Address::one_of("processor"))
                    .await
                    .unwrap();
            }
        });
    }
    while let Some(sent) = sends.join_next().await {
        sent.unwrap();
    }
    let (p1, mut sub) = join(&base(&prefix, "processor", claim), "p1").await;
    let mut got = Vec::new();
    let mut acks = tokio::task::JoinSet::new();
    let mut wait = Duration::from_secs(10);
    while let Ok(Some(p)) = tokio::time::timeout(wait, sub.next()).await {
        got.push(p.body.n);
        acks.spawn(async move { p.ack().await.unwrap() });
        wait = Duration::from_secs(3);
    }
    while let Some(acked) = acks.join_next().await {
        acked.unwrap();
    }
    got.sort_unstable();
    got.dedup();
    assert_eq!(got.len(), 12_000);
    p1.close().await;
}

/// A competing stream holds at most `bus.max_backlog` entries: beyond, publishing fails.
#[tokio::test]
async fn a_full_competing_stream_refuses_the_publisher() {
    let prefix = common::unique("full");
    let mut s = base(&prefix, "controller", Duration::from_secs(30));
    s.max_backlog = ebbflow::bus::MaxBacklog::new(3).unwrap();
    let sender = client(&s, "c").await;
    for n in 0..3 {
        sender
            .publish(&Ping { n }, Address::one_of("processor"))
            .await
            .unwrap();
    }
    let err = sender
        .publish(&Ping { n: 3 }, Address::one_of("processor"))
        .await
        .unwrap_err();
    assert!(matches!(err, BusError::Full { limit: 3, .. }), "{err}");
    assert!(err.to_string().contains("bus.max_backlog"), "{err}");
}

/// An instance that drained takes nothing published after it stopped: the other instance of
/// the role gets it at once, not after the claim timeout.
#[tokio::test]
async fn a_drained_instance_takes_no_event_published_after_it_stopped() {
    let prefix = common::unique("drained");
    let claim = Duration::from_secs(30);
    let p = base(&prefix, "processor", claim);
    let (a, _sa) = join(&p, "a").await;
    let (_b, mut sb) = join(&p, "b").await;
    a.close().await;
    let sender = client(&base(&prefix, "controller", claim), "c").await;
    for n in 0..5 {
        sender
            .publish(&Ping { n }, Address::one_of("processor"))
            .await
            .unwrap();
    }
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        let mut got = Vec::new();
        while got.len() < 5 {
            let p = sb.next().await.unwrap();
            p.ack().await.unwrap();
            got.push(p.body.n);
        }
        got
    })
    .await
    .expect("b gets every event well within the claim timeout");
    assert_eq!(got.len(), 5);
}

/// Envelopes over `bus.max_envelope_size` are refused on publish; one written to a stream by
/// anything else is moved to the poison stream unread, and the reader goes on.
#[tokio::test]
async fn an_oversized_envelope_costs_a_poison_entry_and_nothing_else() {
    let prefix = common::unique("oversized");
    let mut p = base(&prefix, "processor", Duration::from_secs(30));
    p.max_envelope_size = ebbflow::bus::EnvelopeLimit::new(64 * 1024).unwrap();
    let (bus, mut sub) = join(&p, "p1").await;
    let big = "x".repeat(100 * 1024);
    #[derive(Serialize, Deserialize)]
    struct Big {
        text: String,
    }
    impl Event for Big {
        const KIND: &'static str = "test.big";
    }
    let err = bus
        .publish(&Big { text: big.clone() }, Address::one_of("processor"))
        .await
        .unwrap_err();
    assert!(matches!(err, BusError::TooLarge { .. }), "{err}");
    // Written by something else: 4 MiB on the competing stream and on the fan-out stream.
    let huge = "y".repeat(4 * 1024 * 1024);
    let mut con = redis_con().await;
    for key in ["group:processor", "fan:all"] {
        let _: String = redis::cmd("XADD")
            .arg(format!("{prefix}:{key}"))
            .arg("*")
            .arg("envelope")
            .arg(&huge)
            .query_async(&mut con)
            .await
            .unwrap();
    }
    bus.publish(&Ping { n: 1 }, Address::one_of("processor"))
        .await
        .unwrap();
    bus.publish_cc(&Ping { n: 2 }, Address::All).await.unwrap();
    let mut got = drain(&mut sub, Duration::from_secs(1)).await;
    got.sort_unstable();
    assert_eq!(got, vec![1, 2]);
    let poison = bus.transport().poison_list(10).await.unwrap();
    assert_eq!(poison.len(), 2, "{poison:?}");
    for entry in &poison {
        assert!(entry.reason.contains("bus.max_envelope_size"), "{entry:?}");
        assert!(entry.envelope.is_none(), "not kept");
        assert!(entry.size >= 4 * 1024 * 1024);
    }
    assert!(bus.transport().poison_requeue(&poison[0].id).await.is_err());
    let len: u64 = redis::cmd("XLEN")
        .arg(format!("{prefix}:group:processor"))
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(len, 0, "acknowledged and deleted: never reclaimed");
    assert_eq!(
        bus.transport().counters().poisoned,
        2,
        "each entry moved to the poison stream unread is counted"
    );
    bus.close().await;
}
