//! Every input at its extremes, on both backends: durations (0, 1 s, 7 d, 7 d + 1 s, 10,000
//! years, `u64::MAX` s, `Duration::MAX`), sizes (empty, exactly 64 KiB, 64 KiB + 1 in bytes,
//! multi-byte text), text the service refuses (control characters XML cannot carry) and bytes
//! that are not UTF-8. One table of expectations; each backend must meet it, so the embedded
//! store refuses exactly what Azurite refuses, and nothing panics.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use ebbflow::codec::Encoding;
use ebbflow::store::MAX_TIME_TO_LIVE;
use ebbflow::store::{Queue, QueueStore, SendOptions, StoreError, TimeToLive};

const S: Duration = Duration::from_secs(1);
const DAY: Duration = Duration::from_secs(24 * 3600);
const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

on_both_backends!(
    put_message_refuses_what_the_service_refuses,
    get_messages_and_update_refuse_what_the_service_refuses,
    never_expiring_and_long_lived_messages_keep_their_expiry,
);

/// Whether a call went through, or was refused as invalid naming the queue. Any other error
/// fails the test.
fn verdict<T>(queue: &Arc<dyn Queue>, what: &str, result: Result<T, StoreError>) -> bool {
    match result {
        Ok(_) => true,
        Err(e @ StoreError::Invalid { .. }) => {
            assert!(e.to_string().contains(queue.name()), "{what}: {e}");
            false
        }
        Err(e) => panic!("{what}: not a refusal but {e}"),
    }
}

fn options(initial_delay: Duration, time_to_live: TimeToLive) -> SendOptions {
    SendOptions::default()
        .with_initial_delay(initial_delay)
        .with_time_to_live(time_to_live)
}

async fn put_message_refuses_what_the_service_refuses(store: Arc<dyn QueueStore>) {
    let q = common::fresh_queue(&store, "put").await;
    let none = SendOptions::default();
    let after = TimeToLive::After;
    let kib64 = 64 * 1024;
    let not_utf8 = Encoding::Base64.encode(&[0xff, 0xfe, 0x00, 0x80]).unwrap();
    assert!(
        Encoding::None.encode(&[0xff, 0xfe]).is_err(),
        "bytes that are not UTF-8 never become text as they are"
    );
    #[rustfmt::skip]
    let cases: Vec<(&str, String, SendOptions, bool)> = vec![
        ("empty text", String::new(), none, true),
        ("blanks", "   ".into(), none, true),
        ("line breaks and tab", "a\r\nb\rc\td".into(), none, true),
        ("exactly 64 KiB", "x".repeat(kib64), none, true),
        ("64 KiB + 1", "x".repeat(kib64 + 1), none, false),
        ("64 KiB of two-byte characters", "\u{e9}".repeat(kib64 / 2), none, true),
        ("64 KiB + 1 in bytes", format!("{}x", "\u{e9}".repeat(kib64 / 2)), none, false),
        ("astral characters", "\u{1F600}".repeat(8), none, true),
        ("NUL", "a\u{0}b".into(), none, false),
        ("U+0001", "a\u{1}b".into(), none, false),
        ("vertical tab", "a\u{B}b".into(), none, false),
        ("U+FFFE", "a\u{FFFE}b".into(), none, false),
        ("bytes not UTF-8, in base64", not_utf8, none, true),
        ("ttl 0", "t".into(), options(Duration::ZERO, after(Duration::ZERO)), false),
        ("ttl 1 ms (a whole second)", "t".into(), options(Duration::ZERO, after(Duration::from_millis(1))), true),
        ("ttl 1 s", "t".into(), options(Duration::ZERO, after(S)), true),
        ("ttl 7 d", "t".into(), options(Duration::ZERO, after(7 * DAY)), true),
        ("ttl 7 d + 1 s", "t".into(), options(Duration::ZERO, after(7 * DAY + S)), true),
        ("ttl 68 years (2^31-1 s)", "t".into(), options(Duration::ZERO, after(MAX_TIME_TO_LIVE)), true),
        ("ttl 2^31 s", "t".into(), options(Duration::ZERO, after(MAX_TIME_TO_LIVE + S)), false),
        ("ttl 10,000 years", "t".into(), options(Duration::ZERO, after(10_000 * YEAR)), false),
        ("ttl u64::MAX s", "t".into(), options(Duration::ZERO, after(Duration::from_secs(u64::MAX))), false),
        ("ttl Duration::MAX", "t".into(), options(Duration::ZERO, after(Duration::MAX)), false),
        ("ttl never", "t".into(), options(Duration::ZERO, TimeToLive::Never), true),
        ("delay 1 s", "d".into(), options(S, TimeToLive::ServiceDefault), true),
        ("delay 7 d, never expires", "d".into(), options(7 * DAY, TimeToLive::Never), true),
        ("delay 7 d, default ttl 7 d", "d".into(), options(7 * DAY, TimeToLive::ServiceDefault), false),
        ("delay 7 d - 1 s, default ttl", "d".into(), options(7 * DAY - S, TimeToLive::ServiceDefault), true),
        ("delay 7 d + 1 s", "d".into(), options(7 * DAY + S, TimeToLive::Never), false),
        ("delay Duration::MAX", "d".into(), options(Duration::MAX, TimeToLive::Never), false),
        ("delay u64::MAX s", "d".into(), options(Duration::from_secs(u64::MAX), TimeToLive::Never), false),
        ("delay = ttl", "d".into(), options(5 * S, after(5 * S)), false),
        ("delay 4.5 s, ttl 5 s (whole seconds)", "d".into(), options(Duration::from_millis(4500), after(5 * S)), false),
        ("delay 4 s, ttl 5 s", "d".into(), options(4 * S, after(5 * S)), true),
    ];
    let mut accepted = Vec::new();
    for (what, text, options, ok) in cases {
        let sent = verdict(&q, what, q.send(&text, options).await);
        assert_eq!(sent, ok, "{what}: accepted = {sent}, want {ok}");
        if sent && options.initial_delay.is_zero() {
            accepted.push(text);
        }
    }
    // Everything accepted comes back exactly as sent, and the queue still works.
    let mut got = Vec::new();
    loop {
        let batch = q.receive(32, Duration::from_secs(60)).await.unwrap();
        if batch.is_empty() {
            break;
        }
        got.extend(batch.into_iter().map(|m| m.text));
    }
    got.sort();
    accepted.sort();
    assert_eq!(got.len(), accepted.len());
    assert!(got == accepted, "texts changed on the way");
}

async fn get_messages_and_update_refuse_what_the_service_refuses(store: Arc<dyn QueueStore>) {
    let q = common::fresh_queue(&store, "get").await;
    for i in 0..8 {
        q.send(&format!("m{i}"), options(Duration::ZERO, TimeToLive::Never))
            .await
            .unwrap();
    }
    #[rustfmt::skip]
    let receives: [(&str, u8, Duration, bool); 9] = [
        ("0 messages", 0, 30 * S, false),
        ("33 messages", 33, 30 * S, false),
        ("visibility 0", 1, Duration::ZERO, false),
        ("visibility 1 s", 1, S, true),
        ("visibility 7 d", 1, 7 * DAY, true),
        ("visibility 7 d + 1 s", 1, 7 * DAY + S, false),
        ("visibility u64::MAX s", 1, Duration::from_secs(u64::MAX), false),
        ("visibility Duration::MAX", 1, Duration::MAX, false),
        ("visibility 500 ms (a whole second)", 1, Duration::from_millis(500), true),
    ];
    for (what, max, visibility, ok) in receives {
        let got = verdict(&q, what, q.receive(max, visibility).await);
        assert_eq!(got, ok, "receive, {what}");
    }
    let m = q.receive(1, 60 * S).await.unwrap().remove(0);
    let kib64 = 64 * 1024;
    #[rustfmt::skip]
    let updates: [(&str, Duration, Option<String>, bool); 9] = [
        ("visibility 0", Duration::ZERO, None, true),
        ("visibility 7 d", 7 * DAY, None, true),
        ("visibility 7 d + 1 s", 7 * DAY + S, None, false),
        ("visibility u64::MAX s", Duration::from_secs(u64::MAX), None, false),
        ("visibility Duration::MAX", Duration::MAX, None, false),
        ("text of 64 KiB", 60 * S, Some("y".repeat(kib64)), true),
        ("text of 64 KiB + 1", 60 * S, Some("y".repeat(kib64 + 1)), false),
        ("text with NUL", 60 * S, Some("a\u{0}".into()), false),
        ("empty text", 60 * S, Some(String::new()), true),
    ];
    let mut receipt = m.pop_receipt.clone();
    for (what, visibility, text, ok) in updates {
        let result = q.update(&m.id, &receipt, visibility, text.as_deref()).await;
        if let Ok(updated) = &result {
            receipt = updated.pop_receipt.clone();
        }
        assert_eq!(verdict(&q, what, result), ok, "update, {what}");
    }
    q.delete(&m.id, &receipt).await.unwrap();
}

async fn never_expiring_and_long_lived_messages_keep_their_expiry(store: Arc<dyn QueueStore>) {
    let q = common::fresh_queue(&store, "expiry").await;
    q.send("never", options(Duration::ZERO, TimeToLive::Never))
        .await
        .unwrap();
    q.send(
        "decade",
        options(Duration::ZERO, TimeToLive::After(10 * YEAR)),
    )
    .await
    .unwrap();
    let got = q.receive(32, 30 * S).await.unwrap();
    assert_eq!(got.len(), 2);
    let never = got.iter().find(|m| m.text == "never").unwrap();
    assert_eq!(never.expires_at, None, "never expires");
    let decade = got.iter().find(|m| m.text == "decade").unwrap();
    let lives = decade.expires_at.unwrap() - decade.inserted_at.unwrap();
    let want = time::Duration::try_from(10 * YEAR).unwrap();
    assert!(
        (lives - want).abs() <= time::Duration::seconds(2),
        "lives {lives}, want {want}"
    );
    // After a week (paused clock on the embedded store) both are still there.
    if store.kind() == ebbflow::store::BackendKind::Embedded {
        tokio::time::sleep(8 * DAY).await;
        assert_eq!(q.receive(32, 30 * S).await.unwrap().len(), 2);
    }
}
