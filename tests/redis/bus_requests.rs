//! Request and reply over the bus on a real redis-server, across two processes (the test binary
//! runs its own `responder_process` as the second): to one of a role and to an instance, a
//! responder's error, a timeout, and a late reply that is dropped.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use crate::durable::{base, join, Ping};
use common::redis::{member, redis_url};
use ebbflow::bus::RedisBus;
use ebbflow::bus::{Address, BusError, BusHandle, Event, Filter, Received, Request};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Totals {
    batch: u64,
}

impl Event for Totals {
    const KIND: &'static str = "test.totals";
}

impl Request for Totals {
    type Reply = u64;
}

/// The responder of [`request_and_reply_across_two_processes`], run as a child process of the
/// test binary.
#[tokio::test]
#[ignore = "run by request_and_reply_across_two_processes as its second process"]
async fn responder_process() {
    let Ok(prefix) = std::env::var("EBBFLOW_TEST_RESPONDER_PREFIX") else {
        return;
    };
    let s = base(&prefix, "controller", Duration::from_secs(5));
    let bus = BusHandle::new(Arc::new(
        RedisBus::connect(&s, member("responder-1", "controller"))
            .await
            .unwrap(),
    ));
    let _responder = bus.respond(Filter::new(), |r: Received<Totals>| async move {
        match r.body.batch {
            0 => Err("batch 0 does not exist".into()),
            1 => {
                tokio::time::sleep(Duration::from_millis(1_500)).await;
                Ok(100)
            }
            b => Ok(b * 100),
        }
    });
    let mut stop = bus.subscribe::<Ping>(Filter::new());
    bus.start();
    let _ = tokio::time::timeout(Duration::from_secs(60), stop.next()).await;
    bus.close().await;
}

/// Request and reply between two processes: to one of a role and to an instance, a responder's
/// error, a timeout with no responder, and a reply that arrives after its requester gave up
/// (dropped; the next request gets its own answer).
#[tokio::test]
async fn request_and_reply_across_two_processes() {
    let prefix = common::unique("request");
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "bus_requests::responder_process",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env("EBBFLOW_TEST_RESPONDER_PREFIX", &prefix)
        .env("EBBFLOW_REDIS_URL", redis_url())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let s = base(&prefix, "processor", Duration::from_secs(5));
    let (bus, _sub) = join(&s, "asker").await;
    let short = Duration::from_millis(500);
    // Until the child is up: its group on the role stream exists once it connected.
    let mut first = None;
    for _ in 0..60 {
        match bus
            .request(
                &Totals { batch: 7 },
                Address::instance("responder-1"),
                short,
            )
            .await
        {
            Ok(v) => {
                first = Some(v);
                break;
            }
            Err(BusError::Timeout { .. }) => continue,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(first, Some(700), "the child answered");
    let wait = Duration::from_secs(5);
    assert_eq!(
        bus.request(&Totals { batch: 3 }, Address::one_of("controller"), wait)
            .await
            .unwrap(),
        300
    );
    let err = bus
        .request(&Totals { batch: 0 }, Address::one_of("controller"), wait)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, BusError::Remote { from, error, .. } if from == "responder-1" && error.contains("batch 0")),
        "{err}"
    );
    let err = bus
        .request(&Totals { batch: 3 }, Address::one_of("nobody"), short)
        .await
        .unwrap_err();
    assert!(matches!(err, BusError::Timeout { .. }), "{err}");
    // The responder takes 1.5 s for batch 1: the requester gives up first.
    let err = bus
        .request(&Totals { batch: 1 }, Address::one_of("controller"), short)
        .await
        .unwrap_err();
    assert!(matches!(err, BusError::Timeout { .. }), "{err}");
    assert_eq!(
        bus.request(&Totals { batch: 4 }, Address::role("controller"), wait)
            .await
            .unwrap(),
        400,
        "the late reply to batch 1 is not taken for this one"
    );
    // A reply to an instance that went away: the requester closes before the answer.
    let (gone, _gs) = join(&s, "gone").await;
    let ask = gone.request(&Totals { batch: 1 }, Address::one_of("controller"), wait);
    let _ = tokio::time::timeout(Duration::from_millis(200), ask).await;
    gone.close().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        bus.request(&Totals { batch: 5 }, Address::one_of("controller"), wait)
            .await
            .unwrap(),
        500,
        "the responder went on"
    );
    bus.publish(&Ping { n: 0 }, Address::instance("responder-1"))
        .await
        .unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap();
    assert!(status.unwrap().success());
    bus.close().await;
}
