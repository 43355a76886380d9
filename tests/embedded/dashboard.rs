//! The dashboard on the ops endpoint, in process on the embedded store: the page, its JSON
//! behind the metrics token, and poison messages listed, shown and requeued (with the token,
//! never cross-site).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ebbflow::codec::Encoding;
use ebbflow::config::{QueueSettings, Settings};
use ebbflow::store::MemoryStore;
use ebbflow::store::QueueStore;
use ebbflow::{Context, Handler, HandlerError, Worker};
use serde_json::Value;

const TOKEN: &str = "dashboard-token-0123456789";

/// Poisons "bad" the first time it sees it; handles everything else (and "bad" after that).
#[derive(Default)]
struct Picky(Arc<AtomicU32>);
impl Handler for Picky {
    type Message = String;
    async fn handle(&self, text: String, _: Context) -> Result<(), HandlerError> {
        if text == "bad" && self.0.fetch_add(1, Ordering::SeqCst) == 0 {
            return Err(HandlerError::poison("order has no amount"));
        }
        Ok(())
    }
}

async fn call(
    method: &str,
    url: &str,
    token: Option<&str>,
    origin: Option<&str>,
    body: &str,
) -> (u16, String) {
    let client = reqwest::Client::new();
    let mut req = match method {
        "POST" => client
            .post(url)
            .header("content-type", "application/json")
            .body(body.to_string()),
        _ => client.get(url),
    };
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(o) = origin {
        req = req.header("origin", o);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn json(url: &str) -> Value {
    let (status, body) = call("GET", url, Some(TOKEN), None, "").await;
    assert_eq!(status, 200, "{url}: {body}");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_queues_and_requeues_a_poison_message_behind_the_token() {
    let mut s = Settings::default();
    s.observability.bind = Some("127.0.0.1:0".parse().unwrap());
    s.observability.metrics_token = Some(TOKEN.to_string().try_into().unwrap());
    for q in ["orders", "emails"] {
        s.queues.insert(q.into(), QueueSettings::default());
        s.queues.get_mut(q).unwrap().encoding = Encoding::None;
    }
    let store: Arc<dyn QueueStore> = Arc::new(MemoryStore::new());
    let seen = Arc::new(AtomicU32::new(0));
    let worker = Worker::new(s)
        .with_store(store.clone())
        .handler("orders", Picky(seen.clone()))
        .handler("emails", Picky::default())
        .start()
        .await
        .unwrap();
    let base = format!("http://{}", worker.ops_addr().unwrap());

    // The page needs no token (it holds no data) and loads nothing from elsewhere.
    for path in ["/", "/dashboard"] {
        let (status, page) = call("GET", &format!("{base}{path}"), None, None, "").await;
        assert_eq!(status, 200, "{path}");
        assert!(page.contains("dashboard.json"), "{path}");
        assert!(
            !page.contains("http://") && !page.contains("https://"),
            "external reference in {path}"
        );
    }
    let (status, body) = call("GET", &format!("{base}/dashboard.json"), None, None, "").await;
    assert_eq!(status, 401, "{body}");

    let orders = worker.publisher("orders").unwrap();
    orders.send_bytes(b"bad", Default::default()).await.unwrap();
    orders
        .send_bytes(b"good", Default::default())
        .await
        .unwrap();
    let state = loop {
        let state = json(&format!("{base}/dashboard.json")).await;
        let q = state["queues"]
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["queue"] == "orders")
            .unwrap()
            .clone();
        if q["poisoned"] == 1 && q["handled"] == 1 {
            break state;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let names: Vec<&str> = state["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["queue"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["emails", "orders"], "{state}");
    // No bus: no fleet.
    assert!(state["fleet"].is_null(), "{state}");
    let q = &state["queues"][1];
    assert_eq!(q["poison_queue"], "orders-poison", "{state}");
    assert!(
        q["active_tasks"].as_u64().is_some() && q["pickup_seconds_count"].as_u64() == Some(2),
        "{state}"
    );

    let list = json(&format!("{base}/dashboard/poison/orders")).await;
    let messages = list["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 1, "{list}");
    assert_eq!(messages[0]["body"], "bad", "{list}");
    assert_eq!(messages[0]["error"], "order has no amount", "{list}");
    let id = messages[0]["id"].as_str().unwrap().to_string();
    let (status, body) = call(
        "GET",
        &format!("{base}/dashboard/poison/nosuch"),
        Some(TOKEN),
        None,
        "",
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("nosuch"), "{body}");

    // A requeue: never from another site, never without the token.
    let requeue = format!("{base}/dashboard/poison/orders/requeue");
    let one = format!(r#"{{"ids":["{id}"]}}"#);
    let (status, body) = call(
        "POST",
        &requeue,
        Some(TOKEN),
        Some("http://evil.example"),
        &one,
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = call("POST", &requeue, None, Some(&base), &one).await;
    assert_eq!(status, 401, "{body}");
    // The token is checked before the body, and every error is JSON (newcomer pass item 10).
    let client = reqwest::Client::new();
    let plain = |token: Option<&str>, content_type: &str, body: &str| {
        let mut req = client
            .post(&requeue)
            .header("origin", &base)
            .header("content-type", content_type)
            .body(body.to_string());
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    for (token, content_type, body, expected) in [
        (None, "text/plain", one.as_str(), 401),
        (Some(TOKEN), "text/plain", one.as_str(), 415),
        (Some(TOKEN), "application/json", "{not json", 400),
    ] {
        let r = plain(token, content_type, body).await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        assert_eq!(status, expected, "{content_type} {body}: {text}");
        let error: Value =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
        assert!(error["error"].is_string(), "{text}");
    }
    // Browsers ask for /favicon.ico on every page: no 404 (a console error in Chromium).
    let r = client
        .get(format!("{base}/favicon.ico"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let (status, body) = call("POST", &requeue, Some(TOKEN), Some(&base), &one).await;
    assert_eq!(status, 200, "{body}");
    let report: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["requeued"][0]["id"], id.as_str(), "{body}");
    // Back on orders, handled this time.
    loop {
        let state = json(&format!("{base}/dashboard.json")).await;
        if state["queues"][1]["handled"] == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen.load(Ordering::SeqCst), 2);
    let list = json(&format!("{base}/dashboard/poison/orders")).await;
    assert_eq!(list["messages"].as_array().unwrap().len(), 0, "{list}");
    worker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_configured_the_dashboard_reads_but_never_requeues() {
    let mut s = Settings::default();
    s.observability.bind = Some("127.0.0.1:0".parse().unwrap());
    s.queues.insert("orders".into(), QueueSettings::default());
    s.queues.get_mut("orders").unwrap().encoding = Encoding::None;
    let worker = Worker::new(s)
        .with_store(Arc::new(MemoryStore::new()))
        .handler("orders", Picky::default())
        .start()
        .await
        .unwrap();
    let base = format!("http://{}", worker.ops_addr().unwrap());
    let (status, body) = call("GET", &format!("{base}/dashboard.json"), None, None, "").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = call(
        "POST",
        &format!("{base}/dashboard/poison/orders/requeue"),
        None,
        None,
        r#"{"all":true}"#,
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("observability.metrics_token"), "{body}");
    worker.shutdown().await;
}

/// The local demo: an ops endpoint bound to a loopback address without a metrics token still
/// lists poison messages (off loopback it would refuse them; see the server's unit test), but
/// never requeues without a token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_loopback_without_a_token_poison_messages_are_listed_but_not_requeued() {
    let mut s = Settings::default();
    s.observability.bind = Some("127.0.0.1:0".parse().unwrap());
    s.queues.insert("orders".into(), QueueSettings::default());
    s.queues.get_mut("orders").unwrap().encoding = Encoding::None;
    let worker = Worker::new(s)
        .with_store(Arc::new(MemoryStore::new()))
        .handler("orders", Picky::default())
        .start()
        .await
        .unwrap();
    let base = format!("http://{}", worker.ops_addr().unwrap());
    let orders = worker.publisher("orders").unwrap();
    orders.send_bytes(b"bad", Default::default()).await.unwrap();
    let list = format!("{base}/dashboard/poison/orders");
    let mut body = String::new();
    for _ in 0..200 {
        let (status, b) = call("GET", &list, None, None, "").await;
        assert_eq!(status, 200, "{b}");
        body = b;
        if body.contains("order has no amount") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(body.contains("order has no amount"), "{body}");
    let (status, body) = call(
        "POST",
        &format!("{list}/requeue"),
        None,
        None,
        r#"{"all":true}"#,
    )
    .await;
    assert_eq!(status, 403, "{body}");
    worker.shutdown().await;
}
