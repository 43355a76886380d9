//! A new user's first hour (issue 24): the traps that used to go wrong silently now stop at
//! once with an error naming what to set.

use ebbflow::config::{QueueSettings, Settings};
use ebbflow::worker::{Producer, WorkerError};

fn with_orders() -> Settings {
    let mut s = Settings::default();
    s.queues.insert("orders".into(), QueueSettings::default());
    s.validate().unwrap();
    s
}

/// A producer on default settings used to open a private embedded store (its sends lost to
/// every worker) or fail with `QueueNotFound`; now it says no storage is configured and how
/// to configure it.
#[tokio::test]
async fn a_producer_without_storage_says_no_storage_configured() {
    let e = Producer::connect(with_orders()).await.unwrap_err();
    assert!(matches!(e, WorkerError::NoStorage), "{e:?}");
    let text = e.to_string();
    for needed in [
        "no storage configured",
        "AZURE_STORAGE_CONNECTION_STRING",
        "storage.connection_string",
        "storage.queue_endpoint",
        "Producer::connect_to",
    ] {
        assert!(text.contains(needed), "{needed}: {text}");
    }
    // Sharing a worker's embedded store on purpose still works.
    let producer = Producer::connect_to(with_orders(), crate::common::memory())
        .await
        .unwrap();
    assert!(producer.publisher("orders").is_some());
    producer.close().await;
}

/// A typo in a queue's name, in config or in code: the error names both sides, so the typo
/// shows (a newcomer's `[queues.ordres]` beside `.handler_fn("orders", ...)` used to get only
/// "config has no [queues.orders] section").
#[tokio::test]
async fn a_queue_name_typo_names_what_is_configured_and_what_is_registered() {
    let ok = |_: String, _: ebbflow::Context| async { Ok::<(), ebbflow::HandlerError>(()) };
    let mut typo = Settings::default();
    typo.queues.insert("ordres".into(), QueueSettings::default());
    let e = ebbflow::Worker::new(typo.clone())
        .handler_fn("orders", ok)
        .start()
        .await
        .err()
        .expect("a handler for an unconfigured queue must not start");
    assert!(matches!(e, WorkerError::NotConfigured(..)), "{e:?}");
    let text = e.to_string();
    assert!(
        text.contains("queue orders") && text.contains("(configured: ordres)"),
        "{text}"
    );
    // The other way round: config has a queue no handler is registered for.
    typo.queues.insert("orders".into(), QueueSettings::default());
    let e = ebbflow::Worker::new(typo)
        .handler_fn("orders", ok)
        .start()
        .await
        .err()
        .expect("a configured queue without a handler must not start");
    let text = e.to_string();
    assert!(
        text.contains("queue ordres is configured")
            && text.contains("(handlers are registered for: orders)"),
        "{text}"
    );
}
