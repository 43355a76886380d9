//! The bus: every addressing mode and the competing consumers' re-delivery, on the embedded
//! broker (paused clock) and on a real Redis; Redis killed and restarted under live instances;
//! bad Redis settings refused at connect without showing the password.

use crate::common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::redis::{member, redis_url, settings, RedisServer};
use ebbflow::bus::MemoryBroker;
use ebbflow::bus::RedisBus;
use ebbflow::bus::{Address, Bus, BusHandle, Event, Filter, Health, Subscription};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ping {
    pub n: u32,
}

impl Event for Ping {
    const KIND: &'static str = "test.ping";
}

/// The end of a test's events.
pub const MARK: u32 = u32::MAX;

/// Where the instances of one test meet (used by the `delivery` module too).
pub enum Net {
    Memory(MemoryBroker),
    Redis {
        url: String,
        prefix: String,
        /// `bus.max_envelope_size` at its maximum: one entry per stream and read, so every
        /// read of a busy stream returns a full batch.
        one_entry_a_read: bool,
    },
}

impl Net {
    pub fn memory() -> Self {
        Self::Memory(MemoryBroker::new())
    }

    pub fn redis() -> Self {
        Self::on(&redis_url())
    }

    fn on(url: &str) -> Self {
        Self::Redis {
            url: url.to_string(),
            prefix: common::unique("bus"),
            one_entry_a_read: false,
        }
    }

    /// Redis, each read taking one entry of each stream.
    fn redis_one_entry_a_read() -> Self {
        Self::Redis {
            url: redis_url(),
            prefix: common::unique("bus"),
            one_entry_a_read: true,
        }
    }

    pub async fn transport(&self, id: &str, role: &str, claim: Duration) -> Arc<dyn Bus> {
        match self {
            Self::Memory(broker) => Arc::new(broker.connect(member(id, role), claim)),
            Self::Redis {
                url,
                prefix,
                one_entry_a_read,
            } => {
                let mut s = settings(url, prefix, role, claim);
                if *one_entry_a_read {
                    s.max_envelope_size = ebbflow::bus::EnvelopeLimit::new(64 << 20).unwrap();
                }
                Arc::new(RedisBus::connect(&s, member(id, role)).await.unwrap())
            }
        }
    }

    /// A started instance with one subscription to [`Ping`].
    pub async fn join(
        &self,
        id: &str,
        role: &str,
        claim: Duration,
    ) -> (BusHandle, Subscription<Ping>) {
        let bus = BusHandle::new(self.transport(id, role, claim).await);
        let sub = bus.subscribe::<Ping>(Filter::new());
        bus.start();
        (bus, sub)
    }
}

/// Pings until the marker, in arrival order. Panics when the marker does not come within
/// `limit` (or the subscription ends): a dead subscription must not pass for one that was sent
/// nothing.
pub async fn until_mark(sub: &mut Subscription<Ping>, limit: Duration) -> Vec<u32> {
    let mut seen = Vec::new();
    let marked = tokio::time::timeout(limit, async {
        while let Some(p) = sub.next().await {
            if p.body.n == MARK {
                return true;
            }
            seen.push(p.body.n);
        }
        false
    })
    .await;
    assert_eq!(
        marked,
        Ok(true),
        "the end marker did not arrive within {limit:?} (the subscription ended or is dead); \
         seen before: {seen:?}"
    );
    seen
}

/// The next ping's number, within 15 s: one that never comes fails here, not at the run's limit.
async fn next_ping(sub: &mut Subscription<Ping>) -> u32 {
    let next = tokio::time::timeout(Duration::from_secs(15), sub.next()).await;
    next.expect("no ping within 15 s")
        .expect("the subscription ended")
        .body
        .n
}

async fn fan_out_addressing(net: Net) {
    let claim = Duration::from_secs(30);
    let (a, mut sa) = net.join("a", "processor", claim).await;
    let (_b, mut sb) = net.join("b", "processor", claim).await;
    let (c, mut sc) = net.join("c", "controller", claim).await;
    let mut a_from_c = a.subscribe::<Ping>(Filter::new().from_instance("c"));
    let ping = |n| Ping { n };
    a.publish(&ping(1), Address::instance("b")).await.unwrap();
    a.publish(&ping(2), Address::All).await.unwrap();
    a.publish(&ping(3), Address::role("controller"))
        .await
        .unwrap();
    a.publish_cc(&ping(4), Address::role("controller"))
        .await
        .unwrap();
    a.publish_cc(&ping(5), Address::All).await.unwrap();
    a.publish(&ping(6), Address::role("processor"))
        .await
        .unwrap();
    a.publish_cc(&ping(7), Address::instance("c"))
        .await
        .unwrap();
    c.publish(&ping(8), Address::All).await.unwrap();
    c.publish_cc(&ping(MARK), Address::All).await.unwrap();
    let limit = Duration::from_secs(10);
    assert_eq!(until_mark(&mut sa, limit).await, vec![4, 5, 7, 8], "a");
    assert_eq!(until_mark(&mut sb, limit).await, vec![1, 2, 5, 6, 8], "b");
    assert_eq!(
        until_mark(&mut sc, limit).await,
        vec![2, 3, 4, 5, 7],
        "c, not its own 8"
    );
    // A filter on the sender: only c's events reach this subscription.
    assert_eq!(
        until_mark(&mut a_from_c, limit).await,
        vec![8],
        "a, from c only"
    );
}

async fn competing_consumers_share_without_duplicates(net: Net) {
    let claim = Duration::from_secs(2);
    let (_a, mut sa) = net.join("a", "processor", claim).await;
    let (_b, mut sb) = net.join("b", "processor", claim).await;
    let (c, mut sc) = net.join("c", "controller", claim).await;
    for n in 1..=20 {
        c.publish(&Ping { n }, Address::one_of("processor"))
            .await
            .unwrap();
    }
    let mut seen: BTreeMap<u32, Vec<&str>> = BTreeMap::new();
    let mut counts = [0usize; 2];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    // Everything acknowledged at once, and then some claim timeouts more: nothing may come back.
    while tokio::time::Instant::now() < deadline {
        tokio::select! {
            Some(p) = sa.next() => { p.ack().await.unwrap(); seen.entry(p.body.n).or_default().push("a"); counts[0] += 1; }
            Some(p) = sb.next() => { p.ack().await.unwrap(); seen.entry(p.body.n).or_default().push("b"); counts[1] += 1; }
            _ = tokio::time::sleep(claim * 3) => break,
        }
    }
    assert_eq!(seen.len(), 20, "every event handled: {seen:?}");
    assert!(
        seen.values().all(|who| who.len() == 1),
        "each exactly once: {seen:?}"
    );
    assert!(
        counts[0] > 0 && counts[1] > 0,
        "both consumers took some: {counts:?}"
    );
    // The controller is not of the role: nothing reached it.
    c.publish_cc(&Ping { n: MARK }, Address::instance("c"))
        .await
        .unwrap();
    assert!(until_mark(&mut sc, Duration::from_secs(5)).await.is_empty());
}

async fn competing_event_of_a_dead_instance_goes_to_another(net: Net) {
    let claim = Duration::from_millis(500);
    let (a, mut sa) = net.join("a", "processor", claim).await;
    let (c, _sc) = net.join("c", "controller", claim).await;
    c.publish(&Ping { n: 1 }, Address::one_of("processor"))
        .await
        .unwrap();
    let taken = tokio::time::timeout(Duration::from_secs(5), sa.next())
        .await
        .expect("a takes the event")
        .unwrap();
    assert!(taken.needs_ack());
    // a dies before acknowledging; b of the same role is there.
    let (_b, mut sb) = net.join("b", "processor", claim).await;
    drop(taken);
    drop(sa);
    a.transport().close().await;
    drop(a);
    let again = tokio::time::timeout(claim * 10, sb.next())
        .await
        .expect("b gets it after the claim timeout")
        .unwrap();
    assert_eq!(again.body, Ping { n: 1 });
    again.ack().await.unwrap();
    // Acknowledged: it does not come back.
    assert!(tokio::time::timeout(claim * 4, sb.next()).await.is_err());
}

/// Carbon copies keep the send order: a copy of an event to an address the sender does not
/// read must not overtake the sender's earlier events that reach it through its own streams
/// (the pattern repeated, so a copy handed straight to the inbox is caught every run; a copy
/// held while a read on the other connection was under way, then delivered after the entries
/// that read returned, was caught in about one run in twelve with one entry a read).
async fn carbon_copies_keep_the_send_order(net: Net) {
    let claim = Duration::from_secs(30);
    let (a, mut sa) = net.join("a", "processor", claim).await;
    let (_c, mut sc) = net.join("c", "controller", claim).await;
    let mut sent = Vec::new();
    for round in 0..100 {
        let n = round * 3;
        a.publish_cc(&Ping { n }, Address::All).await.unwrap();
        a.publish_cc(&Ping { n: n + 1 }, Address::instance("c"))
            .await
            .unwrap();
        a.publish_cc(&Ping { n: n + 2 }, Address::role("controller"))
            .await
            .unwrap();
        sent.extend([n, n + 1, n + 2]);
    }
    a.publish_cc(&Ping { n: MARK }, Address::All).await.unwrap();
    let limit = Duration::from_secs(10);
    assert_eq!(
        until_mark(&mut sa, limit).await,
        sent,
        "the sender's copies"
    );
    assert_eq!(until_mark(&mut sc, limit).await, sent, "the addressee");
}

mod embedded {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn fan_out_addressing() {
        super::fan_out_addressing(Net::memory()).await;
    }

    #[tokio::test(start_paused = true)]
    async fn carbon_copies_keep_the_send_order() {
        super::carbon_copies_keep_the_send_order(Net::memory()).await;
    }

    #[tokio::test(start_paused = true)]
    async fn competing_consumers_share_without_duplicates() {
        super::competing_consumers_share_without_duplicates(Net::memory()).await;
    }

    #[tokio::test(start_paused = true)]
    async fn competing_event_of_a_dead_instance_goes_to_another() {
        super::competing_event_of_a_dead_instance_goes_to_another(Net::memory()).await;
    }
}

mod redis {
    use super::*;

    #[tokio::test]
    async fn fan_out_addressing() {
        super::fan_out_addressing(Net::redis()).await;
    }

    #[tokio::test]
    async fn carbon_copies_keep_the_send_order() {
        super::carbon_copies_keep_the_send_order(Net::redis()).await;
    }

    /// Every read of the sender's streams a full batch: each carbon copy sent after the read's
    /// last entry waits for a later read (held back, not dropped, not moved ahead).
    #[tokio::test]
    async fn carbon_copies_keep_the_send_order_one_entry_a_read() {
        super::carbon_copies_keep_the_send_order(Net::redis_one_entry_a_read()).await;
    }

    #[tokio::test]
    async fn competing_consumers_share_without_duplicates() {
        super::competing_consumers_share_without_duplicates(Net::redis()).await;
    }

    #[tokio::test]
    async fn competing_event_of_a_dead_instance_goes_to_another() {
        super::competing_event_of_a_dead_instance_goes_to_another(Net::redis()).await;
    }

    /// Observers handle one event at a time: competing events read ahead behind a slow handler
    /// wait longer than the claim timeout and another instance takes them over, and a handler
    /// may itself run longer than it. Nothing fails, so each event is handled exactly once.
    #[tokio::test]
    async fn slow_observer_never_handles_an_event_another_took_over() {
        use ebbflow::bus::Received;
        let net = Net::redis();
        let claim = Duration::from_millis(400);
        let handled: Arc<std::sync::Mutex<Vec<(u32, &'static str)>>> = Arc::default();
        let mut buses = Vec::new();
        for (who, ms) in [("slow", 1000), ("fast", 10)] {
            let bus = BusHandle::new(net.transport(who, "processor", claim).await);
            let h = handled.clone();
            let _observer = bus.observe(Filter::new(), move |p: Received<Ping>| {
                let h = h.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    h.lock().unwrap().push((p.body.n, who));
                    Ok(())
                }
            });
            bus.start();
            buses.push(bus);
        }
        let (c, _sc) = net.join("c", "controller", claim).await;
        for n in 1..=8 {
            c.publish(&Ping { n }, Address::one_of("processor"))
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_secs(8)).await;
        let mut by_n: BTreeMap<u32, Vec<&str>> = BTreeMap::new();
        for (n, who) in handled.lock().unwrap().iter() {
            by_n.entry(*n).or_default().push(who);
        }
        assert_eq!(by_n.len(), 8, "every event handled: {by_n:?}");
        assert!(
            by_n.values().all(|who| who.len() == 1),
            "each exactly once: {by_n:?}"
        );
    }

    /// Redis killed under two live instances and started again, empty: both see the outage,
    /// reconnect on their own, and pub/sub and the competing group work again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn killed_and_restarted_redis_is_survived() {
        let mut server = RedisServer::start();
        let net = Net::on(&server.url());
        let claim = Duration::from_millis(500);
        let (a, mut sa) = net.join("a", "processor", claim).await;
        let (c, _sc) = net.join("c", "controller", claim).await;
        c.publish(&Ping { n: 1 }, Address::All).await.unwrap();
        assert_eq!(next_ping(&mut sa).await, 1);
        server.kill();
        common::wait_for("a sees the outage", Duration::from_secs(15), || {
            a.health() == Health::Down
        })
        .await;
        assert!(c.publish(&Ping { n: 2 }, Address::All).await.is_err());
        server.restart();
        common::wait_for("a reconnects", Duration::from_secs(15), || {
            a.health() == Health::Up
        })
        .await;
        // c may not have noticed yet: it reconnects on its next call.
        common::wait_for_async("c publishes again", Duration::from_secs(15), || {
            let c = c.clone();
            async move { c.publish(&Ping { n: 3 }, Address::All).await.is_ok() }
        })
        .await;
        assert_eq!(next_ping(&mut sa).await, 3, "subscription restored");
        // The role's stream and group are gone with the data; they are made again.
        common::wait_for_async("competing event delivered", Duration::from_secs(20), || {
            let c = c.clone();
            async move {
                c.publish(&Ping { n: 4 }, Address::one_of("processor"))
                    .await
                    .is_ok()
            }
        })
        .await;
        let got = tokio::time::timeout(Duration::from_secs(15), sa.next())
            .await
            .expect("competing group restored")
            .unwrap();
        assert_eq!(got.body.n, 4);
        got.ack().await.unwrap();
    }

    /// Redis restarted empty: a multicast published the moment it answers again, before the
    /// listening instance has read (its consumer groups went with the data), still reaches it.
    /// The billing scenario's act 4 lost its completion event this way: the group was made
    /// again at the stream's end, after the event.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_multicast_sent_right_after_an_empty_redis_restart_is_not_lost() {
        let mut server = RedisServer::start();
        let net = Net::on(&server.url());
        let claim = Duration::from_millis(500);
        let (a, mut sa) = net.join("a", "initiator", claim).await;
        let (c, _sc) = net.join("c", "controller", claim).await;
        c.publish(&Ping { n: 1 }, Address::All).await.unwrap();
        assert_eq!(next_ping(&mut sa).await, 1);
        server.kill();
        common::wait_for("a sees the outage", Duration::from_secs(15), || {
            a.health() == Health::Down
        })
        .await;
        server.restart();
        // At once: the publisher retries until Redis answers, while `a` is still backing off.
        common::wait_for_async("c publishes again", Duration::from_secs(15), || {
            let c = c.clone();
            async move { c.publish(&Ping { n: 2 }, Address::All).await.is_ok() }
        })
        .await;
        assert_eq!(
            next_ping(&mut sa).await,
            2,
            "the multicast sent right after the restart arrives"
        );
    }

    #[tokio::test]
    async fn wrong_url_or_password_fails_to_connect_naming_the_setting_not_the_secret() {
        let unused = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("redis://user:hunter2-secret@127.0.0.1:{unused}");
        let s = settings(&url, "x", "worker", Duration::from_secs(1));
        let err = RedisBus::connect(&s, member("i", "worker"))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("bus.url"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        // A real user with another password.
        let mut con = crate::redis_admin::admin(&redis_url()).await;
        let user = common::unique("user");
        let _: () = ::redis::cmd("ACL")
            .arg("SETUSER")
            .arg(&user)
            .arg("on")
            .arg(">right-password-1")
            .arg("~*")
            .arg("&*")
            .arg("+@all")
            .query_async(&mut con)
            .await
            .unwrap();
        let base = redis_url();
        let host = base.trim_start_matches("redis://");
        let wrong = format!("redis://{user}:wrong%40pass-secret@{host}");
        let s = settings(&wrong, "x", "worker", Duration::from_secs(1));
        let err = RedisBus::connect(&s, member("i", "worker"))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("bus.url"), "{err}");
        assert!(
            !err.contains("wrong%40pass") && !err.contains("wrong@pass"),
            "{err}"
        );
        let right = format!("redis://{user}:right-password-1@{host}");
        let s = settings(
            &right,
            &common::unique("acl"),
            "worker",
            Duration::from_secs(1),
        );
        let bus = RedisBus::connect(&s, member("i", "worker")).await.unwrap();
        assert_eq!(*bus.health().borrow(), Health::Up);
        bus.close().await;
        let _: () = ::redis::cmd("ACL")
            .arg("DELUSER")
            .arg(&user)
            .query_async(&mut con)
            .await
            .unwrap();
    }
}
