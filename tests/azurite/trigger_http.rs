//! The HTTP trigger endpoint over a real socket: every accepted shape, the handshakes, what
//! bad requests get, the token rules, the request timeout and concurrency limit, and events
//! for other storage accounts.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use ebbflow::codec::Encoding;
use ebbflow::config::{HttpTriggerSettings, QueueSettings, Settings};
use ebbflow::store::MemoryStore;
use ebbflow::store::QueueStore;
use ebbflow::{Context, Handler, HandlerError, Worker};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Nop;
impl Handler for Nop {
    type Message = String;
    async fn handle(&self, _: String, _: Context) -> Result<(), HandlerError> {
        Ok(())
    }
}

const TOKEN: &str = "a-long-enough-trigger-token";

async fn worker(token: bool) -> (ebbflow::worker::RunningWorker, String) {
    worker_with(token, Arc::new(MemoryStore::new()), |_| {}).await
}

/// A worker with the trigger endpoint on a free port, queue `orders` on `store`, and the
/// trigger settings tweaked by `tweak`; returns it and the endpoint's base URL.
async fn worker_with(
    token: bool,
    store: Arc<dyn QueueStore>,
    tweak: impl FnOnce(&mut HttpTriggerSettings),
) -> (ebbflow::worker::RunningWorker, String) {
    let mut s = Settings::default();
    s.triggers.http.enabled = true;
    s.triggers.http.bind = "127.0.0.1:0".parse().unwrap();
    s.triggers.http.max_body_bytes = ebbflow::config::MaxBodyBytes::of::<1024>();
    if token {
        s.triggers.http.token = Some(TOKEN.into());
    }
    tweak(&mut s.triggers.http);
    s.queues.insert("orders".into(), QueueSettings::default());
    s.queues.get_mut("orders").unwrap().encoding = Encoding::None;
    s.validate().unwrap();
    let w = Worker::new(s)
        .with_store(store)
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
        r#"[{"specversion":"1.0","type":"t","source":"/x","id":"1","data":{"queue":"orders"}}]"#,
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
    let (status, text) = post(&url, body, Some("wrong-token-of-some-length")).await;
    assert_eq!(status, 401);
    assert!(text.contains("wrong token"), "{text}");
    let (status, _) = post(&url, body, Some(&TOKEN[..TOKEN.len() - 1])).await;
    assert_eq!(status, 401, "a prefix of the token is not the token");
    let (status, _) = post(&url, body, Some(TOKEN)).await;
    assert_eq!(status, 202);
    // The scheme in any case.
    for scheme in ["bearer", "BEARER", "BeArEr"] {
        let r = reqwest::Client::new()
            .post(&url)
            .header("authorization", format!("{scheme} {TOKEN}"))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 202, "{scheme}");
    }
    // In the URL only when allowed: off by default, and the answer says how to send it.
    let (status, text) = post(&format!("{url}?token={TOKEN}"), body, None).await;
    assert_eq!(status, 401);
    assert!(
        text.contains("allow_query_token") && !text.contains(TOKEN),
        "{text}"
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(w.snapshot()[0].triggers, 4);
    w.shutdown().await;
    let (w, base) = worker_with(true, Arc::new(MemoryStore::new()), |h| {
        h.allow_query_token = true
    })
    .await;
    let (status, _) = post(&format!("{base}/trigger?token={TOKEN}"), body, None).await;
    assert_eq!(status, 202);
    let (status, _) = post(&format!("{base}/trigger?token=not-{TOKEN}"), body, None).await;
    assert_eq!(status, 401);
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(w.snapshot()[0].triggers, 1);
    w.shutdown().await;
}

/// Sends a POST whose headers promise `length` body bytes but only the first 10 arrive, and
/// leaves the connection open.
async fn stalled_post(base: &str, length: usize) -> tokio::net::TcpStream {
    let addr = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /trigger HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         content-length: {length}\r\n\r\n{{\"queue\":"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

/// The status line of the answer on `stream`.
async fn status_line(stream: &mut tokio::net::TcpStream) -> String {
    let mut buf = vec![0u8; 1024];
    let n = stream.read(&mut buf).await.unwrap();
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn slow_requests_time_out_and_requests_beyond_the_limit_are_shed() {
    let (w, base) = worker_with(false, Arc::new(MemoryStore::new()), |h| {
        h.request_timeout = Duration::from_millis(500);
        h.max_concurrent_requests = ebbflow::config::MaxConcurrentRequests::of::<2>();
    })
    .await;
    let url = format!("{base}/trigger");
    // Two requests whose bodies never finish hold both slots...
    let mut first = stalled_post(&base, 100).await;
    let mut second = stalled_post(&base, 100).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    // ...so a third is turned away at once, with a hint to retry.
    let r = reqwest::Client::new()
        .post(&url)
        .body(r#"{"queue":"orders"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    // The stalled ones get 408 at the timeout, freeing their slots.
    assert_eq!(
        status_line(&mut first).await,
        "HTTP/1.1 408 Request Timeout"
    );
    assert_eq!(
        status_line(&mut second).await,
        "HTTP/1.1 408 Request Timeout"
    );
    let (status, _) = post(&url, r#"{"queue":"orders"}"#, None).await;
    assert_eq!(status, 202);
    assert_eq!(w.snapshot()[0].triggers, 1);
    w.shutdown().await;
}

/// Callers without the token are refused as soon as their headers arrive, so stalled bodies of
/// theirs take no slot; `/healthz` answers even while authorised requests hold every slot.
#[tokio::test]
async fn unauthorised_callers_take_no_slot_and_healthz_is_never_shed() {
    let (w, base) = worker_with(true, Arc::new(MemoryStore::new()), |h| {
        h.request_timeout = Duration::from_secs(30);
        h.max_concurrent_requests = ebbflow::config::MaxConcurrentRequests::of::<2>();
    })
    .await;
    let url = format!("{base}/trigger");
    let mut strangers = Vec::new();
    for _ in 0..4 {
        let mut s = stalled_post(&base, 100).await;
        assert_eq!(status_line(&mut s).await, "HTTP/1.1 401 Unauthorized");
        strangers.push(s);
    }
    let (status, _) = post(&url, r#"{"queue":"orders"}"#, Some(TOKEN)).await;
    assert_eq!(status, 202, "the strangers hold no slot");
    // Two authorised requests that stall hold both slots: triggers are shed, health is not.
    let addr = base.trim_start_matches("http://");
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST /trigger HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {TOKEN}\r\n\
             content-length: 100\r\n\r\n{{"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        held.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, _) = post(&url, r#"{"queue":"orders"}"#, Some(TOKEN)).await;
    assert_eq!(status, 503);
    let health = reqwest::get(format!("{base}/healthz")).await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
    drop(held);
    w.shutdown().await;
}

/// A client that never finishes its request does not hold the worker's shutdown up: the drain
/// is clean (no handler was running) and the endpoint is cut off with it.
#[tokio::test]
async fn a_half_sent_request_does_not_hold_up_shutdown() {
    let (w, base) = worker(false).await;
    let addr = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"POST /trigger HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let report = tokio::time::timeout(Duration::from_secs(60), w.shutdown())
        .await
        .expect("the drain ends");
    assert!(report.clean, "{report:?}");
    assert_eq!(report.unreleased, 0);
}

/// An event for a queue the worker has no listener for is a 404 naming it and the queues the
/// worker has (not a silent 202 with nothing woken); the request's other events still wake
/// their queues. (Events for another account stay ignored, whatever queue they name: see the next test.)
#[tokio::test]
async fn an_event_for_a_queue_without_a_listener_is_a_404_naming_it_and_the_queues() {
    let (w, base) = worker(false).await;
    let url = format!("{base}/trigger");
    let (status, text) = post(&url, r#"{"queue":"ordres"}"#, None).await;
    assert_eq!(status, 404, "{text}");
    let body: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        body["unknown_queues"],
        serde_json::json!(["ordres"]),
        "{text}"
    );
    assert_eq!(body["queues"], serde_json::json!(["orders"]), "{text}");
    assert_eq!(body["woken"], 0, "{text}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("queue ordres") && error.contains("listens on orders"),
        "{error}"
    );
    // A batch: the known queue is woken, the unknown one named.
    let batch = r#"[{"queue":"orders"},{"queue":"emails"},{"queue":"emails"}]"#;
    let (status, text) = post(&url, batch, None).await;
    assert_eq!(status, 404, "{text}");
    let body: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        body["unknown_queues"],
        serde_json::json!(["emails"]),
        "{text}"
    );
    assert_eq!(body["woken"], 1, "{text}");
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(
        w.snapshot()[0].triggers,
        1,
        "the batch's orders event woke it"
    );
    w.shutdown().await;
}

/// On Azurite the worker knows its storage account, so events naming another are ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_for_another_storage_account_are_ignored() {
    let (w, base) = worker_with(false, common::azurite(), |_| {}).await;
    let url = format!("{base}/trigger");
    let cases = [
        (r#"{"account":"someoneelse","queue":"orders"}"#, 0),
        // Not ours to judge: no 404 for a queue of another account.
        (r#"{"account":"someoneelse","queue":"ordres"}"#, 0),
        (r#"{"account":"devstoreaccount1","queue":"orders"}"#, 1),
        (r#"{"account":"DEVSTOREACCOUNT1","queue":"orders"}"#, 1),
        (r#"{"queue":"orders"}"#, 1),
        (
            r#"[{"specversion":"1.0","type":"t","source":"/x","id":"1","data":{"account":"someoneelse","queue":"orders"}}]"#,
            0,
        ),
    ];
    for (body, woken) in cases {
        let (status, text) = post(&url, body, None).await;
        assert_eq!(status, 202, "{body}: {text}");
        assert!(
            text.contains(&format!("\"woken\":{woken}")),
            "{body}: {text}"
        );
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(w.snapshot()[0].triggers, 3);
    w.shutdown().await;
}
