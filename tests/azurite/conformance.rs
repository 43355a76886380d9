//! One conformance suite for both backends: each check below runs against the embedded store
//! (under tokio's paused clock) and against Azurite (real time), so the embedded backend
//! cannot drift from the real service.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use ebbflow::store::{QueueStore, SendOptions, StoreError, TimeToLive};

/// Sleeps on tokio's clock: instant for the paused embedded runs, real for Azurite.
async fn pass(d: Duration) {
    tokio::time::sleep(d).await;
}

on_both_backends!(
    send_receive_delete_keeps_text_and_metadata,
    receive_count_is_capped_at_32,
    received_messages_are_hidden_until_their_timeout,
    update_changes_receipt_visibility_and_text,
    stale_pop_receipts_are_refused,
    peek_does_not_receive,
    depth_counts_hidden_messages,
    initial_delay_hides_a_new_message,
    time_to_live_expires_messages,
    message_size_is_capped_at_64_kib,
    missing_queues_are_reported_by_name,
);

async fn send_receive_delete_keeps_text_and_metadata(store: Arc<dyn QueueStore>) {
    let q = common::fresh_queue(&store, "roundtrip").await;
    let text = "plain <xml> & \"quotes\" \u{e9}\u{1F600}";
    let sent = q.send(text, SendOptions::default()).await.unwrap();
    let got = q.receive(32, Duration::from_secs(30)).await.unwrap();
    assert_eq!(got.len(), 1);
    let m = &got[0];
    assert_eq!(m.id, sent.id);
    assert_eq!(m.text, text);
    assert_eq!(m.dequeue_count, 1);
    assert!(m.inserted_at.is_some() && m.expires_at.is_some());
    assert_ne!(
        m.pop_receipt, sent.pop_receipt,
        "a receive issues a new pop receipt"
    );
    q.delete(&m.id, &m.pop_receipt).await.unwrap();
    assert_eq!(q.approximate_depth().await.unwrap(), 0);
}

async fn receive_count_is_capped_at_32(store: Arc<dyn QueueStore>) {
    let q = common::fresh_queue(&store, "cap").await;
    for i in 0..40 {
        q.send(&format!("m{i}"), SendOptions::default())
            .await
            .unwrap();
    }
    for bad in [0u8, 33] {
        let err = q.receive(bad, Duration::from_secs(30)).await.unwrap_err();
        assert!(matches!(err, StoreError::Invalid { .. }), "{bad}: {err}");
        assert!(
            err.to_string().contains(q.name()),
            "the error names the queue: {err}"
        );
    }
    assert_eq!(
        q.receive(32, Duration::from_secs(30)).await.unwrap().len(),
        32
    );
    assert_eq!(
        q.receive(32, Duration::from_secs(30)).await.unwrap().len(),
        8
    );
    assert!(q
        .receive(32, Duration::from_secs(30))
        .await
        .unwrap()
        .is_empty());
}

async fn received_messages_are_hidden_until_their_timeout(store: Arc<dyn QueueStore>) {
    let q = common::fresh_queue(&store, "hidden").await;
    q.send("a", SendOptions::default()).await.unwrap();
    let first = q.receive(1, Duration::from_secs(1)).await.unwrap();
    assert_eq!(first.len(), 1);
    assert!(q
        .receive(1, Duration::from_secs(1))
        .await
        .unwrap()
        .is_empty());
    pass(Duration::from_millis(2200)).await;
    let again = q.receive(1, Duration::from_secs(30)).await.unwrap();
    assert_eq!(again.len(), 1, "visible again after the timeout");
    assert_eq!(again[0].id, first[0].id);
    assert_eq!(again[0].dequeue_count, 2);
}

async fn update_changes_receipt_visibility_and_text(store: Arc<dyn QueueStore>) {
    let q = common::fresh_queue(&store, "update").await;
    q.send("before", SendOptions::default()).await.unwrap();
    let m = q
        .receive(1, Duration::from_secs(30))
        .await
        .unwrap()
        .remove(0);
    let updated = q
        .update(&m.id, &m.pop_receipt, Duration::ZERO, Some("after"))
        .await
        .unwrap();
    assert_ne!(updated.pop_receipt, m.pop_receipt);
    // Visibility 0: visible at once, with the new text.
    let again = q.receive(1, Duration::from_secs(30)).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].text, "after");
    assert_eq!(again[0].dequeue_count, 2);
    // Visibility only (no text): hides it and keeps the text.
    let hidden = q
        .update(
            &again[0].id,
            &again[0].pop_receipt,
            Duration::from_secs(60),
            None,
        )
        .await
        .unwrap();
    assert!(q
        .receive(1, Duration::from_secs(30))
        .await
        .unwrap()
        .is_empty());
    q.delete(&again[0].id, &hidden.pop_receipt).await.unwrap();
    assert_eq!(q.approximate_depth().await.unwrap(), 0);
}

async fn stale_pop_receipts_are_refused(store: Arc<dyn QueueStore>) {
    let q = common::fresh_queue(&store, "stale").await;
    q.send("a", SendOptions::default()).await.unwrap();
    let m = q
        .receive(1, Duration::from_secs(30))
        .await
        .unwrap()
        .remove(0);
    let updated = q
        .update(&m.id, &m.pop_receipt, Duration::ZERO, None)
        .await
        .unwrap();
    let err = q.delete(&m.id, &m.pop_receipt).await.unwrap_err();
    assert!(
        matches!(err, StoreError::MessageNotFound { ref id, .. } if *id == m.id),
        "{err}"
    );
    let err = q
        .update(&m.id, &m.pop_receipt, Duration::ZERO, None)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::MessageNotFound { .. }), "{err}");
    q.delete(&m.id, &updated.pop_receipt).await.unwrap();
    let err = q.delete(&m.id, &updated.pop_receipt).await.unwrap_err();
    assert!(
        matches!(err, StoreError::MessageNotFound { .. }),
        "deleted twice: {err}"
    );
}

async fn peek_does_not_receive(store: Arc<dyn QueueStore>) {
    let q = common::fresh_queue(&store, "peek").await;
    q.send("one", SendOptions::default()).await.unwrap();
    q.send("two", SendOptions::default()).await.unwrap();
    let peeked = q.peek(32).await.unwrap();
    assert_eq!(peeked.len(), 2);
    assert_eq!(peeked[0].text, "one");
    assert_eq!(peeked[0].dequeue_count, 0);
    assert!(q.peek(33).await.is_err());
    let got = q.receive(32, Duration::from_secs(30)).await.unwrap();
    assert_eq!(got.len(), 2, "peek left both visible");
    assert_eq!(got[0].dequeue_count, 1);
    assert!(
        q.peek(32).await.unwrap().is_empty(),
        "peek skips hidden messages"
    );
}

async fn depth_counts_hidden_messages(store: Arc<dyn QueueStore>) {
    let q = common::fresh_queue(&store, "depth").await;
    for i in 0..5 {
        q.send(&format!("{i}"), SendOptions::default())
            .await
            .unwrap();
    }
    q.receive(3, Duration::from_secs(30)).await.unwrap();
    assert_eq!(q.approximate_depth().await.unwrap(), 5);
}

async fn initial_delay_hides_a_new_message(store: Arc<dyn QueueStore>) {
    let q = common::fresh_queue(&store, "delay").await;
    let mut options = SendOptions::default();
    options.initial_delay = Duration::from_secs(1);
    q.send("later", options).await.unwrap();
    assert!(q
        .receive(1, Duration::from_secs(30))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(q.approximate_depth().await.unwrap(), 1);
    pass(Duration::from_millis(2200)).await;
    assert_eq!(
        q.receive(1, Duration::from_secs(30)).await.unwrap().len(),
        1
    );
}

async fn time_to_live_expires_messages(store: Arc<dyn QueueStore>) {
    let q = common::fresh_queue(&store, "ttl").await;
    let mut options = SendOptions::default();
    options.time_to_live = TimeToLive::After(Duration::from_secs(1));
    q.send("short-lived", options).await.unwrap();
    q.send("stays", SendOptions::default()).await.unwrap();
    pass(Duration::from_millis(2200)).await;
    let got = q.receive(32, Duration::from_secs(30)).await.unwrap();
    let texts: Vec<_> = got.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(texts, ["stays"]);
}

async fn message_size_is_capped_at_64_kib(store: Arc<dyn QueueStore>) {
    let q = common::fresh_queue(&store, "size").await;
    let max = "x".repeat(64 * 1024);
    q.send(&max, SendOptions::default()).await.unwrap();
    let too_big = "x".repeat(64 * 1024 + 1);
    let err = q.send(&too_big, SendOptions::default()).await.unwrap_err();
    assert!(matches!(err, StoreError::Invalid { .. }), "{err}");
    let got = q.receive(1, Duration::from_secs(30)).await.unwrap();
    assert_eq!(got[0].text.len(), 64 * 1024);
}

async fn missing_queues_are_reported_by_name(store: Arc<dyn QueueStore>) {
    let name = common::unique("missing");
    let q = store.queue(&name).unwrap();
    let err = q.receive(1, Duration::from_secs(30)).await.unwrap_err();
    assert!(
        matches!(err, StoreError::QueueNotFound { ref queue } if *queue == name),
        "{err}"
    );
    let err = q.send("x", SendOptions::default()).await.unwrap_err();
    assert!(matches!(err, StoreError::QueueNotFound { .. }), "{err}");
    assert!(store.queue("Bad_Name").is_err());
}
