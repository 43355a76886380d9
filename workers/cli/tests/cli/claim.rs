//! The claim check from the command line against the test Azurite's queue and blob services:
//! `enqueue --file` with a payload over the queue's limit, `peek` showing the reference and its
//! size, `poison show` resolving it, and `blobs gc` removing a planted orphan and nothing else.

use std::collections::BTreeMap;
use std::time::Duration;

use ebbflow::listener::poison::{PoisonEnvelope, PoisonReason};
use ebbflow::store::{AzureBlobs, BlobStore, META_EXPIRES, META_QUEUE};

use crate::{common, json, sent_ids, with};

fn blob_url() -> String {
    std::env::var("EBBFLOW_AZURITE_BLOB_URL")
        .unwrap_or_else(|_| panic!("EBBFLOW_AZURITE_BLOB_URL is not set: run scripts/test"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_payloads_go_through_the_claim_check_and_gc_removes_only_orphans() {
    let queue = common::unique("claim");
    let container = common::unique("claim");
    let cs = format!(
        "{};BlobEndpoint={}",
        common::azurite_connection_string(),
        blob_url()
    );
    let dir = common::TempDir::new("cli");
    std::fs::write(
        dir.path().join("default.toml"),
        format!(
            "[storage]\nconnection_string = \"{cs}\"\n\n[storage.claim_check]\n\
             container = \"{container}\"\n\n[queues.{queue}]\n"
        ),
    )
    .unwrap();
    let blobs = AzureBlobs::from_connection_string(&cs, &container).unwrap();
    blobs.create_if_missing().await.unwrap();
    // 200 KB: four times what a queue message carries.
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let file = dir.path().join("payload.bin");
    std::fs::write(&file, &payload).unwrap();
    let file = file.to_str().unwrap().to_string();
    let args = ["enqueue", &queue, "--create", "--file", &file];
    let run = tokio::task::block_in_place(|| with(&dir, &args));
    assert_eq!(run.code, Some(0), "{}", run.both());
    assert_eq!(sent_ids(&run).len(), 1);
    let run = tokio::task::block_in_place(|| with(&dir, &["peek", &queue, "--json"]));
    let peeked = json(&run);
    assert_eq!(peeked[0]["claim"]["size"], 200_000, "{peeked}");
    let run = tokio::task::block_in_place(|| with(&dir, &["peek", &queue]));
    assert!(
        run.stdout.contains("claim-check reference: blob") && run.stdout.contains("200000 bytes"),
        "{}",
        run.stdout
    );
    // Poison it by hand (as a worker would): the copy carries the reference.
    let store = common::azurite();
    let source = store.queue(&queue).unwrap();
    let received = source.receive(1, Duration::from_secs(30)).await.unwrap();
    let poison = store.queue(&format!("{queue}-poison")).unwrap();
    poison.create_if_missing().await.unwrap();
    let envelope = PoisonEnvelope::new(&queue, &received[0], PoisonReason::Rejected, None);
    let sent = poison
        .send(
            envelope.to_text(ebbflow::codec::Encoding::Base64).as_str(),
            Default::default(),
        )
        .await
        .unwrap();
    let args = ["poison", "show", "--queue", &queue, "--id", &sent.id];
    let run = tokio::task::block_in_place(|| with(&dir, &args));
    assert_eq!(run.code, Some(0), "{}", run.both());
    assert!(
        run.stdout
            .contains("payload (200000 bytes, from the claim check's blob)"),
        "{}",
        run.stdout
    );
    // gc: the live blob stays; a planted orphan goes, and only with --delete.
    let mut metadata = BTreeMap::new();
    metadata.insert(META_QUEUE.to_string(), queue.clone());
    metadata.insert(META_EXPIRES.to_string(), "2020-01-01T00:00:00Z".to_string());
    let orphan = format!("{queue}/2020-01-01/orphan.bin");
    blobs.put(&orphan, vec![1, 2], metadata).await.unwrap();
    let run = tokio::task::block_in_place(|| with(&dir, &["blobs", "gc"]));
    assert_eq!(run.code, Some(0), "{}", run.both());
    assert!(run.stdout.contains("1 orphan(s)"), "{}", run.stdout);
    assert!(run.stdout.contains(&orphan), "{}", run.stdout);
    assert_eq!(blobs.list(&queue).await.unwrap().len(), 2, "a dry run");
    let run = tokio::task::block_in_place(|| with(&dir, &["blobs", "gc", "--delete"]));
    assert_eq!(run.code, Some(0), "{}", run.both());
    let left = blobs.list(&queue).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_ne!(left[0].name, orphan);
}
