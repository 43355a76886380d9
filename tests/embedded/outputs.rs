//! Output-only queues declared in config (`[outputs.<queue>]`): checked at start-up, written in
//! their declared encoding and shards, by a worker (no handler for them) and by a producer. The
//! embedded store creates every queue on use, so these tests put a store layer on it that
//! reports an Azure backend: with `storage.create_queues = false` start-up then checks
//! existence as it does on Azure.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use ebbflow::codec::Encoding;
use ebbflow::config::{OutputSettings, QueueSettings, Settings};
use ebbflow::store::{BackendKind, QueueStore};
use ebbflow::store::{LayeredStore, StoreLayer};
use ebbflow::worker::{Producer, WorkerError};
use ebbflow::{Context, HandlerError, Json, Worker};

/// Reports the Azure backend, so nothing is created for us.
struct LikeAzure;
impl StoreLayer for LikeAzure {
    fn kind(&self, _inner: &dyn QueueStore) -> BackendKind {
        BackendKind::Azure
    }
}

async fn store_with(queues: &[&str]) -> Arc<dyn QueueStore> {
    let memory = common::memory();
    for q in queues {
        let queue = memory.queue(q).unwrap();
        queue.create_if_missing().await.unwrap();
    }
    LayeredStore::wrap(memory, LikeAzure)
}

fn settings(orders: &str, output: &str, encoding: Encoding) -> Settings {
    let mut s = Settings::default();
    s.storage.create_queues = false;
    s.queues
        .insert(orders.to_string(), QueueSettings::default());
    let mut out = OutputSettings::default();
    out.encoding = encoding;
    s.outputs.insert(output.to_string(), out);
    s
}

/// Writes ten times the order's number to `output`, asked for by name on the `Context`.
async fn forward(output: String, Json(n): Json<u32>, ctx: Context) -> Result<(), HandlerError> {
    let out = ctx.output::<u32>(&output).expect("a declared output");
    out.send(&(n * 10)).await?;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_misspelt_output_in_config_stops_the_start_naming_it() {
    let orders = common::unique("orders");
    let emails = common::unique("emails");
    let typo = format!("{emails}x");
    let store = store_with(&[&orders, &format!("{orders}-poison"), &emails]).await;
    let err = Worker::new(settings(&orders, &typo, Encoding::Base64))
        .with_store(store)
        .handler_fn(&orders, {
            let t = typo.clone();
            move |m, ctx| forward(t.clone(), m, ctx)
        })
        .start()
        .await
        .expect_err("the misspelt output stops the start");
    assert!(
        matches!(&err, WorkerError::MissingOutput(name) if *name == typo),
        "{err}"
    );
    let text = err.to_string();
    assert!(text.contains(&format!("[outputs.{typo}]")), "{text}");
}

#[tokio::test(start_paused = true)]
async fn a_declared_output_is_written_in_its_configured_encoding() {
    let orders = common::unique("orders");
    let emails = common::unique("emails");
    let store = store_with(&[&orders, &format!("{orders}-poison"), &emails]).await;
    let worker = Worker::new(settings(&orders, &emails, Encoding::None))
        .with_store(store.clone())
        .handler_fn(&orders, {
            let e = emails.clone();
            move |m, ctx| forward(e.clone(), m, ctx)
        })
        .start()
        .await
        .expect("every queue exists");
    worker
        .publisher(&orders)
        .expect("the consumed queue's publisher")
        .send_json(&7u32)
        .await
        .unwrap();
    common::wait_for("the order handled", Duration::from_secs(30), || {
        worker.snapshot()[0].handled == 1
    })
    .await;
    worker.shutdown().await;
    let written = store.queue(&emails).unwrap().peek(32).await.unwrap();
    let texts: Vec<&str> = written.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(texts, ["70"], "JSON as is: the output's encoding is none");
}

#[tokio::test(start_paused = true)]
async fn a_code_output_that_config_lacks_stops_the_start_naming_both_sides() {
    let orders = common::unique("orders");
    let emails = common::unique("emails");
    let typo = format!("{emails}x");
    let store = store_with(&[&orders, &format!("{orders}-poison"), &emails, &typo]).await;
    // Config declares `emails`; code declares the misspelt name (which even exists).
    let err = Worker::new(settings(&orders, &emails, Encoding::Base64))
        .with_store(store)
        .output(&typo)
        .handler_fn(&orders, |_: Json<u32>, _: Context| async { Ok(()) })
        .start()
        .await
        .expect_err("config and code disagree on the output's name");
    assert!(
        matches!(&err, WorkerError::OutputNotConfigured(name, listed)
            if *name == typo && *listed == emails),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(&format!("[outputs.{typo}]")),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_output_that_is_also_consumed_here_is_a_config_error_naming_the_key() {
    let mut s = settings("orders", "emails", Encoding::Base64);
    assert!(s.validate().is_ok());
    s.outputs
        .insert("orders-poison".into(), OutputSettings::default());
    let err = s.validate().unwrap_err().to_string();
    assert!(err.contains("outputs.orders-poison"), "{err}");
    let mut s = settings("orders", "Emails", Encoding::Base64);
    let err = s.validate().unwrap_err().to_string();
    assert!(
        err.contains("outputs.Emails"),
        "an invalid queue name: {err}"
    );
    s.outputs.clear();
    assert!(s.validate().is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_producer_writes_a_config_output_over_its_shards_in_its_encoding() {
    let orders = common::unique("orders");
    let emails = common::unique("emails");
    let shards = [format!("{emails}-0"), format!("{emails}-1")];
    let store = store_with(&[&orders, &shards[0], &shards[1]]).await;
    let mut s = settings(&orders, &emails, Encoding::None);
    s.outputs.get_mut(&emails).unwrap().shards = serde_json::from_str("2").unwrap();
    let producer = Producer::connect_to(s.clone(), store.clone())
        .await
        .expect("every shard exists");
    let out = producer
        .output::<u32>(&emails)
        .expect("a configured output");
    for n in 0..8u32 {
        out.send(&n).await.unwrap();
    }
    producer.close().await;
    let mut texts = Vec::new();
    for shard in &shards {
        let on = store.queue(shard).unwrap().peek(32).await.unwrap();
        assert!(!on.is_empty(), "sends are spread over both shards");
        texts.extend(on.into_iter().map(|m| m.text));
    }
    texts.sort();
    let want: Vec<String> = (0..8).map(|n| n.to_string()).collect();
    assert_eq!(texts, want, "JSON as is (encoding none), nothing lost");
    // A missing shard stops the producer too, naming the output.
    s.outputs
        .insert(common::unique("audit"), OutputSettings::default());
    let err = Producer::connect_to(s, store)
        .await
        .expect_err("the audit output does not exist");
    assert!(matches!(err, WorkerError::MissingOutput(_)), "{err}");
}
