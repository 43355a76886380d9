//! The ops endpoint in process, on the embedded store: probes and metrics without the trigger
//! endpoint, the metrics token, readiness through start-up, a fatal error and a drain with a
//! long handler in flight.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use ebbflow::codec::Encoding;
use ebbflow::config::{QueueSettings, Settings};
use ebbflow::store::MemoryStore;
use ebbflow::store::{
    Layered, LayeredStore, Operation, Queue, QueueLayer, QueueStore, StoreError, StoreLayer,
};
use ebbflow::{Context, Handler, HandlerError, Worker};

/// Sleeps `ms` milliseconds as the message's text says.
struct Sleepy;
impl Handler for Sleepy {
    type Message = String;
    async fn handle(&self, text: String, _: Context) -> Result<(), HandlerError> {
        let ms: u64 = text.parse().unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(())
    }
}

const TOKEN: &str = "scrape-token-0123456789";

fn settings(token: bool) -> Settings {
    let mut s = Settings::default();
    s.observability.bind = Some("127.0.0.1:0".parse().unwrap());
    if token {
        s.observability.metrics_token = Some(TOKEN.to_string().try_into().unwrap());
    }
    s.worker.drain_timeout = Duration::from_secs(20);
    s.queues.insert("orders".into(), QueueSettings::default());
    s.queues.get_mut("orders").unwrap().encoding = Encoding::None;
    s
}

async fn get(url: &str, token: Option<&str>) -> (u16, String) {
    let client = reqwest::Client::new();
    let mut req = client.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// The value of the sample `line_start` (name and labels) in an exposition.
fn sample(text: &str, line_start: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(line_start)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_and_metrics_answer_without_the_trigger_endpoint() {
    let store: Arc<dyn QueueStore> = Arc::new(MemoryStore::new());
    let worker = Worker::new(settings(false))
        .with_store(store.clone())
        .handler("orders", Sleepy)
        .start()
        .await
        .unwrap();
    assert!(worker.trigger_addr().is_none());
    let base = format!("http://{}", worker.ops_addr().unwrap());
    assert_eq!(
        get(&format!("{base}/healthz"), None).await,
        (200, "ok".into())
    );
    let (status, body) = get(&format!("{base}/readyz"), None).await;
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["status"], "ready", "{body}");
    assert_eq!(json["checks"]["listeners"]["status"], "ready", "{body}");
    assert_eq!(json["checks"]["startup"]["status"], "ready", "{body}");

    // No depth probe ran yet: the depth is absent, not 0.
    let (_, text) = get(&format!("{base}/metrics"), None).await;
    assert!(text.contains("# TYPE ebbflow_depth gauge"), "{text}");
    assert_eq!(
        sample(&text, "ebbflow_depth{queue=\"orders\"}"),
        None,
        "{text}"
    );

    let publisher = worker.publisher("orders").unwrap();
    for _ in 0..5 {
        publisher
            .send_bytes(b"1", Default::default())
            .await
            .unwrap();
    }
    common::wait_for("5 handled", Duration::from_secs(10), || {
        worker.snapshot()[0].handled == 5
    })
    .await;
    let (status, text) = get(&format!("{base}/metrics"), None).await;
    assert_eq!(status, 200);
    assert_eq!(
        sample(&text, "ebbflow_handled_total{queue=\"orders\"}"),
        Some(5.0),
        "{text}"
    );
    assert!(text.contains("# TYPE ebbflow_active_tasks gauge"), "{text}");
    assert!(text.contains("# TYPE ebbflow_handled counter"), "{text}");
    // Histograms: every handled message ran its handler once and was picked up once.
    for family in [
        "ebbflow_handler_duration_seconds",
        "ebbflow_pickup_latency_seconds",
        "ebbflow_messages_per_receive",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} histogram")),
            "{text}"
        );
        assert!(
            text.contains(&format!("{family}_bucket{{le=\"+Inf\",queue=\"orders\"}}"))
                || text.contains(&format!("{family}_bucket{{queue=\"orders\",le=\"+Inf\"}}")),
            "{family}: {text}"
        );
    }
    assert_eq!(
        sample(
            &text,
            "ebbflow_handler_duration_seconds_count{queue=\"orders\"}"
        ),
        Some(5.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "ebbflow_pickup_latency_seconds_count{queue=\"orders\"}"
        ),
        Some(5.0),
        "{text}"
    );
    assert!(
        text.contains("# TYPE ebbflow_storage_call_duration_seconds histogram"),
        "{text}"
    );
    // The messaging conventions' names repeat the same series.
    let labels = "messaging_system=\"azure_storage_queue\",messaging_destination_name=\"orders\"";
    assert_eq!(
        sample(
            &text,
            &format!("messaging_process_duration_seconds_count{{{labels},messaging_operation_name=\"process\"}}")
        ),
        Some(5.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            &format!("messaging_client_consumed_messages_total{{{labels},messaging_operation_name=\"receive\"}}")
        ),
        Some(5.0),
        "{text}"
    );
    assert!(
        sample(
            &text,
            "messaging_client_operation_duration_seconds_count{queue=\"orders\",op=\"delete\"}"
        )
        .is_some_and(|c| c >= 5.0),
        "{text}"
    );
    // One send and one delete per message; receives may have batched them.
    for (op, least) in [("receive", 1.0), ("delete", 5.0), ("send", 5.0)] {
        let count = sample(
            &text,
            &format!("ebbflow_storage_call_duration_seconds_count{{queue=\"orders\",op=\"{op}\"}}"),
        );
        assert!(count.is_some_and(|c| c >= least), "{op}: {text}");
    }
    // Each publish in this process triggered the listener once.
    assert_eq!(
        sample(
            &text,
            "ebbflow_triggers_total{queue=\"orders\",source=\"publish\"}"
        ),
        Some(5.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "ebbflow_triggers_total{queue=\"orders\",source=\"http\"}"
        ),
        Some(0.0),
        "{text}"
    );
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
    let report = worker.shutdown().await;
    assert!(report.clean);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_token_guards_metrics_but_never_the_probes() {
    let worker = Worker::new(settings(true))
        .with_store(Arc::new(MemoryStore::new()))
        .handler("orders", Sleepy)
        .start()
        .await
        .unwrap();
    let base = format!("http://{}", worker.ops_addr().unwrap());
    let (status, body) = get(&format!("{base}/metrics"), None).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("missing token"), "{body}");
    let (status, _) = get(&format!("{base}/metrics"), Some("scrape-token-012345678X")).await;
    assert_eq!(status, 401);
    // A 401 names the scheme to use (RFC 9110).
    let refused = reqwest::get(format!("{base}/metrics")).await.unwrap();
    assert_eq!(
        refused
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok()),
        Some("Bearer")
    );
    let (status, text) = get(&format!("{base}/metrics"), Some(TOKEN)).await;
    assert_eq!(status, 200);
    assert!(text.contains("ebbflow_received_total"), "{text}");
    assert_eq!(get(&format!("{base}/healthz"), None).await.0, 200);
    assert_eq!(get(&format!("{base}/readyz"), None).await.0, 200);
    worker.shutdown().await;
}

/// A handler runs 3 s; the drain waits for it. Through that wait `/readyz` answers 503
/// "draining" while `/healthz` still answers 200, and the handler still finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_answers_503_from_the_moment_a_drain_begins() {
    let worker = Worker::new(settings(false))
        .with_store(Arc::new(MemoryStore::new()))
        .handler("orders", Sleepy)
        .start()
        .await
        .unwrap();
    let base = format!("http://{}", worker.ops_addr().unwrap());
    let publisher = worker.publisher("orders").unwrap();
    publisher
        .send_bytes(b"3000", Default::default())
        .await
        .unwrap();
    common::wait_for("the long handler runs", Duration::from_secs(10), || {
        worker.snapshot()[0].in_flight == 1
    })
    .await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(worker.run_until(async {
        let _ = stopped.await;
    }));
    assert_eq!(get(&format!("{base}/readyz"), None).await.0, 200);
    stop.send(()).unwrap();
    let mut saw_503 = false;
    for _ in 0..50 {
        let (status, body) = get(&format!("{base}/readyz"), None).await;
        if status == 503 {
            let json: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(json["reason"], "draining", "{body}");
            saw_503 = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(saw_503, "/readyz never answered 503 during the drain");
    assert!(!run.is_finished(), "the drain ended before the handler did");
    assert_eq!(get(&format!("{base}/healthz"), None).await.0, 200);
    let report = run.await.unwrap();
    assert!(report.clean);
    assert_eq!(report.queues[0].handled, 1);
    // The endpoint ends with the worker.
    assert!(reqwest::get(format!("{base}/healthz")).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_ops_address_fails_the_start_naming_the_key() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut s = settings(false);
    s.observability.bind = Some(taken.local_addr().unwrap());
    let err = Worker::new(s)
        .with_store(Arc::new(MemoryStore::new()))
        .handler("orders", Sleepy)
        .start()
        .await
        .expect_err("the start must fail");
    assert!(err.to_string().contains("observability.bind"), "{err}");
}

/// Fails every receive with a transient fault while switched on.
#[derive(Clone, Default)]
struct Outage(Arc<std::sync::atomic::AtomicBool>);

impl QueueLayer for Outage {
    async fn around<T: Send>(
        &self,
        queue: &str,
        operation: Operation,
        call: impl std::future::Future<Output = Result<T, StoreError>> + Send,
    ) -> Result<T, StoreError> {
        if operation == Operation::Receive && self.0.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::Transient {
                queue: queue.to_string(),
                detail: "503 ServerBusy".into(),
                source: None,
            });
        }
        call.await
    }
}

impl StoreLayer for Outage {
    fn wrap(&self, queue: Arc<dyn Queue>) -> Arc<dyn Queue> {
        Layered::wrap(queue, self.clone())
    }
}

/// At the default settings, an idle worker whose store stops answering is degraded at once
/// (reported, still ready), unready once the calls have failed for over a minute, and ready
/// again with the first answer; the probe costs no call of its own.
#[tokio::test(start_paused = true)]
async fn readiness_follows_the_store_calls_the_worker_makes_anyway() {
    let outage = Outage::default();
    let store = LayeredStore::wrap(Arc::new(MemoryStore::new()), outage.clone());
    let mut s = settings(false);
    s.observability.bind = None;
    let worker = Worker::new(s)
        .with_store(store)
        .handler("orders", Sleepy)
        .start()
        .await
        .unwrap();
    let readiness = worker.readiness();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        readiness.report().status,
        "ready",
        "{:?}",
        readiness.report()
    );
    let calls_before = worker.snapshot()[0].receive_calls;
    // Reports cost nothing: no receive is made for them.
    for _ in 0..100 {
        readiness.report();
    }
    assert_eq!(worker.snapshot()[0].receive_calls, calls_before);

    outage.0.store(true, std::sync::atomic::Ordering::SeqCst);
    common::wait_for("a failed receive", Duration::from_secs(60), || {
        worker.snapshot()[0].store_errors > 0
    })
    .await;
    let report = readiness.report();
    assert_eq!(report.status, "degraded", "{report:?}");
    assert!(report.is_ready());
    assert!(
        report
            .reason
            .as_deref()
            .unwrap()
            .contains("store: store calls failing"),
        "{report:?}"
    );
    tokio::time::sleep(Duration::from_secs(70)).await;
    let report = readiness.report();
    assert_eq!(report.status, "unready", "{report:?}");
    assert!(
        report.reason.as_deref().unwrap().contains("503 ServerBusy"),
        "{report:?}"
    );

    outage.0.store(false, std::sync::atomic::Ordering::SeqCst);
    common::wait_for("ready again", Duration::from_secs(120), || {
        readiness.report().status == "ready"
    })
    .await;
    worker.shutdown().await;
}
