//! `ebbflow top` against a worker running in this test (embedded store, ops endpoint on
//! 127.0.0.1): both queues and their figures from `/dashboard.json`, and the metrics token.

use std::sync::Arc;

use ebbflow::codec::Encoding;
use ebbflow::config::{QueueSettings, Settings};
use ebbflow::store::MemoryStore;
use ebbflow::{Context, Handler, HandlerError, Worker};

use crate::ebbflow;

struct Done;
impl Handler for Done {
    type Message = String;
    async fn handle(&self, _: String, _: Context) -> Result<(), HandlerError> {
        Ok(())
    }
}

const TOKEN: &str = "top-token-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_shows_each_queue_of_a_worker_and_needs_its_token() {
    let mut s = Settings::default();
    s.observability.bind = Some("127.0.0.1:0".parse().unwrap());
    s.observability.metrics_token = Some(TOKEN.to_string().try_into().unwrap());
    for q in ["orders", "emails"] {
        s.queues.insert(q.into(), QueueSettings::default());
        s.queues.get_mut(q).unwrap().encoding = Encoding::None;
    }
    let worker = Worker::new(s)
        .with_store(Arc::new(MemoryStore::new()))
        .handler("orders", Done)
        .handler("emails", Done)
        .start()
        .await
        .unwrap();
    let url = format!("http://{}", worker.ops_addr().unwrap());
    let publisher = worker.publisher("orders").unwrap();
    for _ in 0..3 {
        publisher
            .send_bytes(b"x", Default::default())
            .await
            .unwrap();
    }

    let (u, t) = (url.clone(), TOKEN);
    let run = tokio::task::spawn_blocking(move || {
        ebbflow(
            &["top", "--url", &u, "--count", "2", "--interval", "200ms"],
            &[("EBBFLOW_METRICS_TOKEN", t)],
        )
    })
    .await
    .unwrap();
    assert_eq!(run.code, Some(0), "{}", run.both());
    let frames: Vec<&str> = run
        .stdout
        .split("QUEUE")
        .filter(|f| !f.is_empty())
        .collect();
    assert_eq!(frames.len(), 2, "{}", run.stdout);
    for frame in frames {
        assert!(frame.contains("HANDLED/S"), "{frame}");
        let rows: Vec<&str> = frame
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().next().unwrap())
            .collect();
        assert_eq!(rows, ["emails", "orders"], "{frame}");
    }

    let u = url.clone();
    let run =
        tokio::task::spawn_blocking(move || ebbflow(&["top", "--url", &u, "--count", "1"], &[]))
            .await
            .unwrap();
    assert_eq!(run.code, Some(2), "{}", run.both());
    assert!(
        run.stderr.contains("--token or EBBFLOW_METRICS_TOKEN"),
        "{}",
        run.both()
    );
    assert!(!run.both().contains(TOKEN));
    worker.shutdown().await;
}

/// With the bus on, `top` prints the fleet after the queues: every live instance from the bus
/// presence (needs the redis-server `scripts/test` starts, `EBBFLOW_REDIS_URL`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_shows_the_fleet_with_the_bus_on() {
    use ebbflow::bus::Bounded;
    use ebbflow::bus::{BusKind, BusSettings, Name, RedisUrl};
    use std::time::Duration;

    let redis = std::env::var("EBBFLOW_REDIS_URL").unwrap_or_else(|_| {
        panic!("EBBFLOW_REDIS_URL is not set: this test needs the redis-server scripts/test starts")
    });
    let prefix = format!("top{}", std::process::id());
    let bus = |id: &str, role: &str| {
        let mut bus = BusSettings::default();
        bus.kind = BusKind::Redis;
        bus.url = Some(RedisUrl::try_from(redis.clone()).unwrap());
        bus.role = Name::new(role).unwrap();
        bus.instance_id = Some(Name::new(id).unwrap());
        bus.channel_prefix = Name::new(&prefix).unwrap();
        bus.pulse_interval = Bounded::new(Duration::from_millis(200)).unwrap();
        bus
    };
    let store = Arc::new(MemoryStore::new());
    let start = |id: &str, role: &str, ops: bool| {
        let mut s = Settings::default();
        s.bus = bus(id, role);
        if ops {
            s.observability.bind = Some("127.0.0.1:0".parse().unwrap());
        }
        s.queues.insert("orders".into(), QueueSettings::default());
        Worker::new(s)
            .with_store(store.clone())
            .handler("orders", Done)
            .start()
    };
    let front = start("top-front", "front", true).await.unwrap();
    let back = start("top-back", "back", false).await.unwrap();
    let url = format!("http://{}", front.ops_addr().unwrap());

    // Both presences are on the bus within a few pulses.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let fleet = loop {
        let u = url.clone();
        let run = tokio::task::spawn_blocking(move || {
            ebbflow(&["top", "--url", &u, "--count", "1"], &[])
        })
        .await
        .unwrap();
        assert_eq!(run.code, Some(0), "{}", run.both());
        let fleet = run.stdout.split("FLEET: ").nth(1).map(str::to_string);
        if fleet.as_deref().is_some_and(|f| f.starts_with("2 live")) {
            break fleet.unwrap();
        }
        assert!(std::time::Instant::now() < deadline, "{}", run.stdout);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Sorted by role: back, then front (this one, marked `*`); the columns after vary.
    let rows: Vec<Vec<&str>> = fleet
        .lines()
        .skip(2)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 2, "{fleet}");
    assert_eq!(rows[0][..2], ["top-back", "back"], "{fleet}");
    assert_eq!(rows[1][..3], ["top-front", "*", "front"], "{fleet}");
    back.shutdown().await;
    front.shutdown().await;
}
