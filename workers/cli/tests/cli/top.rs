//! `ebbflow top` against a worker running in this test (embedded store, ops endpoint on
//! 127.0.0.1): both queues and their figures from `/dashboard.json`, and the metrics token.

use std::sync::Arc;

use ebbflow::codec::Encoding;
use ebbflow::config::{QueueSettings, Settings};
use ebbflow::store::MemoryStore;
use ebbflow::{Context, Handler, HandlerError, Worker};

use crate::ebbflow;

struct Done;
impl Handler for Done {
    type Message = String;
    async fn handle(&self, _: String, _: Context) -> Result<(), HandlerError> {
        Ok(())
    }
}

const TOKEN: &str = "top-token-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_shows_each_queue_of_a_worker_and_needs_its_token() {
    let mut s = Settings::default();
    s.observability.bind = Some("127.0.0.1:0".parse().unwrap());
    s.observability.metrics_token = Some(TOKEN.to_string().try_into().unwrap());
    for q in ["orders", "emails"] {
        s.queues.insert(
            q.into(),
            QueueSettings {
                encoding: Encoding::None,
                ..Default::default()
            },
        );
    }
    let worker = Worker::new(s)
        .with_store(Arc::new(MemoryStore::new()))
        .handler("orders", Done)
        .handler("emails", Done)
        .start()
        .await
        .unwrap();
    let url = format!("http://{}", worker.ops_addr().unwrap());
    let publisher = worker.publisher("orders").unwrap();
    for _ in 0..3 {
        publisher
            .send_bytes(b"x", Default::default())
            .await
            .unwrap();
    }

    let (u, t) = (url.clone(), TOKEN);
    let run = tokio::task::spawn_blocking(move || {
        ebbflow(
            &["top", "--url", &u, "--count", "2", "--interval", "200ms"],
            &[("EBBFLOW_METRICS_TOKEN", t)],
        )
    })
    .await
    .unwrap();
    assert_eq!(run.code, Some(0), "{}", run.both());
    let frames: Vec<&str> = run
        .stdout
        .split("QUEUE")
        .filter(|f| !f.is_empty())
        .collect();
    assert_eq!(frames.len(), 2, "{}", run.stdout);
    for frame in frames {
        assert!(frame.contains("HANDLED/S"), "{frame}");
        let rows: Vec<&str> = frame
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().next().unwrap())
            .collect();
        assert_eq!(rows, ["emails", "orders"], "{frame}");
    }

    let u = url.clone();
    let run =
        tokio::task::spawn_blocking(move || ebbflow(&["top", "--url", &u, "--count", "1"], &[]))
            .await
            .unwrap();
    assert_eq!(run.code, Some(2), "{}", run.both());
    assert!(
        run.stderr.contains("--token or EBBFLOW_METRICS_TOKEN"),
        "{}",
        run.both()
    );
    assert!(!run.both().contains(TOKEN));
    worker.shutdown().await;
}
