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
    // A token the worker does not take: said to be refused, not missing.
    let u = url.clone();
    let run = tokio::task::spawn_blocking(move || {
        ebbflow(
            &[
                "top",
                "--url",
                &u,
                "--count",
                "1",
                "--token",
                "not-the-token-0123",
            ],
            &[],
        )
    })
    .await
    .unwrap();
    assert_eq!(run.code, Some(2), "{}", run.both());
    assert!(run.stderr.contains("refused the token"), "{}", run.both());
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

/// A stand-in for a worker that restarts between polls: the first poll gets the dashboard's
/// JSON, the second a 503 web page (the worker is gone), the third JSON again with its counters
/// begun anew. `top` shows the failure in the frame and goes on, and gives no rate for the
/// interval of the restart (before: it exited 1 at the failed poll, and rates went negative).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_keeps_polling_through_a_restart_and_says_what_went_wrong() {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use std::sync::atomic::{AtomicU32, Ordering};

    let polls = Arc::new(AtomicU32::new(0));
    let seen = polls.clone();
    let doc = |handled: u64| {
        serde_json::json!({"version": 1, "queues": [{"queue": "orders", "depth": 1,
            "active_tasks": 1, "in_flight": 0, "handled": handled, "received": handled,
            "poisoned": 0}], "fleet": null})
        .to_string()
    };
    let app = axum::Router::new()
        .route(
            "/dashboard.json",
            axum::routing::get(move || {
                let n = seen.fetch_add(1, Ordering::SeqCst);
                async move {
                    match n {
                        0 => ([("content-type", "application/json")], doc(5000)).into_response(),
                        1 => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "<html><body>\u{1b}[2Jrestarting</body></html>",
                        )
                            .into_response(),
                        _ => ([("content-type", "application/json")], doc(10)).into_response(),
                    }
                }
            }),
        )
        .route(
            "/other/dashboard.json",
            axum::routing::get(|| async { "<!doctype html><h1>Welcome to nginx!</h1>" }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let u = url.clone();
    let run = tokio::task::spawn_blocking(move || {
        ebbflow(
            &["top", "--url", &u, "--count", "3", "--interval", "200ms"],
            &[],
        )
    })
    .await
    .unwrap();
    assert_eq!(run.code, Some(0), "{}", run.both());
    assert_eq!(polls.load(Ordering::SeqCst), 3);
    assert!(
        run.stdout.contains("(poll failed, retrying: ") && run.stdout.contains("HTTP 503"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("restarting"), "{}", run.stdout);
    assert!(!run.stdout.contains('\u{1b}'), "{}", run.stdout);
    let last = run.stdout.rsplit("QUEUE").next().unwrap();
    let orders: Vec<&str> = last.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(orders[4..6], ["-", "-"], "{last}");

    // A web server that is not a worker: its status and a short escaped excerpt, exit 1.
    let u = format!("{url}/other");
    let run =
        tokio::task::spawn_blocking(move || ebbflow(&["top", "--url", &u, "--count", "1"], &[]))
            .await
            .unwrap();
    assert_eq!(run.code, Some(1), "{}", run.both());
    assert!(
        run.stderr
            .contains("HTTP 200 OK but not the dashboard's JSON")
            && run.stderr.contains("Welcome to nginx"),
        "{}",
        run.both()
    );

    // Flags: a URL that is none, and no polls at all.
    let run = tokio::task::spawn_blocking(|| ebbflow(&["top", "--url", "notaurl"], &[]))
        .await
        .unwrap();
    assert_eq!(run.code, Some(2), "{}", run.both());
    assert!(run.stderr.contains("--url \"notaurl\""), "{}", run.both());
    let run =
        tokio::task::spawn_blocking(move || ebbflow(&["top", "--url", &url, "--count", "0"], &[]))
            .await
            .unwrap();
    assert_eq!(run.code, Some(2), "{}", run.both());
    assert!(run.stderr.contains("--count"), "{}", run.both());
}
