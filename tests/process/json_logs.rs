//! JSON logs of the load-test worker as a real process against Azurite: with
//! `EBBFLOW_LOG_FORMAT=json` every line from start-up through handling to the drain, and a
//! start-up that fails, is one JSON object with the promised keys and no secret. The process
//! helpers are `ops_process`'s.

use crate::common;

use std::time::Duration;

use crate::ops_process::{free_port, loadtest, metrics, sigterm, wait_live};
use ebbflow::codec::Encoding;
use ebbflow::Publisher;

/// With `EBBFLOW_LOG_FORMAT=json` every line a worker writes, from start-up through handling
/// to the drain (and a start-up that fails), is one JSON object with timestamp, level,
/// target and fields, and no secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_parse_line_by_line() {
    let store = common::azurite();
    let name = common::unique("jsonlog");
    let queue = store.queue(&name).unwrap();
    queue.create_if_missing().await.unwrap();
    let publisher = Publisher::new(queue.clone(), Encoding::Base64);
    for n in 0..5 {
        publisher
            .send_bytes(format!("m{n}").as_bytes(), Default::default())
            .await
            .unwrap();
    }
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = loadtest(&name, port)
        .env("EBBFLOW_LOG_FORMAT", "json")
        .env("RUST_LOG", "info,ebbflow=debug")
        .spawn()
        .unwrap();
    wait_live(&base, &mut child).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while metrics(&base)
        .await
        .get("ebbflow_handled_total", &[("queue", &name)])
        != Some(5.0)
    {
        assert!(tokio::time::Instant::now() < deadline, "never handled 5");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    sigterm(&child);
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(0), "{text}");
    let lines = check_json_lines(&text);
    let messages: Vec<&str> = lines
        .iter()
        .filter_map(|l| l["fields"]["message"].as_str())
        .collect();
    for expected in [
        "ops endpoint listening (/healthz, /readyz, /metrics; dashboard: /, /dashboard.json, \
         /dashboard/poison/<queue>)",
        "worker started",
        "stop signal received",
        "final counts",
    ] {
        assert!(messages.contains(&expected), "{expected}: {messages:?}");
    }
    // Spans come along, outermost first: the listener's lines carry their queue there, once
    // (not again among the event's own fields, and no separate `span` key repeats it).
    let in_listener: Vec<_> = lines
        .iter()
        .filter(|l| {
            l["spans"].as_array().is_some_and(|spans| {
                spans
                    .iter()
                    .any(|s| s["name"] == "listener" && s["queue"] == name.as_str())
            })
        })
        .collect();
    assert!(!in_listener.is_empty(), "{text}");
    for line in in_listener {
        assert!(line.get("span").is_none(), "{line}");
        assert!(line["fields"].get("queue").is_none(), "{line}");
    }

    // A start-up that fails logs in JSON too, naming the key, and exits 2.
    let out = loadtest(&name, free_port())
        .env("EBBFLOW_LOG_FORMAT", "json")
        .env("EBBFLOW__QUEUES__ORDERS__BATCH_SIZE", "33")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "{text}");
    let lines = check_json_lines(&text);
    assert!(
        lines.iter().any(|l| l["level"] == "ERROR"
            && l["fields"]["error"]
                .as_str()
                .is_some_and(|e| e.contains("queues.orders.batch_size"))),
        "{text}"
    );

    // A log format the worker does not know: exit 2 naming the variable, in text.
    let out = loadtest(&name, free_port())
        .env("EBBFLOW_LOG_FORMAT", "xml")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("EBBFLOW_LOG_FORMAT"), "{text}");
}

/// Parses every line as one JSON object with the promised keys; no account key anywhere.
fn check_json_lines(text: &str) -> Vec<serde_json::Value> {
    assert!(!text.trim().is_empty(), "no log lines");
    assert!(
        !text.contains(ebbflow::store::DEV_KEY),
        "the account key leaked: {text}"
    );
    text.lines()
        .map(|line| {
            let v: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
            for key in ["timestamp", "level", "target", "fields"] {
                assert!(v.get(key).is_some(), "no {key}: {line}");
            }
            assert!(v["fields"].is_object(), "{line}");
            let ts = v["timestamp"].as_str().unwrap();
            assert!(
                time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339)
                    .is_ok(),
                "timestamp {ts:?} is not RFC 3339"
            );
            v
        })
        .collect()
}
