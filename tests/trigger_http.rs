//! The HTTP trigger endpoint over a real socket: every accepted shape, the handshakes, and
//! what bad requests get.

use std::sync::Arc;
use std::time::Duration;

use ebbflow::codec::Encoding;
use ebbflow::config::{QueueSettings, Settings};
use ebbflow::store::memory::MemoryStore;
use ebbflow::{Context, Handler, HandlerError, Worker};

struct Nop;
impl Handler for Nop {
    type Message = String;
    async fn handle(&self, _: String, _: Context) -> Result<(), HandlerError> {
        Ok(())
    }
}

const TOKEN: &str = "a-long-enough-trigger-token";

async fn worker(token: bool) -> (ebbflow::worker::RunningWorker, String) {
    let mut s = Settings::default();
    s.triggers.http.enabled = true;
    s.triggers.http.bind = "127.0.0.1:0".parse().unwrap();
    s.triggers.http.max_body_bytes = 1024;
    if token {
        s.triggers.http.token = Some(TOKEN.into());
    }
    s.queues.insert(
        "orders".into(),
        QueueSettings {
            encoding: Encoding::None,
            ..Default::default()
        },
    );
    s.validate().unwrap();
    let w = Worker::new(s)
        .with_store(Arc::new(MemoryStore::new()))
        .handler("orders", Nop)
        .start()
        .await
        .unwrap();
    let base = format!("http://{}", w.trigger_addr().unwrap());
    (w, base)
}

async fn post(url: &str, body: &str, bearer: Option<&str>) -> (u16, String) {
    let mut req = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(t) = bearer {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test]
async fn accepts_plain_event_grid_and_cloudevents_and_wakes_the_queue() {
    let (w, base) = worker(false).await;
    let url = format!("{base}/trigger");
    let bodies = [
        r#"{"account":"acct","queue":"orders","payload_size":1}"#,
        r#"[{"id":"1","eventType":"Ebbflow.WorkDetected","subject":"q","eventTime":"2026-11-23T08:00:00Z","dataVersion":"1","data":{"queue":"orders"}}]"#,
        r#"{"specversion":"1.0","type":"ebbflow.work-detected","source":"/x","id":"1","data":{"queue":"orders"}}"#,
        r#"[{"specversion":"1.0","type":"t","source":"/x","id":"1","data":{"queue":"orders"}},{"queue":"emails"}]"#,
    ];
    for body in bodies {
        let (status, text) = post(&url, body, None).await;
        assert_eq!(status, 202, "{body}: {text}");
        assert!(text.contains("\"woken\":1"), "{body}: {text}");
    }
    assert_eq!(w.snapshot()[0].triggers, 4);
    let health = reqwest::get(format!("{base}/healthz")).await.unwrap();
    assert_eq!(health.text().await.unwrap(), "ok");
    w.shutdown().await;
}

#[tokio::test]
async fn answers_the_event_grid_and_cloudevents_handshakes() {
    let (w, base) = worker(false).await;
    let url = format!("{base}/trigger");
    let validation = r#"[{"id":"2","eventType":"Microsoft.EventGrid.SubscriptionValidationEvent","subject":"","eventTime":"2026-11-23T08:00:00Z","dataVersion":"1","data":{"validationCode":"512d38b6-c7b8-40c8-89fe-f46f9e9622b6"}}]"#;
    let (status, text) = post(&url, validation, None).await;
    assert_eq!(status, 200);
    assert_eq!(
        text,
        r#"{"validationResponse":"512d38b6-c7b8-40c8-89fe-f46f9e9622b6"}"#
    );
    let r = reqwest::Client::new()
        .request(reqwest::Method::OPTIONS, &url)
        .header("WebHook-Request-Origin", "eventemitter.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        r.headers()["webhook-allowed-origin"],
        "eventemitter.example.com"
    );
    w.shutdown().await;
}

#[tokio::test]
async fn bad_bodies_get_400_big_ones_413_and_nothing_panics() {
    let (w, base) = worker(false).await;
    let url = format!("{base}/trigger");
    let cases = [
        ("not json", "body is not JSON"),
        ("[]", "empty event array"),
        (r#"{"queue":"Bad_Name"}"#, "queue \"Bad_Name\""),
        (r#"{"nope":1}"#, "missing field `queue`"),
        (r#"[{"queue":"orders"}, 5]"#, "event 1: not a JSON object"),
        ("\u{0}\u{ff}", "body is not JSON"),
    ];
    for (body, why) in cases {
        let (status, text) = post(&url, body, None).await;
        assert_eq!(status, 400, "{body:?}: {text}");
        let reason: serde_json::Value = serde_json::from_str(&text).unwrap();
        let reason = reason["error"].as_str().unwrap();
        assert!(reason.contains(why), "{body:?}: {reason}");
    }
    let big = format!(r#"{{"queue":"orders","pad":"{}"}}"#, "x".repeat(2000));
    let (status, _) = post(&url, &big, None).await;
    assert_eq!(status, 413);
    // Still serving after all that.
    let (status, _) = post(&url, r#"{"queue":"orders"}"#, None).await;
    assert_eq!(status, 202);
    w.shutdown().await;
}

#[tokio::test]
async fn a_token_is_required_when_configured_and_never_echoed() {
    let (w, base) = worker(true).await;
    let url = format!("{base}/trigger");
    let body = r#"{"queue":"orders"}"#;
    let (status, text) = post(&url, body, None).await;
    assert_eq!(status, 401);
    assert!(!text.contains(TOKEN));
    let (status, _) = post(&url, body, Some("wrong-token-of-some-length")).await;
    assert_eq!(status, 401);
    let (status, _) = post(&url, body, Some(TOKEN)).await;
    assert_eq!(status, 202);
    let (status, _) = post(&format!("{url}?token={TOKEN}"), body, None).await;
    assert_eq!(status, 202);
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(w.snapshot()[0].triggers, 2);
    w.shutdown().await;
}

#[tokio::test]
async fn metrics_show_each_queues_counters_behind_the_token() {
    let (w, base) = worker(true).await;
    w.publisher("orders")
        .unwrap()
        .send_bytes(b"one", Default::default())
        .await
        .unwrap();
    let client = reqwest::Client::new();
    let mut text = String::new();
    for _ in 0..100 {
        let r = client
            .get(format!("{base}/metrics"))
            .header("authorization", format!("Bearer {TOKEN}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        text = r.text().await.unwrap();
        if text.contains("ebbflow_handled_total{queue=\"orders\"} 1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        text.contains("ebbflow_handled_total{queue=\"orders\"} 1"),
        "{text}"
    );
    assert!(text.contains("# TYPE ebbflow_active_tasks gauge"), "{text}");
    assert!(
        text.contains("ebbflow_active_tasks{queue=\"orders\"} 1"),
        "{text}"
    );
    let denied = client.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(denied.status().as_u16(), 401);
    w.shutdown().await;
}
