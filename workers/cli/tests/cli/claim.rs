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
             container = \"{container}\"\n\n[queues.{queue}]\n\n[queues.{queue}-raw]\n\
             encoding = \"none\"\n"
        ),
    )
    .unwrap();
    let blobs = AzureBlobs::from_connection_string(&cs, &container).unwrap();
    // 200 KB: four times what a queue message carries.
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let file = dir.path().join("payload.bin");
    std::fs::write(&file, &payload).unwrap();
    let file = file.to_str().unwrap().to_string();
    // No container yet (no worker ran): said plainly, with the way out.
    let args = ["enqueue", &queue, "--file", &file];
    let run = tokio::task::block_in_place(|| with(&dir, &args));
    assert_eq!(run.code, Some(1), "{}", run.both());
    for part in [
        "404: ContainerNotFound: The specified container does not exist",
        &format!("the blob container {container} does not exist"),
        "or pass --create",
    ] {
        assert!(
            run.stderr.contains(part),
            "{part:?} missing from: {}",
            run.stderr
        );
    }
    assert!(!run.stderr.contains("<?xml"), "{}", run.stderr);
    // --create makes the queue and the container.
    let args = ["enqueue", &queue, "--create", "--file", &file];
    let run = tokio::task::block_in_place(|| with(&dir, &args));
    assert_eq!(run.code, Some(0), "{}", run.both());
    assert_eq!(sent_ids(&run).len(), 1);
    // The report says what happened, with the real sizes: not the base64 text's.
    let report = run.stdout.lines().next().unwrap_or_default();
    let stored = blobs.list(&queue).await.unwrap();
    assert_eq!(stored.len(), 1, "{report}");
    for part in [
        "through the claim check",
        "the payload of 200000 bytes",
        "266668 bytes as text, over the 65536-byte limit",
        &format!("went to blob {container}/{}", stored[0].name),
        "(200000 bytes stored, identity)",
        "-byte reference",
    ] {
        assert!(report.contains(part), "{part:?} missing from: {report}");
    }
    assert!(!report.contains("bytes of text each"), "{report}");
    // A reference a producer wrote itself goes as the text it is: not reported as an upload
    // (newcomer pass: the report said a blob was written).
    let own = format!(
        r#"{{"ebbflow_claim":1,"container":"other","blob":"x.bin","size":10,"sha256":"{}"}}"#,
        "0".repeat(64)
    );
    let raw = format!("{queue}-raw");
    let args = ["enqueue", &raw, "--create", "--no-trigger", &own];
    let run = tokio::task::block_in_place(|| with(&dir, &args));
    assert_eq!(run.code, Some(0), "{}", run.both());
    assert!(
        !run.stdout.contains("through the claim check"),
        "{}",
        run.both()
    );
    assert_eq!(blobs.list(&queue).await.unwrap().len(), 1, "{}", run.both());
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
    // A binary payload is shown as a hex preview with its full size, never as raw bytes.
    assert!(
        run.stdout.contains(
            "payload (200000 bytes, from the claim check's blob): not UTF-8 text; the first 256 \
             bytes in hex:"
        ),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("00000010  10 11 12 13"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("(200000 bytes in all;"),
        "{}",
        run.stdout
    );
    assert!(
        !run.stdout.contains(['\u{0}', '\u{1b}', '\u{fffd}']),
        "raw bytes on the terminal: {:?}",
        &run.stdout[..run.stdout.len().min(2000)]
    );
    // --out FILE and --raw give the exact bytes.
    let out = dir.path().join("out.bin");
    let out_arg = out.to_str().unwrap().to_string();
    let args = [
        "poison", "show", "--queue", &queue, "--id", &sent.id, "--out", &out_arg,
    ];
    let run = tokio::task::block_in_place(|| with(&dir, &args));
    assert_eq!(run.code, Some(0), "{}", run.both());
    assert!(
        std::fs::read(&out).unwrap() == payload,
        "--out writes the payload"
    );
    assert!(run.stdout.contains("written to"), "{}", run.stdout);
    let raw = tokio::task::block_in_place(|| {
        std::process::Command::new(env!("CARGO_BIN_EXE_ebbflow"))
            .env_clear()
            .args([
                "poison", "show", "--queue", &queue, "--id", &sent.id, "--raw",
            ])
            .args(["--config", dir.path().to_str().unwrap()])
            .output()
            .unwrap()
    });
    assert_eq!(raw.status.code(), Some(0));
    assert!(raw.stdout == payload, "--raw writes the payload alone");
    // A text payload: control characters escaped, so a terminal shows and obeys none of them.
    let text = envelope_for(&queue, "red \u{1b}[31malert\u{7}\nline two");
    let sent = poison.send(&text, Default::default()).await.unwrap();
    let args = ["poison", "show", "--queue", &queue, "--id", &sent.id];
    let run = tokio::task::block_in_place(|| with(&dir, &args));
    assert_eq!(run.code, Some(0), "{}", run.both());
    assert!(
        run.stdout
            .contains("decoded body (24 bytes): red \\u{1b}[31malert\\u{7}\nline two"),
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

/// A poison envelope (base64, as a worker writes it) whose body is `body` on a base64 queue.
fn envelope_for(queue: &str, body: &str) -> String {
    let envelope = serde_json::json!({
        "ebbflow_poison": 1,
        "queue": queue,
        "message_id": "m-1",
        "reason": "rejected",
        "error": null,
        "dequeue_count": 1,
        "inserted_at": null,
        "expires_at": null,
        "poisoned_at": "2026-12-07T08:00:00Z",
        "body": ebbflow::codec::Encoding::Base64.encode(body.as_bytes()).unwrap(),
    });
    ebbflow::codec::Encoding::Base64
        .encode(envelope.to_string().as_bytes())
        .unwrap()
}

/// With the claim check turned off by hand, an oversized payload's error names that line as
/// the fix, not a blob endpoint the user already set (newcomer pass).
#[test]
fn an_oversized_payload_with_the_claim_check_off_names_the_enabled_line() {
    let dir = common::TempDir::new("cli");
    std::fs::write(
        dir.path().join("default.toml"),
        "[storage.claim_check]\nenabled = false\n\n[queues.big]\n",
    )
    .unwrap();
    let file = dir.path().join("payload.bin");
    std::fs::write(&file, vec![7u8; 100_000]).unwrap();
    let run = with(&dir, &["enqueue", "big", "--file", file.to_str().unwrap()]);
    assert_eq!(run.code, Some(2), "{}", run.both());
    assert!(
        run.stderr
            .contains("the claim check is off (storage.claim_check.enabled = false)"),
        "{}",
        run.both()
    );
    assert!(
        !run.stderr.contains("set storage.claim_check.blob_endpoint"),
        "{}",
        run.both()
    );
}
