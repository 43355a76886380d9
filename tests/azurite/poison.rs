//! Poison queue operations: list, inspect and requeue, through the API on both backends and
//! through the `ebbflow poison` CLI against Azurite.

use crate::common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ebbflow::codec::Encoding;
use ebbflow::config::{QueueSettings, Settings};
use ebbflow::listener::poison::{PoisonQueue, PoisonReason, Selection};
use ebbflow::store::QueueStore;
use ebbflow::{Context, Handler, HandlerError};

on_both_backends!(
    list_inspect_and_requeue_restore_the_original_messages,
    a_message_at_the_size_cap_reaches_the_poison_queue_unchanged,
    an_error_text_xml_cannot_carry_still_poisons_with_its_envelope,
);

/// Rejects bodies starting with "bad" until told to accept them.
#[derive(Clone, Default)]
struct Picky {
    accept_all: Arc<AtomicBool>,
}

impl Handler for Picky {
    type Message = String;
    async fn handle(&self, body: String, _: Context) -> Result<(), HandlerError> {
        if body.starts_with("bad") && !self.accept_all.load(Ordering::SeqCst) {
            return Err(HandlerError::poison(format!("{body} is not acceptable")));
        }
        Ok(())
    }
}

fn settings(queue: &str) -> Settings {
    let mut s = Settings::default();
    let mut q = QueueSettings::default();
    q.idle_backoff.max = Duration::from_millis(500);
    s.queues.insert(queue.to_string(), q);
    s.validate().unwrap();
    s
}

/// Sends "good", "bad-1", "bad-2", "bad-3" (base64, byte-exact texts kept) and lets the worker
/// poison the bad ones.
async fn poisoned(
    store: &Arc<dyn QueueStore>,
) -> (String, Vec<String>, Picky, ebbflow::worker::RunningWorker) {
    let q = common::fresh_queue(store, "pq").await;
    let mut texts = Vec::new();
    for body in ["good", "bad-1", "bad-2", "bad-3"] {
        let text = Encoding::Base64.encode(body.as_bytes()).unwrap();
        q.send(&text, Default::default()).await.unwrap();
        if body.starts_with("bad") {
            texts.push(text);
        }
    }
    let name = q.name().to_string();
    let picky = Picky::default();
    let worker = common::start(store, settings(&name), &name, picky.clone()).await;
    common::wait_for("three poisoned", Duration::from_secs(30), || {
        worker.snapshot()[0].poisoned == 3
    })
    .await;
    (name, texts, picky, worker)
}

async fn list_inspect_and_requeue_restore_the_original_messages(store: Arc<dyn QueueStore>) {
    let (name, texts, picky, worker) = poisoned(&store).await;
    let s = settings(&name);
    let poison = PoisonQueue::new(store.clone(), &name, &s.queues[&name]).unwrap();
    let records = poison.list(100).await.unwrap();
    assert_eq!(records.len(), 3);
    let bodies: BTreeSet<String> = records
        .iter()
        .map(|r| r.envelope.as_ref().unwrap().body.clone())
        .collect();
    assert_eq!(bodies, texts.iter().cloned().collect());
    let first = &records[0];
    let envelope = first.envelope.as_ref().unwrap();
    assert_eq!(envelope.reason, PoisonReason::Rejected);
    assert_eq!(envelope.queue, name);
    // Listing released them at once: inspect finds the same one, unchanged.
    let inspected = poison.inspect(&first.id).await.unwrap().expect("found");
    assert_eq!(inspected.envelope.as_ref().unwrap(), envelope);
    assert!(poison.inspect("no-such-id").await.unwrap().is_none());

    // Requeue one by id: it is handled now (the handler accepts everything).
    picky.accept_all.store(true, Ordering::SeqCst);
    let ids = [first.id.clone(), "no-such-id".to_string()];
    let report = poison
        .requeue(&Selection::Ids(ids.into_iter().collect()))
        .await
        .unwrap();
    assert_eq!(report.requeued.len(), 1);
    assert_eq!(report.requeued[0].1, name);
    assert_eq!(report.missing, vec!["no-such-id".to_string()]);
    common::wait_for("the requeued one handled", Duration::from_secs(30), || {
        worker.snapshot()[0].handled == 2
    })
    .await;
    // Then the rest.
    let report = poison.requeue(&Selection::All).await.unwrap();
    assert_eq!(report.requeued.len(), 2);
    assert!(report.skipped.is_empty());
    common::wait_for("all handled", Duration::from_secs(30), || {
        worker.snapshot()[0].handled == 4
    })
    .await;
    assert!(poison.list(100).await.unwrap().is_empty());
    worker.shutdown().await;
}

/// Rejects everything.
#[derive(Clone)]
struct Rejects;

impl Handler for Rejects {
    type Message = Vec<u8>;
    async fn handle(&self, _: Vec<u8>, _: Context) -> Result<(), HandlerError> {
        Err(HandlerError::poison("never acceptable"))
    }
}

/// A message at exactly the service's 64 KiB cap, in either encoding, is rejected and still
/// reaches the poison queue (as its original text: the envelope would not fit), the failure
/// details in the log line; a requeue puts it back unchanged.
async fn a_message_at_the_size_cap_reaches_the_poison_queue_unchanged(store: Arc<dyn QueueStore>) {
    common::captured_logs();
    for encoding in [Encoding::Base64, Encoding::None] {
        let q = common::fresh_queue(&store, "cap").await;
        // Base64 makes 3 bytes 4: 48 KiB of payload fill 64 KiB of text.
        let payload = vec![
            b'z';
            if encoding == Encoding::Base64 {
                49_152
            } else {
                65_536
            }
        ];
        let text = encoding.encode(&payload).unwrap();
        assert_eq!(text.len(), ebbflow::store::MAX_MESSAGE_BYTES);
        let sent = q.send(&text, Default::default()).await.unwrap();
        let name = q.name().to_string();
        let mut s = settings(&name);
        s.queues.get_mut(&name).unwrap().encoding = encoding;
        let worker = common::start(&store, s.clone(), &name, Rejects).await;
        common::wait_for("poisoned", Duration::from_secs(30), || {
            worker.snapshot()[0].poisoned == 1
        })
        .await;
        worker.shutdown().await;
        let poison = PoisonQueue::new(store.clone(), &name, &s.queues[&name]).unwrap();
        let records = poison.list(10).await.unwrap();
        assert_eq!(records.len(), 1, "{encoding}");
        assert!(records[0].envelope.is_err(), "no envelope fits at the cap");
        let copy = store.queue(poison.name()).unwrap().peek(1).await.unwrap();
        assert_eq!(
            copy[0].text, text,
            "the original text, unchanged ({encoding})"
        );
        assert!(
            q.peek(1).await.unwrap().is_empty(),
            "deleted from its queue"
        );
        let logs = common::captured_logs();
        let line = logs
            .lines()
            .find(|l| l.contains("message moved to poison queue") && l.contains(&sent.id))
            .unwrap_or_else(|| panic!("no log line for {}", sent.id));
        assert!(
            line.contains("original") && line.contains("never acceptable"),
            "{line}"
        );
        let report = poison.requeue(&Selection::All).await.unwrap();
        assert_eq!(report.requeued.len(), 1);
        assert_eq!(report.requeued[0].1, name);
        assert_eq!(q.peek(1).await.unwrap()[0].text, text);
    }
}

/// Rejects every message with an error text of characters XML refuses (U+FFFE, U+FFFF, NUL)
/// and, for bodies starting with "huge", 1 MiB of it.
struct XmlHostile;

impl Handler for XmlHostile {
    type Message = String;
    async fn handle(&self, body: String, _: Context) -> Result<(), HandlerError> {
        let error = format!("{body}: \u{FFFE}\u{FFFF}\u{0} from downstream");
        if body.starts_with("huge") {
            return Err(HandlerError::poison(error.repeat(40_000)));
        }
        Err(HandlerError::poison(error))
    }
}

/// With the `none` encoding, a handler's error text holding characters XML refuses does not
/// stop its message reaching the poison queue (the envelope writes them as JSON escapes), the
/// error reads back exactly, and the poison queue stays readable.
async fn an_error_text_xml_cannot_carry_still_poisons_with_its_envelope(
    store: Arc<dyn QueueStore>,
) {
    let q = common::fresh_queue(&store, "xml").await;
    for body in ["small", "huge"] {
        q.send(body, Default::default()).await.unwrap();
    }
    let name = q.name().to_string();
    let mut s = settings(&name);
    s.queues.get_mut(&name).unwrap().encoding = Encoding::None;
    let worker = common::start(&store, s.clone(), &name, XmlHostile).await;
    common::wait_for("both poisoned", Duration::from_secs(30), || {
        worker.snapshot()[0].poisoned == 2
    })
    .await;
    let snap = worker.shutdown().await.queues.remove(0);
    assert_eq!(snap.store_errors, 0, "{snap:?}");
    assert!(
        q.peek(1).await.unwrap().is_empty(),
        "deleted from its queue"
    );
    let poison = PoisonQueue::new(store.clone(), &name, &s.queues[&name]).unwrap();
    let records = poison.list(10).await.unwrap();
    assert_eq!(records.len(), 2);
    for record in records {
        let envelope = record.envelope.expect("an envelope");
        let error = envelope.error.unwrap_or_default();
        assert!(error.starts_with(&format!("{}: \u{FFFE}\u{FFFF}\u{0}", envelope.body)));
        if envelope.body == "small" {
            assert_eq!(error, "small: \u{FFFE}\u{FFFF}\u{0} from downstream");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_lists_shows_and_requeues() {
    let store = common::azurite();
    let (name, texts, _picky, worker) = poisoned(&store).await;
    worker.shutdown().await;
    let dir = common::TempDir::new("cli");
    std::fs::write(
        dir.path().join("default.toml"),
        format!("[queues.{name}]\nencoding = \"base64\"\n"),
    )
    .unwrap();
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(common::bins::ebbflow_cli())
            .env_clear()
            .env("EBBFLOW_CONFIG_DIR", dir.path())
            .env(
                "AZURE_STORAGE_CONNECTION_STRING",
                common::azurite_connection_string(),
            )
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code(), text)
    };
    let (code, text) = cli(&["poison", "list", "--queue", &name]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains(&format!("3 message(s) on {name}-poison")),
        "{text}"
    );
    assert_eq!(text.matches("rejected").count(), 3, "{text}");
    let id = text
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    let (code, shown) = cli(&["poison", "show", "--queue", &name, "--id", id]);
    assert_eq!(code, Some(0), "{shown}");
    assert!(shown.contains("\"reason\": \"rejected\""), "{shown}");
    assert!(
        shown.contains("decoded body (") && shown.contains(" bytes): bad-"),
        "{shown}"
    );
    // The id the worker's poison warning names (the message's id on its source queue) finds the
    // same copy.
    let original = shown
        .lines()
        .find_map(|l| l.trim().strip_prefix("\"message_id\": \""))
        .and_then(|rest| rest.split('"').next())
        .expect("the envelope names the source message id");
    assert_ne!(original, id);
    let (code, again) = cli(&["poison", "show", "--queue", &name, "--id", original]);
    assert_eq!(code, Some(0), "{again}");
    assert_eq!(again, shown);
    let (code, text) = cli(&["poison", "requeue", "--queue", &name, "--all"]);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(text.matches("requeued").count(), 3, "{text}");
    // Back on the source queue with their exact original text.
    let back: BTreeSet<String> = store
        .queue(&name)
        .unwrap()
        .peek(32)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.text)
        .collect();
    assert_eq!(back, texts.into_iter().collect());
    let (code, text) = cli(&["poison", "requeue", "--queue", &name]);
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("requeue needs either --all or --id"),
        "{text}"
    );
}
