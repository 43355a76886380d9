//! The bus's delivery paths that `scripts/mutants bus` found untested: a competing event stays
//! with its live consumer until the claim timeout, and one left unacknowledged at close goes to
//! another instance at its next take-over sweep; events sent at most once reach their
//! addressees and never the sender; a work notice reaches one listener, and one passed on
//! through the work stream goes to another replica, never back; entries read before a crash
//! come again after the restart, more than one read's worth.

use crate::bus::{until_mark, Net, Ping, MARK};
use crate::common;

use std::time::Duration;

use common::redis::{member, redis_url, settings};
use ebbflow::bus::{
    Address, Bus, BusHandle, EnvelopeLimit, Filter, Inbound, Reach, Receipt, RedisBus, WorkNotice,
};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::{timeout, timeout_at, Instant};

/// `a` takes a competing event and holds it unacknowledged, alive: `b`, of the same role, does
/// not get it before the claim timeout, then takes it over.
async fn an_unacknowledged_event_stays_with_its_live_consumer_until_the_claim_timeout(
    net: Net,
    claim: Duration,
) {
    let (_a, mut sa) = net.join("a", "processor", claim).await;
    let (c, _sc) = net.join("c", "controller", claim).await;
    c.publish(&Ping { n: 1 }, Address::one_of("processor"))
        .await
        .unwrap();
    let held = timeout(Duration::from_secs(5), sa.next())
        .await
        .expect("a takes the event")
        .unwrap();
    let taken_at = Instant::now();
    assert!(held.needs_ack());
    let (_b, mut sb) = net.join("b", "processor", claim).await;
    let early = timeout_at(taken_at + claim * 3 / 4, sb.next()).await;
    assert!(
        early.is_err(),
        "taken from a live consumer before the claim timeout: {:?}",
        early.map(|p| p.map(|p| p.body))
    );
    let again = timeout(claim * 4, sb.next())
        .await
        .expect("b takes it over after the claim timeout")
        .unwrap();
    assert_eq!(again.body, Ping { n: 1 });
    again.ack().await.unwrap();
    drop(held);
}

mod embedded {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_unacknowledged_event_stays_with_its_live_consumer_until_the_claim_timeout() {
        super::an_unacknowledged_event_stays_with_its_live_consumer_until_the_claim_timeout(
            Net::memory(),
            Duration::from_secs(2),
        )
        .await;
    }
}

mod redis {
    use super::*;

    #[tokio::test]
    async fn an_unacknowledged_event_stays_with_its_live_consumer_until_the_claim_timeout() {
        super::an_unacknowledged_event_stays_with_its_live_consumer_until_the_claim_timeout(
            Net::redis(),
            Duration::from_secs(4),
        )
        .await;
    }

    /// An instance that closes with a competing event read and not handled releases it: another
    /// instance takes it at its next take-over sweep (every half claim timeout), not a whole
    /// claim timeout after it was read. (Unreleased, it could not go before the claim timeout.)
    #[tokio::test]
    async fn a_competing_event_unhandled_at_close_goes_to_another_before_the_claim_timeout() {
        let net = Net::redis();
        let claim = Duration::from_secs(6);
        let (a, mut sa) = net.join("a", "processor", claim).await;
        let (c, _sc) = net.join("c", "controller", claim).await;
        c.publish(&Ping { n: 1 }, Address::one_of("processor"))
            .await
            .unwrap();
        let held = timeout(Duration::from_secs(5), sa.next())
            .await
            .expect("a takes the event")
            .unwrap();
        let (_b, mut sb) = net.join("b", "processor", claim).await;
        let closed_at = Instant::now();
        a.close().await;
        drop(held);
        let again = timeout_at(closed_at + claim - Duration::from_millis(500), sb.next())
            .await
            .expect("b takes it over before the claim timeout: a released it at close")
            .unwrap();
        assert_eq!(again.body, Ping { n: 1 });
        again.ack().await.unwrap();
    }

    /// Sent at most once (pub/sub): each addressee gets the event once, the sender never (no
    /// carbon copy asked), an instance of another role only what is addressed to it.
    #[tokio::test]
    async fn events_sent_at_most_once_reach_their_addressees_and_never_the_sender() {
        let net = Net::redis();
        let claim = Duration::from_secs(30);
        let (a, mut sa) = net.join("a", "processor", claim).await;
        let (b, mut sb) = net.join("b", "processor", claim).await;
        let (c, mut sc) = net.join("c", "controller", claim).await;
        for (n, to) in [
            (1, Address::All),
            (2, Address::role("processor")),
            (3, Address::instance("b")),
            (4, Address::role("controller")),
        ] {
            a.publish_at_most_once(&Ping { n }, to).await.unwrap();
        }
        // The end markers at most once too: pub/sub keeps the server's order of publishes.
        c.publish_at_most_once(&Ping { n: MARK }, Address::All)
            .await
            .unwrap();
        b.publish_at_most_once(&Ping { n: MARK }, Address::instance("c"))
            .await
            .unwrap();
        let limit = Duration::from_secs(10);
        assert_eq!(
            until_mark(&mut sa, limit).await,
            Vec::<u32>::new(),
            "a, the sender"
        );
        assert_eq!(until_mark(&mut sb, limit).await, vec![1, 2, 3], "b");
        assert_eq!(until_mark(&mut sc, limit).await, vec![1, 4], "c");
    }

    /// The next work notice in `inbox` (other inbound items skipped), within 10 s.
    async fn next_work(inbox: &mut UnboundedReceiver<Inbound>) -> (WorkNotice, Option<Receipt>) {
        timeout(Duration::from_secs(10), async {
            loop {
                if let Some(Inbound::Work { notice, receipt }) = inbox.recv().await {
                    return (notice, receipt);
                }
            }
        })
        .await
        .expect("a work notice within 10 s")
    }

    /// Whether a work notice arrives in `inbox` within `wait`.
    async fn any_work(
        inbox: &mut UnboundedReceiver<Inbound>,
        wait: Duration,
    ) -> Option<WorkNotice> {
        timeout(wait, next_work(inbox)).await.ok().map(|(n, _)| n)
    }

    async fn listener(
        prefix: &str,
        id: &str,
        queue: &str,
        claim: Duration,
    ) -> (RedisBus, UnboundedReceiver<Inbound>) {
        let bus = RedisBus::connect(
            &settings(&redis_url(), prefix, "worker", claim),
            member(id, "worker"),
        )
        .await
        .unwrap();
        bus.listen_work(queue, Reach::One).await.unwrap();
        let inbox = bus.take_inbox().unwrap();
        (bus, inbox)
    }

    /// A queue's work notices with `reach = "one"`: a replica's own fresh notice comes to it
    /// with a receipt to acknowledge; one it passed on (more work than it could take, no other
    /// replica known) is handed back at once and another replica takes it at its take-over
    /// sweep; one another replica passed on is taken at once. Each once, nowhere twice.
    #[tokio::test]
    async fn a_work_notice_passed_on_through_the_stream_goes_to_another_replica_never_back() {
        let prefix = common::unique("work");
        let queue = "orders";
        let claim = Duration::from_millis(500);
        let notice = |from: &str, hops| WorkNotice {
            queue: queue.into(),
            from: Some(from.into()),
            messages: Some(3),
            hops,
        };
        let (x, mut xin) = listener(&prefix, "x", queue, claim).await;
        x.announce(&notice("x", 0)).await.unwrap();
        let (got, receipt) = next_work(&mut xin).await;
        assert_eq!(got, notice("x", 0), "its own fresh notice");
        x.ack(&receipt.expect("reach one: a receipt to acknowledge"))
            .await
            .unwrap();
        x.announce(&notice("x", 1)).await.unwrap();
        assert_eq!(
            any_work(&mut xin, claim * 4).await,
            None,
            "x took the notice it passed on"
        );
        let (y, mut yin) = listener(&prefix, "y", queue, claim).await;
        let (got, receipt) = next_work(&mut yin).await;
        assert_eq!(got, notice("x", 1), "y takes x's passed-on notice over");
        y.ack(&receipt.expect("a receipt")).await.unwrap();
        y.announce(&notice("y", 1)).await.unwrap();
        let (got, receipt) = next_work(&mut xin).await;
        assert_eq!(got, notice("y", 1), "x takes y's passed-on notice");
        x.ack(&receipt.expect("a receipt")).await.unwrap();
        assert_eq!(
            any_work(&mut yin, claim * 4).await,
            None,
            "y: nothing twice"
        );
        assert_eq!(any_work(&mut xin, claim).await, None, "x: nothing twice");
        x.close().await;
        y.close().await;
    }

    /// An instance that crashed after reading entries of its own stream and before
    /// acknowledging them gets them again when it starts with the same id: all of them, also
    /// when they are more than one read takes (here one entry a read), each once.
    #[tokio::test]
    async fn entries_read_before_a_crash_come_again_after_the_restart_more_than_a_read_s_worth() {
        let prefix = common::unique("crash");
        let mut s = settings(&redis_url(), &prefix, "processor", Duration::from_secs(30));
        s.max_envelope_size = EnvelopeLimit::new(64 << 20).unwrap();
        let join = |s: ebbflow::bus::BusSettings| async move {
            let bus = BusHandle::new(std::sync::Arc::new(
                RedisBus::connect(&s, member("p1", "processor"))
                    .await
                    .unwrap(),
            ));
            let sub = bus.subscribe::<Ping>(Filter::new());
            bus.start();
            (bus, sub)
        };
        let (p1, sub) = join(s.clone()).await;
        p1.close().await;
        drop((p1, sub));
        let sender = BusHandle::new(std::sync::Arc::new(
            RedisBus::connect_client(&s, member("c", "controller"))
                .await
                .unwrap(),
        ));
        for n in 0..4 {
            sender
                .publish(&Ping { n }, Address::instance("p1"))
                .await
                .unwrap();
        }
        // The crash: read through p1's group as p1, never acknowledged.
        let mut con = crate::redis_admin::admin(&redis_url()).await;
        let read: ::redis::streams::StreamReadReply = ::redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("p1")
            .arg("p1")
            .arg("COUNT")
            .arg(10)
            .arg("STREAMS")
            .arg(format!("{prefix}:fan:instance:p1"))
            .arg(">")
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!(read.keys.iter().map(|k| k.ids.len()).sum::<usize>(), 4);
        let (p1, mut sub) = join(s).await;
        sender
            .publish(&Ping { n: MARK }, Address::instance("p1"))
            .await
            .unwrap();
        assert_eq!(
            until_mark(&mut sub, Duration::from_secs(10)).await,
            vec![0, 1, 2, 3],
            "every entry read before the crash, once, in order"
        );
        p1.close().await;
    }
}
