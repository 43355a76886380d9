use std::sync::Arc;

use super::*;
use crate::store::blob::memory::MemoryBlobs;
use crate::store::blob::BlobStore;
use crate::store::memory::MemoryStore;
use crate::store::{LayeredStore, QueueStore};

fn setup(compression: Compression) -> (Arc<dyn QueueStore>, MemoryBlobs) {
    let blobs = MemoryBlobs::default();
    let claim = ClaimCheck::new(
        Some(Arc::new(blobs.clone())),
        &ClaimCheckSettings::default(),
    )
    .queue(
        "orders",
        QueueFormat {
            encoding: Encoding::Base64,
            compression,
        },
    );
    (
        LayeredStore::wrap(Arc::new(MemoryStore::new()), claim),
        blobs,
    )
}

fn text_of(payload: &[u8]) -> String {
    Encoding::Base64.encode(payload).unwrap()
}

#[tokio::test]
async fn a_large_payload_goes_to_a_blob_and_comes_back_byte_exact() {
    let (store, blobs) = setup(Compression::Identity);
    let q = store.queue("orders").unwrap();
    q.create_if_missing().await.unwrap();
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    q.send(&text_of(&payload), SendOptions::default())
        .await
        .unwrap();
    assert_eq!(blobs.len(), 1);
    let got = q
        .receive(1, std::time::Duration::from_secs(30))
        .await
        .unwrap();
    assert!(got[0].text.len() < 1024, "{}", got[0].text);
    let info = &blobs.list("orders/").await.unwrap()[0];
    assert_eq!(
        info.size,
        payload.len() as u64,
        "the blob holds bytes, not base64"
    );
    assert!(info.expires_at().unwrap().is_some());
    let back = q.open_payload(&got[0].text).await.unwrap().unwrap();
    assert_eq!(back, payload);
    q.payload_done(&got[0].text).await;
    assert!(blobs.is_empty());
}

#[tokio::test]
async fn small_texts_and_foreign_texts_pass_unchanged() {
    let (store, blobs) = setup(Compression::Identity);
    let q = store.queue("orders").unwrap();
    q.create_if_missing().await.unwrap();
    for text in ["aGVsbG8=", "{\"a\":1}", "{\"ebbflow_claim\" is not json"] {
        q.send(text, SendOptions::default()).await.unwrap();
        assert_eq!(q.open_payload(text).await.unwrap(), None);
    }
    assert!(blobs.is_empty());
}

#[tokio::test]
async fn compression_keeps_a_compressible_payload_inline() {
    for c in [Compression::Gzip, Compression::Zstd] {
        let (store, blobs) = setup(c);
        let q = store.queue("orders").unwrap();
        q.create_if_missing().await.unwrap();
        let payload = "{\"row\":12345,\"name\":\"widget\"}\n"
            .repeat(4000)
            .into_bytes();
        assert!(payload.len() > 100_000);
        q.send(&text_of(&payload), SendOptions::default())
            .await
            .unwrap();
        assert!(blobs.is_empty(), "{c}");
        let got = q.peek(1).await.unwrap();
        assert!(got[0].text.len() < 20_000, "{c}: {}", got[0].text.len());
        let back = q.open_payload(&got[0].text).await.unwrap().unwrap();
        assert_eq!(back, payload, "{c}");
    }
}

#[tokio::test]
async fn tampered_missing_foreign_and_oversized_references_are_unusable() {
    let (store, blobs) = setup(Compression::Identity);
    let q = store.queue("orders").unwrap();
    q.create_if_missing().await.unwrap();
    let payload = vec![1u8; 100_000];
    q.send(&text_of(&payload), SendOptions::default())
        .await
        .unwrap();
    let text = q.peek(1).await.unwrap()[0].text.clone();
    let name = blobs.names()[0].clone();
    let mut tampered = payload.clone();
    tampered[5] = 2;
    blobs.tamper(&name, tampered);
    let err = q.open_payload(&text).await.unwrap_err();
    assert!(
        matches!(&err, PayloadError::Unusable(w) if w.contains("SHA-256")),
        "{err}"
    );
    blobs.delete(&name).await.unwrap();
    let err = q.open_payload(&text).await.unwrap_err();
    assert!(
        matches!(&err, PayloadError::Unusable(w) if w.contains("missing")),
        "{err}"
    );
    // A lookalike naming another container is never fetched from it.
    let foreign = text.replace("ebbflow-payloads", "someone-elses");
    let err = q.open_payload(&foreign).await.unwrap_err();
    assert!(
        matches!(&err, PayloadError::Unusable(w) if w.contains("only from")),
        "{err}"
    );
    let huge = ClaimRef {
        size: 1 << 40,
        ..ClaimRef::parse(&text).unwrap().unwrap()
    };
    let err = q.open_payload(&huge.to_text()).await.unwrap_err();
    assert!(
        matches!(&err, PayloadError::Unusable(w) if w.contains("max_payload_bytes")),
        "{err}"
    );
}

#[tokio::test]
async fn without_blobs_an_oversized_send_says_how_to_turn_the_claim_check_on() {
    let claim = ClaimCheck::new(None, &ClaimCheckSettings::default());
    let store = LayeredStore::wrap(Arc::new(MemoryStore::new()), claim);
    let q = store.queue("orders").unwrap();
    q.create_if_missing().await.unwrap();
    let err = q
        .send(&"A".repeat(70_000), SendOptions::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("storage.claim_check.blob_endpoint"), "{err}");
    assert!(q.peek(1).await.unwrap().is_empty());
}

#[tokio::test]
async fn the_sweep_removes_expired_orphans_and_nothing_else() {
    let blobs = MemoryBlobs::default();
    let meta = |expires: &str| {
        let mut m = BTreeMap::new();
        m.insert(META_QUEUE.to_string(), "orders".to_string());
        m.insert(META_EXPIRES.to_string(), expires.to_string());
        m
    };
    blobs
        .put("orders/old.bin", vec![1], meta("2020-01-01T00:00:00Z"))
        .await
        .unwrap();
    blobs
        .put("orders/live.bin", vec![1], meta("2999-01-01T00:00:00Z"))
        .await
        .unwrap();
    blobs
        .put("orders/never.bin", vec![1], meta("never"))
        .await
        .unwrap();
    blobs
        .put("someone/else.bin", vec![1], BTreeMap::new())
        .await
        .unwrap();
    let shared: Blobs = Arc::new(blobs.clone());
    let week = std::time::Duration::from_secs(7 * 86_400);
    let dry = sweep(&shared, week, true).await.unwrap();
    assert_eq!(dry.orphans.len(), 1);
    assert_eq!(blobs.len(), 4, "a dry run deletes nothing");
    let done = sweep(&shared, week, false).await.unwrap();
    assert_eq!(done.orphans[0].name, "orders/old.bin");
    assert_eq!(done.kept, 3);
    assert_eq!(
        blobs.names(),
        ["orders/live.bin", "orders/never.bin", "someone/else.bin"]
    );
}

#[tokio::test]
async fn a_trace_context_envelope_stays_in_front_of_the_reference() {
    let (store, blobs) = setup(Compression::Identity);
    let q = store.queue("orders").unwrap();
    q.create_if_missing().await.unwrap();
    let cx = crate::codec::trace::TraceContext::new([7; 16], [9; 8], true, "");
    let payload = vec![3u8; 90_000];
    q.send(&cx.wrap(&text_of(&payload)), SendOptions::default())
        .await
        .unwrap();
    assert_eq!(blobs.len(), 1);
    let text = q.peek(1).await.unwrap()[0].text.clone();
    let (got, body) = crate::codec::trace::TraceContext::unwrap(&text);
    assert_eq!(got, Some(cx));
    assert!(body.starts_with("{\"ebbflow_claim\":1"), "{body}");
    assert_eq!(q.open_payload(&text).await.unwrap().unwrap(), payload);
    q.payload_done(&text).await;
    assert!(blobs.is_empty());
}
