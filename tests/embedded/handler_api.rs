//! The handler API beyond one trait impl: middleware layers around handlers, on the embedded
//! store under tokio's paused clock.

use crate::common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ebbflow::codec::Encoding;
use ebbflow::config::{QueueSettings, Settings};
use ebbflow::handler::{Job, Layer, Next};
use ebbflow::store::QueueStore;
use ebbflow::{Context, Handler, HandlerError, Publisher, Worker};

fn settings(queues: &[&str]) -> Settings {
    let mut s = Settings::default();
    for q in queues {
        s.queues.insert(q.to_string(), QueueSettings::default());
    }
    s.validate().unwrap();
    s
}

async fn publisher(store: &Arc<dyn QueueStore>, queue: &str) -> Publisher {
    let q = store.queue(queue).unwrap();
    q.create_if_missing().await.unwrap();
    Publisher::new(q, Encoding::Base64)
}

type Trail = Arc<Mutex<Vec<String>>>;

/// Notes its name on the way in and out.
struct Tag(&'static str, Trail);

impl Layer for Tag {
    async fn call(&self, job: Job, next: Next) -> Result<(), HandlerError> {
        let queue = job.ctx().queue().to_string();
        self.1
            .lock()
            .unwrap()
            .push(format!("{queue}: {} in", self.0));
        let result = next.run(job).await;
        self.1
            .lock()
            .unwrap()
            .push(format!("{queue}: {} out", self.0));
        result
    }
}

/// Releases messages whose text is "later", without running the rest of the stack.
struct Later;

impl Layer for Later {
    async fn call(&self, job: Job, next: Next) -> Result<(), HandlerError> {
        if job.bytes() == b"later" {
            return Err(HandlerError::release(Duration::from_secs(3600)));
        }
        next.run(job).await
    }
}

struct Note(Trail);

impl Handler for Note {
    type Message = String;
    async fn handle(&self, text: String, ctx: Context) -> Result<(), HandlerError> {
        self.0
            .lock()
            .unwrap()
            .push(format!("{}: handler {text}", ctx.queue()));
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn worker_wide_layers_wrap_queue_layers_around_the_handler() {
    let store = common::memory();
    let (a, b) = (common::unique("layers-a"), common::unique("layers-b"));
    publisher(&store, &a)
        .await
        .send_bytes(b"one", Default::default())
        .await
        .unwrap();
    publisher(&store, &b)
        .await
        .send_bytes(b"two", Default::default())
        .await
        .unwrap();
    let trail = Trail::default();
    let worker = Worker::new(settings(&[&a, &b]))
        .with_store(store.clone())
        .layer(Tag("outer", trail.clone()))
        .layer(Tag("middle", trail.clone()))
        .layer_for(&a, Tag("a-only", trail.clone()))
        .handler(&a, Note(trail.clone()))
        .handler(&b, Note(trail.clone()))
        .start()
        .await
        .unwrap();
    common::wait_for("both handled", Duration::from_secs(10), || {
        worker.snapshot().iter().all(|q| q.handled == 1)
    })
    .await;
    worker.shutdown().await;
    let trail = trail.lock().unwrap().clone();
    let of = |queue: &str| -> Vec<String> {
        trail
            .iter()
            .filter_map(|l| l.strip_prefix(&format!("{queue}: ")))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(
        of(&a),
        [
            "outer in",
            "middle in",
            "a-only in",
            "handler one",
            "a-only out",
            "middle out",
            "outer out"
        ]
    );
    assert_eq!(
        of(&b),
        [
            "outer in",
            "middle in",
            "handler two",
            "middle out",
            "outer out"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_layer_that_releases_counts_a_release_not_a_failure() {
    let store = common::memory();
    let queue = common::unique("layers-release");
    let p = publisher(&store, &queue).await;
    p.send_bytes(b"later", Default::default()).await.unwrap();
    p.send_bytes(b"now", Default::default()).await.unwrap();
    let trail = Trail::default();
    let worker = Worker::new(settings(&[&queue]))
        .with_store(store.clone())
        .layer_for(&queue, Later)
        .handler(&queue, Note(trail.clone()))
        .start()
        .await
        .unwrap();
    common::wait_for("one handled, one released", Duration::from_secs(10), || {
        let q = &worker.snapshot()[0];
        q.handled == 1 && q.released == 1
    })
    .await;
    let report = worker.shutdown().await;
    let q = &report.queues[0];
    assert_eq!((q.retried, q.poisoned), (0, 0));
    assert_eq!(*trail.lock().unwrap(), [format!("{queue}: handler now")]);
}

#[tokio::test(start_paused = true)]
async fn a_layer_for_an_unknown_queue_is_a_start_up_error_naming_it() {
    let store = common::memory();
    let queue = common::unique("layers-known");
    let err = Worker::new(settings(&[&queue]))
        .with_store(store)
        .layer_for("ordrs", Later)
        .handler(&queue, Note(Trail::default()))
        .start()
        .await
        .expect_err("a start-up error");
    let text = err.to_string();
    assert!(
        text.contains("ordrs") && text.contains("[queues.ordrs]"),
        "{text}"
    );
}

/// Records batch sizes; poisons messages "n" divisible by 10, releases those divisible by 7
/// (not by 10), and fails (retries) those divisible by 11 on their first delivery.
#[derive(Clone, Default)]
struct Rows {
    sizes: Arc<Mutex<Vec<usize>>>,
    handled: Arc<Mutex<Vec<u32>>>,
}

impl ebbflow::handler::BatchHandler for Rows {
    type Message = ebbflow::Json<u32>;

    async fn handle_batch(
        &self,
        batch: &mut ebbflow::handler::Batch<ebbflow::Json<u32>>,
    ) -> Result<(), HandlerError> {
        self.sizes.lock().unwrap().push(batch.len());
        let mut marks = Vec::new();
        for (i, (ebbflow::Json(n), ctx)) in batch.iter().enumerate() {
            if n % 10 == 0 {
                marks.push((i, "poison"));
            } else if n % 7 == 0 {
                marks.push((i, "release"));
            } else if n % 11 == 0 && ctx.dequeue_count() == 1 {
                marks.push((i, "retry"));
            } else {
                self.handled.lock().unwrap().push(*n);
            }
        }
        for (i, what) in marks {
            match what {
                "poison" => batch.poison(i, "a row no retry can fix"),
                "release" => batch.release(i, Duration::from_secs(3600)),
                _ => batch.retry(i, "the row's database shard is down"),
            }
        }
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn a_hundred_messages_reach_a_batch_handler_in_batches_with_per_message_outcomes() {
    let store = common::memory();
    let queue = common::unique("batches");
    let p = publisher(&store, &queue).await;
    for n in 1..=100u32 {
        p.send_json(&n).await.unwrap();
    }
    let rows = Rows::default();
    let mut s = settings(&[&queue]);
    s.queues.get_mut(&queue).unwrap().retry_delay = Duration::from_secs(1);
    let worker = Worker::new(s)
        .with_store(store.clone())
        .batch_handler(&queue, rows.clone())
        .start()
        .await
        .unwrap();
    // 10 poisoned (10, 20 .. 100), 13 released (7, 14 .. 98 but not 70), 77 handled, of which
    // 11, 22 .. 99 but not 77 failed once first.
    common::wait_for("every message settled", Duration::from_secs(60), || {
        let q = &worker.snapshot()[0];
        q.handled == 77 && q.poisoned == 10 && q.released == 13
    })
    .await;
    let report = worker.shutdown().await;
    let q = &report.queues[0];
    assert_eq!(q.retried, 8, "11, 22, 33, 44, 55, 66, 88, 99 failed once");
    assert_eq!(q.panics, 0);
    let sizes = rows.sizes.lock().unwrap().clone();
    assert!(sizes.iter().any(|&n| n > 1), "batches: {sizes:?}");
    assert_eq!(q.batches as usize, sizes.len());
    let mut handled = rows.handled.lock().unwrap().clone();
    handled.sort();
    handled.dedup();
    assert_eq!(handled.len(), 77, "each handled once");
    let poison = store.queue(&format!("{queue}-poison")).unwrap();
    assert_eq!(poison.approximate_depth().await.unwrap(), 10);
}

#[tokio::test(start_paused = true)]
async fn a_function_handler_shares_state_through_a_captured_arc() {
    let store = common::memory();
    let queue = common::unique("fn-handler");
    let p = publisher(&store, &queue).await;
    for text in ["a", "b", "c"] {
        p.send_bytes(text.as_bytes(), Default::default())
            .await
            .unwrap();
    }
    let seen: Trail = Trail::default();
    let state = seen.clone();
    let worker = Worker::new(settings(&[&queue]))
        .with_store(store.clone())
        .handler_fn(&queue, move |text: String, _ctx: Context| {
            let state = state.clone();
            async move {
                state.lock().unwrap().push(text);
                Ok::<(), HandlerError>(())
            }
        })
        .start()
        .await
        .unwrap();
    common::wait_for("three handled", Duration::from_secs(10), || {
        worker.snapshot()[0].handled == 3
    })
    .await;
    worker.shutdown().await;
    let mut seen = seen.lock().unwrap().clone();
    seen.sort();
    assert_eq!(seen, ["a", "b", "c"]);
}

mod kit {
    use super::*;
    use ebbflow::handler::layers::RateLimit;
    use ebbflow::testing::{self, HandlerTest, Outcome, PoisonReason, TestWorker};

    /// The README's handler, tested with the kit.
    #[derive(serde::Deserialize)]
    struct Order {
        id: u64,
        amount_cents: u64,
    }

    struct Orders;

    impl Handler for Orders {
        type Message = ebbflow::Json<Order>;

        async fn handle(
            &self,
            ebbflow::Json(order): ebbflow::Json<Order>,
            _ctx: Context,
        ) -> Result<(), HandlerError> {
            if order.amount_cents == 0 {
                return Err(HandlerError::poison(format!(
                    "order {} has no amount",
                    order.id
                )));
            }
            if order.id == 13 {
                return Err(HandlerError::retry("the payment service said try later"));
            }
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_handler_runs_without_a_worker_and_gives_the_runtime_s_outcome() {
        let orders = HandlerTest::new(Orders);
        assert_eq!(
            orders.run(r#"{"id":1,"amount_cents":100}"#).await,
            Outcome::Deleted
        );
        assert!(matches!(
            orders.run(r#"{"id":2,"amount_cents":0}"#).await,
            Outcome::Poisoned {
                reason: PoisonReason::Rejected,
                ..
            }
        ));
        assert!(matches!(
            orders.run("{").await,
            Outcome::Poisoned {
                reason: PoisonReason::Undecodable,
                ..
            }
        ));
        let failing = r#"{"id":13,"amount_cents":100}"#;
        assert!(matches!(orders.run(failing).await, Outcome::Retried { .. }));
        // On the last allowed try (dequeue limit 5 by default) a failure poisons.
        let last = testing::context("orders").dequeue_count(5).build();
        assert!(matches!(
            orders.run_with(failing, last).await,
            Outcome::Poisoned {
                reason: PoisonReason::MaxDequeueCountExceeded,
                ..
            }
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn layers_and_batches_run_in_the_kit_too() {
        let limited = HandlerTest::new(Orders).layer(RateLimit::new(1, Duration::from_secs(10)));
        let ok = r#"{"id":1,"amount_cents":100}"#;
        assert_eq!(limited.run(ok).await, Outcome::Deleted);
        assert!(matches!(limited.run(ok).await, Outcome::Released { .. }));
        let rows = Rows::default();
        let outcomes = HandlerTest::batch(rows.clone())
            .run_batch(["1", "10", "7", "3"])
            .await;
        assert_eq!(*rows.sizes.lock().unwrap(), [4]);
        assert!(matches!(
            outcomes.as_slice(),
            [
                Outcome::Deleted,
                Outcome::Poisoned { .. },
                Outcome::Released { .. },
                Outcome::Deleted
            ]
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_test_worker_runs_until_idle_and_says_what_became_of_each_message() {
        let kit = TestWorker::new(settings(&["orders"]));
        kit.send_json("orders", &serde_json::json!({"id": 1, "amount_cents": 100}))
            .await;
        kit.send_json("orders", &serde_json::json!({"id": 2, "amount_cents": 0}))
            .await;
        // Fails every try: retried four times, then poisoned on the fifth.
        kit.send_json(
            "orders",
            &serde_json::json!({"id": 13, "amount_cents": 100}),
        )
        .await;
        let report = kit
            .run_until_idle(|worker| worker.handler("orders", Orders))
            .await
            .unwrap();
        assert_eq!(report.deleted("orders"), 1);
        assert_eq!(report.retried("orders"), 4);
        assert_eq!(report.released("orders"), 0);
        let mut reasons: Vec<_> = report.poisoned("orders").iter().map(|p| p.reason).collect();
        reasons.sort_by_key(|r| r.as_str());
        assert_eq!(
            reasons,
            [
                PoisonReason::MaxDequeueCountExceeded,
                PoisonReason::Rejected
            ]
        );
    }
    /// A payload over the queue's 64 KiB goes through the kit's claim check, as a worker's
    /// sends do, and the handler sees it byte for byte (newcomer pass: it used to panic).
    #[tokio::test(start_paused = true)]
    async fn a_test_worker_carries_a_megabyte_through_the_claim_check() {
        let kit = TestWorker::new(settings(&["files"]));
        let big: Vec<u8> = (0..1024 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
        kit.send_bytes("files", &big).await;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        let report = kit
            .run_until_idle(move |worker| {
                worker.handler_fn("files", move |bytes: Vec<u8>, _ctx: Context| {
                    let seen = seen2.clone();
                    async move {
                        seen.lock().unwrap().push(bytes);
                        Ok::<(), HandlerError>(())
                    }
                })
            })
            .await
            .unwrap();
        assert_eq!(report.deleted("files"), 1);
        assert!(report.poisoned("files").is_empty());
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        assert!(
            seen[0] == big,
            "the handler got {} bytes, not the megabyte sent",
            seen[0].len()
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_producer_sends_many_and_a_handler_writes_to_a_declared_output() {
    let store = common::memory();
    let (orders, emails) = (common::unique("orders"), common::unique("emails"));
    let producer = ebbflow::worker::Producer::connect_to(settings(&[&orders]), store.clone())
        .await
        .unwrap();
    let out = producer.output::<u32>(&orders).unwrap();
    let mut later = ebbflow::store::SendOptions::default();
    later.initial_delay = Duration::from_secs(30);
    let ids = out
        .send_many([
            (&1, Default::default()),
            (&2, Default::default()),
            (&3, later),
        ])
        .await
        .unwrap();
    assert_eq!(ids.len(), 3);
    producer.close().await;
    let to = emails.clone();
    let worker = Worker::new(settings(&[&orders]))
        .with_store(store.clone())
        .output(&emails)
        .handler_fn(
            &orders,
            move |ebbflow::Json(n): ebbflow::Json<u32>, ctx: Context| {
                let to = to.clone();
                async move {
                    let emails = ctx.output::<String>(&to).expect("the declared output");
                    emails.send(&format!("order {n}")).await?;
                    Ok::<(), HandlerError>(())
                }
            },
        )
        .start()
        .await
        .unwrap();
    common::wait_for(
        "three handled, the delayed one too",
        Duration::from_secs(120),
        || worker.snapshot()[0].handled == 3,
    )
    .await;
    worker.shutdown().await;
    let sent = store
        .queue(&emails)
        .unwrap()
        .approximate_depth()
        .await
        .unwrap();
    assert_eq!(sent, 3);
}
