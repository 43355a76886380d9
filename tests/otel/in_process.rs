//! Where a message's trace context travels besides the queue envelope, in this process on the
//! embedded store and the in-process bus: claim-check references, bus events, and batch calls
//! (links, not parents), with a retried and a poisoned message's status.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ebbflow::codec::Encoding;
use ebbflow::Publisher;
use serde_json::Value;

use crate::{attribute, receiver, status};

fn named<'a>(spans: &'a [(String, Value)], name: &str) -> Vec<&'a Value> {
    spans
        .iter()
        .filter(|(_, span)| span["name"] == name)
        .map(|(_, span)| span)
        .collect()
}

struct Big;
impl ebbflow::Handler for Big {
    type Message = Vec<u8>;
    async fn handle(
        &self,
        body: Vec<u8>,
        _: ebbflow::Context,
    ) -> Result<(), ebbflow::HandlerError> {
        let _own = tracing::info_span!("read big").entered();
        assert_eq!(body.len(), 200_000);
        Ok(())
    }
}

struct Rows;
impl ebbflow::handler::BatchHandler for Rows {
    type Message = String;
    async fn handle_batch(
        &self,
        batch: &mut ebbflow::handler::Batch<String>,
    ) -> Result<(), ebbflow::HandlerError> {
        let _own = tracing::info_span!("insert rows", rows = batch.len()).entered();
        Ok(())
    }
    fn batching(&self) -> ebbflow::handler::Batching {
        ebbflow::handler::Batching {
            max_messages: 3,
            max_wait: Duration::from_secs(5),
        }
    }
}

/// Fails its first try (a retry), then poisons the message.
struct Flaky(std::sync::atomic::AtomicU32);
impl ebbflow::Handler for Flaky {
    type Message = String;
    async fn handle(&self, _: String, _: ebbflow::Context) -> Result<(), ebbflow::HandlerError> {
        if self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
            Err(ebbflow::HandlerError::retry_after(
                "card declined",
                Duration::from_millis(50),
            ))
        } else {
            Err(ebbflow::HandlerError::poison("no such card"))
        }
    }
}

/// Keeps the text of each message it gets.
struct Keep(Arc<Mutex<Vec<String>>>);
impl ebbflow::Handler for Keep {
    type Message = String;
    async fn handle(&self, text: String, _: ebbflow::Context) -> Result<(), ebbflow::HandlerError> {
        self.0.lock().unwrap().push(text);
        Ok(())
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Ping(u32);
impl ebbflow::bus::Event for Ping {
    const KIND: &'static str = "test.ping";
}

/// Where a message's context travels besides the queue envelope (issue 23 item 2), and batch
/// calls after the conventions (links, not parents); in this process, on the embedded store
/// and the in-process bus.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_references_bus_events_and_batches_carry_the_trace() {
    use ebbflow::config::{QueueSettings, Settings};
    use ebbflow::store::QueueStore;

    let (endpoint, received) = receiver().await;
    let mut traces = ebbflow::observability::TracesSettings::default();
    traces.endpoint = Some(endpoint);
    traces.protocol = Some(ebbflow::observability::traces::Protocol::HttpJson);
    traces.service_name = Some("app".into());
    traces.filter = None;
    assert!(ebbflow::observability::logging::init_with_traces(
        ebbflow::observability::LogFormat::Text,
        "warn",
        &traces
    )
    .unwrap());

    // Three rows for the batch queue, each sent with the envelope under a span of its own.
    let store: Arc<dyn QueueStore> = Arc::new(ebbflow::store::MemoryStore::new());
    let rows = store.queue("rows").unwrap();
    rows.create_if_missing().await.unwrap();
    let rows_publisher = Publisher::new(rows, Encoding::Base64).with_trace_context(true);
    for i in 0..3 {
        let _row = tracing::info_span!(parent: None, "make row", i).entered();
        rows_publisher
            .send_bytes(format!("row {i}").as_bytes(), Default::default())
            .await
            .unwrap();
    }

    let mut settings = Settings::default();
    // `big` has no envelope: its context can only travel in the claim-check reference.
    let mut big = QueueSettings::default();
    big.idle_backoff.max = Duration::from_millis(200);
    settings.queues.insert("big".into(), big);
    let mut batch = QueueSettings::default();
    batch.trace_context = true;
    batch.concurrency = ebbflow::config::Concurrency::of::<4>();
    batch.idle_backoff.max = Duration::from_millis(200);
    settings.queues.insert("rows".into(), batch);
    let mut flaky = QueueSettings::default();
    flaky.idle_backoff.max = Duration::from_millis(200);
    flaky.max_dequeue_count = ebbflow::config::MaxDequeueCount::of::<5>();
    settings.queues.insert("flaky".into(), flaky);
    // `plain` has no `trace_context`, but its producer has: the worker takes the envelope off
    // all the same (the option controls sending only).
    let mut plain = QueueSettings::default();
    plain.idle_backoff.max = Duration::from_millis(200);
    settings.queues.insert("plain".into(), plain);
    let plain_seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let worker = ebbflow::Worker::new(settings)
        .with_store(store.clone())
        .with_blobs(Arc::new(ebbflow::store::MemoryBlobs::new("payloads")))
        .handler("big", Big)
        .batch_handler("rows", Rows)
        .handler("flaky", Flaky(Default::default()))
        .handler("plain", Keep(plain_seen.clone()))
        .start()
        .await
        .unwrap();
    {
        let _producing = tracing::info_span!(parent: None, "producing").entered();
        worker
            .publisher("big")
            .unwrap()
            .send_bytes(&vec![7u8; 200_000], Default::default())
            .await
            .unwrap();
        let plain = store.queue("plain").unwrap();
        plain.create_if_missing().await.unwrap();
        Publisher::new(plain, Encoding::Base64)
            .with_trace_context(true)
            .send_bytes(b"{\"order\": 7}", Default::default())
            .await
            .unwrap();
        worker
            .publisher("flaky")
            .unwrap()
            .send_bytes(b"order 9", Default::default())
            .await
            .unwrap();
    }

    // A bus event published under a span, observed on the same (embedded) bus.
    let member = ebbflow::bus::Member::new("one", "test").unwrap();
    let bus = ebbflow::bus::BusHandle::new(Arc::new(ebbflow::bus::MemoryBus::embedded(
        member,
        Duration::from_secs(30),
    )));
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    bus.observe::<Ping, _, _>(ebbflow::bus::Filter::new(), move |event| {
        let seen_tx = seen_tx.clone();
        async move {
            let _own = tracing::info_span!("observe ping").entered();
            let _ = seen_tx.send(event.body.0);
            Ok(())
        }
    });
    bus.start();
    {
        let _announcing = tracing::info_span!(parent: None, "announcing").entered();
        bus.publish_cc(&Ping(1), ebbflow::bus::Address::All)
            .await
            .unwrap();
    }
    let got = tokio::time::timeout(Duration::from_secs(30), seen.recv()).await;
    assert_eq!(got.unwrap(), Some(1));

    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let done: u64 = worker
            .snapshot()
            .iter()
            .map(|q| q.handled + q.poisoned)
            .sum();
        if done == 6 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "handled or poisoned {done} of 6"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    worker.shutdown().await;
    bus.close().await;
    ebbflow::observability::traces::flush();
    let spans = received.lock().unwrap().clone();

    // The claim check: `process big` continues `send big` through the reference alone.
    let send = named(&spans, "send big");
    let process = named(&spans, "process big");
    assert_eq!((send.len(), process.len()), (1, 1), "{spans:?}");
    assert_eq!(process[0]["traceId"], send[0]["traceId"], "{spans:?}");
    assert_eq!(process[0]["parentSpanId"], send[0]["spanId"], "{spans:?}");
    let read = named(&spans, "read big");
    assert_eq!(read[0]["parentSpanId"], process[0]["spanId"], "{spans:?}");

    // The batch: one `process rows` per message (each the child of its row's send), and one
    // for the call, a root linked to each of them, holding the handler's own span.
    let rows_spans = named(&spans, "process rows");
    let (calls, messages): (Vec<&Value>, Vec<&Value>) = rows_spans
        .iter()
        .partition(|s| !attribute(s, "messaging.batch.message_count").is_null());
    assert_eq!((calls.len(), messages.len()), (1, 3), "{spans:?}");
    let call = calls[0];
    // OTLP/JSON writes 64-bit integers as strings.
    let count = &attribute(call, "messaging.batch.message_count")["intValue"];
    assert!(count == "3" || count == 3, "{call}");
    assert!(
        call["parentSpanId"].as_str().unwrap_or_default().is_empty(),
        "{call}"
    );
    let sends = named(&spans, "send rows");
    assert_eq!(sends.len(), 3);
    let mut linked: Vec<String> = call["links"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| l["spanId"].as_str().unwrap().to_string())
        .collect();
    let mut expected: Vec<String> = messages
        .iter()
        .map(|m| m["spanId"].as_str().unwrap().to_string())
        .collect();
    linked.sort();
    expected.sort();
    assert_eq!(linked, expected, "{call}");
    for m in &messages {
        assert!(
            sends.iter().any(|s| s["spanId"] == m["parentSpanId"]),
            "{m}"
        );
    }
    let insert = named(&spans, "insert rows");
    assert_eq!(insert[0]["parentSpanId"], call["spanId"], "{spans:?}");

    // The bus event: `process test.ping` continues the publisher's span.
    let announcing = named(&spans, "announcing");
    let observed = named(&spans, "process test.ping");
    assert_eq!(observed.len(), 1, "{spans:?}");
    assert_eq!(observed[0]["traceId"], announcing[0]["traceId"]);
    assert_eq!(observed[0]["parentSpanId"], announcing[0]["spanId"]);
    assert_eq!(
        attribute(observed[0], "messaging.system")["stringValue"],
        "ebbflow_bus"
    );
    let own = named(&spans, "observe ping");
    assert_eq!(own[0]["parentSpanId"], observed[0]["spanId"]);

    // A failure shows as one (issue 23, newcomer pass): the retry's and the poison's `process`
    // and `settle` spans have the error status and `error.type`; a success has neither.
    let flaky = named(&spans, "process flaky");
    let settles = named(&spans, "settle flaky");
    assert_eq!((flaky.len(), settles.len()), (2, 2), "{spans:?}");
    for span in flaky.iter().chain(&settles) {
        let (code, _) = status(span);
        assert_eq!(code, 2, "not an error: {span}");
        let kind = attribute(span, "error.type")["stringValue"].as_str();
        assert!(matches!(kind, Some("retry" | "rejected")), "{span}");
    }
    let poisoned = settles
        .iter()
        .find(|s| attribute(s, "messaging.operation.name")["stringValue"] == "poison")
        .expect("the poison settle");
    assert_eq!(attribute(poisoned, "error.type")["stringValue"], "rejected");
    assert!(status(poisoned).1.contains("no such card"), "{poisoned}");
    let retried = settles
        .iter()
        .find(|s| attribute(s, "messaging.operation.name")["stringValue"] == "retry")
        .expect("the retry settle");
    assert!(status(retried).1.contains("card declined"), "{retried}");
    assert_eq!(status(process[0]).0, 0, "{}", process[0]);
    assert!(attribute(process[0], "error.type").is_null());

    // No attribute says where the span was made (always src/codec/spans.rs), on which thread,
    // or how long it was busy or idle.
    for (_, span) in &spans {
        for key in [
            "code.file.path",
            "code.filepath",
            "thread.id",
            "thread.name",
            "busy_ns",
            "idle_ns",
        ] {
            assert!(attribute(span, key).is_null(), "{key} on {span}");
        }
    }

    // The envelope came off on a queue without the option, and the trace goes on.
    assert_eq!(*plain_seen.lock().unwrap(), [r#"{"order": 7}"#]);
    let (send, process) = (named(&spans, "send plain"), named(&spans, "process plain"));
    assert_eq!((send.len(), process.len()), (1, 1), "{spans:?}");
    assert_eq!(process[0]["parentSpanId"], send[0]["spanId"], "{spans:?}");
}
