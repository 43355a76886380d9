//! The demo worker as a real process: start-up validation and SIGTERM in the middle of a batch.

// The SIGTERM test reports its counts on stdout, shown with --nocapture.
#![allow(clippy::print_stdout)]

use crate::common;

use std::process::{Command, Stdio};
use std::time::Duration;

use ebbflow::codec::Encoding;
use ebbflow::Publisher;

fn demo() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_demo"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env(
            "EBBFLOW_CONFIG_DIR",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config"),
        )
        .env("RUST_LOG", "info");
    cmd
}

fn all_output(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn batch_size_33_stops_the_worker_at_start_up_naming_the_key() {
    let out = demo()
        .env("EBBFLOW__QUEUES__ORDERS__BATCH_SIZE", "33")
        .output()
        .unwrap();
    let text = all_output(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("queues.orders.batch_size = 33: must be 1..=32"),
        "{text}"
    );
}

#[test]
fn a_bad_account_key_fails_start_up_without_printing_the_key() {
    let key = "QmFkS2V5Rm9yVGVzdHNPbmx5QmFkS2V5Rm9yVGVzdHM=";
    let cs = format!(
        "AccountName=devstoreaccount1;AccountKey={key};QueueEndpoint={}",
        common::azurite_url()
    );
    let out = demo()
        .env("AZURE_STORAGE_CONNECTION_STRING", &cs)
        .env("DEMO_RATE", "0")
        .output()
        .unwrap();
    let text = all_output(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("not authorized on queue"), "{text}");
    assert!(!text.contains(key), "the account key leaked: {text}");
    assert!(
        !text.contains("sig=") || text.contains("sig=<redacted>"),
        "{text}"
    );
}

/// A worker process with 3 handlers at a time (4 s each) and 12 messages waiting receives only
/// the 3 it can start (the other 9 stay visible: none waits in the worker for a slot). On
/// SIGTERM it exits 0 after finishing the 3, and the 9 are there at once, although the
/// visibility timeout is 5 minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_started_and_holds_only_what_it_can_start() {
    let store = common::azurite();
    let orders = store.queue("orders").unwrap();
    orders.create_if_missing().await.unwrap();
    // The demo's queue names are fixed: clear what an earlier run may have left.
    orders.clear().await.unwrap();
    let p = Publisher::new(orders.clone(), Encoding::Base64);
    for id in 1..=12u64 {
        p.send_json(&serde_json::json!({"id": id, "amount_cents": 100}))
            .await
            .unwrap();
    }
    let child = demo()
        .env(
            "AZURE_STORAGE_CONNECTION_STRING",
            common::azurite_connection_string(),
        )
        .env("DEMO_RATE", "0")
        .env("DEMO_HANDLER_MS", "4000")
        .env("EBBFLOW__QUEUES__ORDERS__SCALING__MAX_TASKS", "1")
        .env("EBBFLOW__QUEUES__ORDERS__CONCURRENCY", "3")
        .env("EBBFLOW__QUEUES__ORDERS__VISIBILITY_TIMEOUT", "5m")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // 3 received (invisible), 9 left visible: the worker holds only what it can start.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while orders.peek(32).await.unwrap().len() != 9 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "worker never took the batch"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let text = all_output(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("signal=\"SIGTERM\""), "{text}");
    let final_line = text
        .lines()
        .find(|l| l.contains("final counts") && l.contains("queue=orders"))
        .unwrap_or_else(|| panic!("no final counts: {text}"));
    assert!(final_line.contains("handled=3 "), "{final_line}");
    assert!(final_line.contains("received=3 "), "{final_line}");
    assert!(final_line.contains("released=0 "), "{final_line}");
    // Nothing lost: the 9 never received are visible right away; the 3 handled are gone.
    let back = orders.receive(32, Duration::from_secs(30)).await.unwrap();
    let lost = 12 - 3 - back.len().min(9);
    println!(
        "SIGTERM with 3 running: 3 handled, {} visible at once (never received); lost {lost}, \
         duplicates 0 (the handled 3 are deleted, the rest never left the queue)",
        back.len()
    );
    assert_eq!(back.len(), 9, "{text}");
    assert_eq!(orders.approximate_depth().await.unwrap(), 9);
}

/// A wrong `OTEL_*` variable stops the worker at start-up with exit code 2 and a line naming
/// the variable (before the fix the process printed nothing: the error came before any log
/// was installed).
#[test]
fn a_bad_otel_variable_stops_the_worker_naming_it() {
    let cases = [
        (
            vec![
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/xml"),
            ],
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ),
        (
            vec![
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/xml"),
            ],
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        ),
        (
            vec![("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "not a url")],
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        ),
    ];
    for (vars, named) in cases {
        let out = demo().envs(vars.clone()).output().unwrap();
        let text = all_output(&out);
        assert_eq!(out.status.code(), Some(2), "{vars:?}: {text}");
        assert!(text.contains(named), "{vars:?}: {text}");
    }
}
