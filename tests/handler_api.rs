//! The handler API beyond one trait impl: middleware layers around handlers, on the embedded
//! store under tokio's paused clock.

mod common;

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
        .err()
        .expect("a start-up error");
    let text = err.to_string();
    assert!(
        text.contains("ordrs") && text.contains("[queues.ordrs]"),
        "{text}"
    );
}
