//! One trace across processes: this test process's `Publisher` sends through Azurite's
//! `orders` queue to the demo worker (spawned), and the command line sends too; all export to
//! the receiver in `main.rs`, and the spans join up by trace and parent.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{attribute, common, find, receiver};
use ebbflow::codec::Encoding;
use ebbflow::Publisher;

fn with_env(cmd: &mut Command, endpoint: &str, service: &str) {
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env(
            "EBBFLOW_CONFIG_DIR",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config"),
        )
        .env(
            "AZURE_STORAGE_CONNECTION_STRING",
            common::azurite_connection_string(),
        )
        .env("EBBFLOW__QUEUES__ORDERS__TRACE_CONTEXT", "true")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
        .env("OTEL_SERVICE_NAME", service)
        .env("OTEL_BSP_SCHEDULE_DELAY", "200")
        .env("RUST_LOG", "warn");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_runs_from_a_producers_send_to_the_handlers_span_in_another_process() {
    let (endpoint, received) = receiver().await;
    let store = common::azurite();
    let orders = store.queue("orders").unwrap();
    orders.create_if_missing().await.unwrap();
    // The demo's queue names are fixed: clear what an earlier run may have left.
    orders.clear().await.unwrap();

    // The producer: this process, exporting as "producer".
    let mut traces = ebbflow::observability::TracesSettings::default();
    traces.endpoint = Some(endpoint.clone());
    traces.protocol = Some(ebbflow::observability::traces::Protocol::HttpJson);
    traces.service_name = Some("producer".into());
    traces.filter = None;
    assert!(ebbflow::observability::logging::init_with_traces(
        ebbflow::observability::LogFormat::Text,
        "warn",
        &traces
    )
    .unwrap());
    let publisher = Publisher::new(orders.clone(), Encoding::Base64).with_trace_context(true);
    let id = publisher
        .send_json(&serde_json::json!({"id": 7, "amount_cents": 100}))
        .await
        .unwrap();
    ebbflow::observability::traces::flush();
    let text = orders.peek(1).await.unwrap()[0].text.clone();
    assert!(text.starts_with("traceparent: 00-"), "{text}");

    // The command line as a producer too: its `send emails` span has the store call under it.
    let mut cli = Command::new(common::bins::ebbflow_cli());
    with_env(&mut cli, &endpoint, "cli");
    let out = cli
        // --create: on a fresh Azurite no worker has made the demo's queues yet.
        .args(["enqueue", "emails", "--create", "hello from the cli"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut demo = Command::new(env!("CARGO_BIN_EXE_demo"));
    with_env(&mut demo, &endpoint, "worker");
    let child = demo
        .env("DEMO_RATE", "0")
        .env("DEMO_HANDLER_MS", "10")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The handler's span arrives within the exporter's 200 ms schedule once it ran; the worker
    // then stops, flushing the rest (the settle) on its drain.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while find(&received.lock().unwrap(), "worker", "charge order").is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no handler span within 60 s; got {:?}",
            received.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exited = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        exited.status.success(),
        "{}",
        String::from_utf8_lossy(&exited.stderr)
    );

    let spans = received.lock().unwrap().clone();
    let send = find(&spans, "producer", "send orders").expect("the producer's send span");
    let process = find(&spans, "worker", "process orders").expect("the worker's process span");
    let charge = find(&spans, "worker", "charge order").expect("the handler's span");
    let settle =
        find(&spans, "worker", "settle orders").expect("the settle span (flushed on drain)");
    let trace = send["traceId"].as_str().unwrap();
    assert_eq!(trace.len(), 32, "{send}");
    for span in [process, charge, settle] {
        assert_eq!(span["traceId"], trace, "{span}");
    }
    assert_eq!(process["parentSpanId"], send["spanId"], "{process}");
    assert_eq!(charge["parentSpanId"], process["spanId"], "{charge}");
    assert_eq!(settle["parentSpanId"], process["spanId"], "{settle}");
    // Kinds: producer 4, consumer 5, client 3 (OTLP's SpanKind numbers).
    assert_eq!(send["kind"], 4, "{send}");
    assert_eq!(process["kind"], 5, "{process}");
    assert_eq!(
        attribute(send, "messaging.system")["stringValue"],
        "azure_storage_queue"
    );
    assert_eq!(
        attribute(process, "messaging.operation.type")["stringValue"],
        "process"
    );
    assert_eq!(
        attribute(process, "messaging.destination.name")["stringValue"],
        "orders"
    );
    let message_id = attribute(process, "messaging.message.id")["stringValue"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        id.contains(&message_id),
        "enqueue printed {id}, process has {message_id}"
    );
    assert_eq!(
        attribute(send, "messaging.message.id")["stringValue"],
        message_id.as_str()
    );
    assert_eq!(
        attribute(settle, "messaging.operation.name")["stringValue"],
        "delete"
    );
    // The delete under the settle: the store's client span.
    assert!(
        spans.iter().any(|(s, span)| s == "worker"
            && span["name"] == "store.delete orders"
            && span["parentSpanId"] == settle["spanId"]),
        "no store.delete span under the settle: {spans:?}"
    );
    let cli_send = find(&spans, "cli", "send emails").expect("the command line's send span");
    assert!(
        spans.iter().any(|(s, span)| s == "cli"
            && span["name"] == "store.send emails"
            && span["parentSpanId"] == cli_send["spanId"]),
        "no store.send span under the command line's send: {spans:?}"
    );
}
