//! enqueue, peek, stats and poison against the test Azurite; runtime errors.

use crate::{common, config, json, sent_ids, with};

#[test]
fn enqueue_sends_in_the_queues_encoding_and_peek_shows_it() {
    let (b64, plain) = (common::unique("b64"), common::unique("plain"));
    let dir = config(&format!(
        "[queues.{b64}]\n\n[queues.{plain}]\nencoding = \"none\"\n"
    ));
    let body = r#"{"id":7,"note":"héllo"}"#;
    // The queue does not exist yet: a runtime error naming it, with the way out.
    let run = with(&dir, &["enqueue", &b64, body]);
    assert_eq!(run.code, Some(1), "{}", run.both());
    assert!(
        run.stderr.contains(&format!("queue {b64} does not exist")),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("--create"), "{}", run.stderr);
    for queue in [&b64, &plain] {
        let run = with(&dir, &["enqueue", queue, body, "--create", "--count", "2"]);
        assert_eq!(run.code, Some(0), "{}", run.both());
        assert_eq!(sent_ids(&run).len(), 2, "{}", run.stdout);
        assert!(run.stdout.contains("trigger: none sent"), "{}", run.stdout);
        let run = with(&dir, &["peek", queue, "--count", "32", "--json"]);
        assert_eq!(run.code, Some(0), "{}", run.both());
        let peeked = json(&run);
        let peeked = peeked.as_array().unwrap();
        assert_eq!(peeked.len(), 2);
        for m in peeked {
            assert_eq!(m["body"], body);
            assert_eq!(m["dequeue_count"], 0);
            let text = m["text"].as_str().unwrap();
            if queue == &b64 {
                assert_eq!(
                    text,
                    ebbflow::codec::Encoding::Base64
                        .encode(body.as_bytes())
                        .unwrap()
                );
            } else {
                assert_eq!(text, body);
            }
        }
        let run = with(&dir, &["peek", queue]);
        assert_eq!(run.code, Some(0), "{}", run.both());
        assert!(
            run.stdout.contains(&format!("body={body}")),
            "{}",
            run.stdout
        );
    }
    // Not UTF-8: fine on base64, refused on "none" before any call; a control character too.
    let file = dir.path().join("bytes.bin");
    std::fs::write(&file, b"ab\xffcd").unwrap();
    let file = file.to_str().unwrap();
    let run = with(&dir, &["enqueue", &plain, "--file", file]);
    assert_eq!(run.code, Some(2), "{}", run.both());
    assert!(
        run.stderr.contains("is not UTF-8") && run.stderr.contains(&plain),
        "{}",
        run.stderr
    );
    let run = with(&dir, &["enqueue", &plain, "a\u{1}b"]);
    assert_eq!(run.code, Some(2), "{}", run.both());
    assert!(run.stderr.contains("cannot carry"), "{}", run.stderr);
    let run = with(&dir, &["enqueue", &b64, "--file", file]);
    assert_eq!(run.code, Some(0), "{}", run.both());
    let run = with(&dir, &["peek", &b64, "--count", "3", "--json"]);
    assert_eq!(json(&run)[2]["body_bytes"], 5, "{}", run.stdout);
}

/// A queue only a trigger can wake (`min_tasks = 0`, no idle probe; `wake_on_publish` covers only
/// the worker's own process), and no trigger configured: the message is sent, but a worker at
/// zero tasks would never see it, so that is exit 1 naming the queue and the fix; with
/// `--no-trigger` (the caller's choice) a note and exit 0.
#[test]
fn a_send_no_trigger_can_announce_to_a_zero_task_queue_is_not_a_success() {
    let (zero, probed) = (common::unique("zero"), common::unique("probed"));
    let dir = config(&format!(
        "[queues.{zero}.scaling]\nmin_tasks = 0\nwake_on_publish = true\n\n\
         [queues.{probed}.scaling]\nmin_tasks = 0\nidle_probe_interval = \"1m\"\n"
    ));
    let run = with(&dir, &["enqueue", &zero, "{}", "--create"]);
    assert_eq!(run.code, Some(1), "{}", run.both());
    assert_eq!(sent_ids(&run).len(), 1, "{}", run.stdout);
    assert!(
        run.stderr
            .contains(&format!("queue {zero} is at scaling.min_tasks = 0"))
            && run.stderr.contains("the message(s) are on the queue")
            && run
                .stderr
                .contains(&format!("queues.{zero}.scaling.idle_probe_interval")),
        "{}",
        run.stderr
    );
    let run = with(&dir, &["enqueue", &zero, "{}", "--no-trigger"]);
    assert_eq!(run.code, Some(0), "{}", run.both());
    assert!(run.stdout.contains("note: queue"), "{}", run.stdout);
    let run = with(&dir, &["peek", &zero, "--count", "32", "--json"]);
    assert_eq!(
        json(&run).as_array().map(Vec::len),
        Some(2),
        "both sends reached the queue"
    );
    // An idle probe finds it: a plain success.
    let run = with(&dir, &["enqueue", &probed, "{}", "--create"]);
    assert_eq!(run.code, Some(0), "{}", run.both());
}

#[test]
fn the_size_limit_is_checked_before_sending() {
    let (b64, plain) = (common::unique("b64"), common::unique("plain"));
    let dir = config(&format!(
        "[queues.{b64}]\n\n[queues.{plain}]\nencoding = \"none\"\n"
    ));
    // Exactly 64 KiB of text fits: 65,536 plain bytes, 49,152 bytes as base64; one more is
    // refused (exit 2, no call: the queue is not even created).
    for (queue, fits) in [(&plain, 65_536), (&b64, 49_152)] {
        let file = dir.path().join("payload");
        std::fs::write(&file, vec![b'z'; fits + 1]).unwrap();
        let run = with(
            &dir,
            &[
                "enqueue",
                queue,
                "--create",
                "--file",
                file.to_str().unwrap(),
            ],
        );
        assert_eq!(run.code, Some(2), "{}", run.both());
        assert!(
            run.stderr.contains("the service takes at most 65536"),
            "{}",
            run.stderr
        );
        let run = with(&dir, &["stats", "--json"]);
        let stats = json(&run);
        let row = stats
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["queue"] == **queue)
            .unwrap();
        assert_eq!(row["exists"], false, "refused before any call: {row}");
        std::fs::write(&file, vec![b'z'; fits]).unwrap();
        let run = with(
            &dir,
            &[
                "enqueue",
                queue,
                "--create",
                "--file",
                file.to_str().unwrap(),
            ],
        );
        assert_eq!(run.code, Some(0), "{}", run.both());
        assert!(run.stdout.contains("65536 bytes of text"), "{}", run.stdout);
        let run = with(&dir, &["peek", queue, "--json"]);
        assert_eq!(json(&run)[0]["body_bytes"], fits, "{queue}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_honours_ttl_and_delay() {
    let queue = common::unique("ttl");
    let dir = config(&format!("[queues.{queue}]\n"));
    let run = with(
        &dir,
        &[
            "enqueue", &queue, "late", "--create", "--delay", "1h", "--ttl", "2h",
        ],
    );
    assert_eq!(run.code, Some(0), "{}", run.both());
    assert!(
        run.stdout.contains("ttl 2h, visible in 1h"),
        "{}",
        run.stdout
    );
    // Hidden for its delay, yet counted.
    let run = with(&dir, &["peek", &queue]);
    assert!(run.stdout.starts_with("0 message(s)"), "{}", run.stdout);
    let run = with(&dir, &["stats", "--json"]);
    assert_eq!(json(&run)[0]["depth"], 1, "{}", run.stdout);
    let run = with(&dir, &["enqueue", &queue, "soon", "--ttl", "90m"]);
    assert_eq!(run.code, Some(0), "{}", run.both());
    // The service stamped the time to live it was given.
    let store = common::azurite();
    let got = store
        .queue(&queue)
        .unwrap()
        .receive(32, std::time::Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(got.len(), 1, "only the undelayed message is visible");
    let m = &got[0];
    let lifetime = m.expires_at.unwrap() - m.inserted_at.unwrap();
    assert_eq!(lifetime.whole_seconds(), 90 * 60, "{m:?}");
}

#[test]
fn stats_reports_depths_and_missing_queues_without_creating_them() {
    let (made, missing) = (common::unique("made"), common::unique("missing"));
    let dir = config(&format!("[queues.{made}]\n\n[queues.{missing}]\n"));
    let run = with(&dir, &["enqueue", &made, "x", "--create", "--count", "50"]);
    assert_eq!(run.code, Some(0), "{}", run.both());
    let ids: std::collections::BTreeSet<String> = sent_ids(&run).into_iter().collect();
    assert_eq!(ids.len(), 50, "{}", run.stdout);
    for _ in 0..2 {
        let run = with(&dir, &["stats", "--json"]);
        assert_eq!(run.code, Some(0), "{}", run.both());
        let rows = json(&run);
        let row = |name: &str| {
            rows.as_array()
                .unwrap()
                .iter()
                .find(|r| r["queue"] == name)
                .unwrap()
                .clone()
        };
        let made_row = row(&made);
        assert_eq!(made_row["exists"], true);
        assert_eq!(made_row["depth"], 50);
        assert_eq!(made_row["poison_queue"], format!("{made}-poison"));
        assert_eq!(made_row["poison_exists"], false);
        assert!(made_row["poison_depth"].is_null());
        let missing_row = row(&missing);
        assert_eq!(missing_row["exists"], false);
        assert!(missing_row["depth"].is_null());
    }
    let run = with(&dir, &["stats"]);
    assert_eq!(run.code, Some(0), "{}", run.both());
    let line = run.stdout.lines().find(|l| l.starts_with(&made)).unwrap();
    assert_eq!(
        line.split_whitespace().collect::<Vec<_>>(),
        [made.as_str(), "50", &format!("{made}-poison"), "missing"]
    );
}

#[test]
fn runtime_errors_exit_1_and_name_the_culprit() {
    let queue = common::unique("gone");
    let dir = config(&format!("[queues.{queue}]\n"));
    let run = with(&dir, &["peek", &queue]);
    assert_eq!(run.code, Some(1), "{}", run.both());
    assert!(
        run.stderr
            .contains(&format!("queue {queue} does not exist")),
        "{}",
        run.stderr
    );
    let run = with(
        &dir,
        &["poison", "show", "--queue", &queue, "--id", "no-such-id"],
    );
    assert_eq!(run.code, Some(1), "{}", run.both());
    assert!(
        run.stderr
            .contains(&format!("queue {queue}-poison does not exist")),
        "{}",
        run.stderr
    );
    // A trigger that cannot be delivered: the message is on the queue (its id printed), the
    // failure said, exit 1.
    let run = with(
        &dir,
        &[
            "enqueue",
            &queue,
            "x",
            "--create",
            "--trigger-url",
            "http://127.0.0.1:9",
        ],
    );
    assert_eq!(run.code, Some(1), "{}", run.both());
    assert_eq!(sent_ids(&run).len(), 1, "{}", run.stdout);
    assert!(
        run.stdout
            .contains("trigger: FAILED (http POST http://127.0.0.1:9/trigger"),
        "{}",
        run.stdout
    );
    assert!(
        run.stderr
            .contains("trigger http POST http://127.0.0.1:9/trigger failed"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_refused_account_key_is_a_runtime_error_that_shows_no_secret() {
    // Valid base64, wrong key: the service answers 403.
    let key = "V3JvbmdLZXlXcm9uZ0tleVdyb25nS2V5V3JvbmdLZXlXcm9uZ0tleVdyb25nS2V5";
    let queue = common::unique("refused");
    let dir = common::TempDir::new("cli-refused");
    std::fs::write(
        dir.path().join("default.toml"),
        format!(
            "[storage]\nconnection_string = \"DefaultEndpointsProtocol=http;AccountName={};AccountKey={key};QueueEndpoint={}\"\n\n[queues.{queue}]\n",
            ebbflow::store::DEV_ACCOUNT,
            common::azurite_url()
        ),
    )
    .unwrap();
    for args in [&["stats"][..], &["enqueue", &queue, "x"], &["peek", &queue]] {
        let run = with(&dir, args);
        assert_eq!(run.code, Some(1), "{args:?}: {}", run.both());
        assert!(
            run.stderr
                .contains(&format!("not authorized on queue {queue}"))
                // The fix: which setting holds the credentials.
                && run.stderr.contains("AccountKey")
                && run.stderr.contains("storage.connection_string"),
            "{}",
            run.stderr
        );
        assert!(
            !run.both().contains(&key[..16]),
            "the key was printed: {}",
            run.both()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_requeue_puts_the_original_text_back() {
    use ebbflow::listener::poison::{PoisonEnvelope, PoisonReason};
    let store = common::azurite();
    let queue = common::unique("requeue");
    // A stand-in trigger endpoint that records the one request the requeue should send.
    let endpoint = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = endpoint.local_addr().unwrap().port();
    let dir = config(&format!(
        "[triggers.http]\nenabled = true\nbind = \"127.0.0.1:{port}\"\n\n[queues.{queue}]\n"
    ));
    let original = ebbflow::codec::Encoding::Base64
        .encode(b"{\"id\":1}")
        .unwrap();
    let source = store.queue(&queue).unwrap();
    source.create_if_missing().await.unwrap();
    source.send(&original, Default::default()).await.unwrap();
    let received = source
        .receive(1, std::time::Duration::from_secs(30))
        .await
        .unwrap();
    let envelope = PoisonEnvelope::new(
        &queue,
        &received[0],
        PoisonReason::Rejected,
        Some("bad".into()),
    );
    let poison = store.queue(&format!("{queue}-poison")).unwrap();
    poison.create_if_missing().await.unwrap();
    poison
        .send(
            envelope.to_text(ebbflow::codec::Encoding::Base64).as_str(),
            Default::default(),
        )
        .await
        .unwrap();
    source
        .delete(&received[0].id, &received[0].pop_receipt)
        .await
        .unwrap();
    let run = with(&dir, &["stats", "--json"]);
    assert_eq!(json(&run)[0]["depth"], 0);
    assert_eq!(json(&run)[0]["poison_depth"], 1);
    let triggers = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut conn, _) = endpoint.accept().unwrap();
        conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        // Headers, then the small JSON body (it ends with '}').
        while !request.ends_with(b"}") {
            let n = conn.read(&mut buf).unwrap();
            assert!(n > 0, "the connection closed before the body");
            request.extend_from_slice(&buf[..n]);
        }
        conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\n{\"woken\":1}")
            .unwrap();
        String::from_utf8(request).unwrap()
    });
    let run = with(&dir, &["poison", "requeue", "--queue", &queue, "--all"]);
    assert_eq!(run.code, Some(0), "{}", run.both());
    assert!(
        run.stdout.contains(&format!("to {queue} as ")),
        "{}",
        run.stdout
    );
    // Requeued work wakes the source queue's workers, as an enqueue does.
    assert!(run.stdout.contains("trigger: sent"), "{}", run.stdout);
    let request = triggers.join().unwrap();
    assert!(request.starts_with("POST /trigger "), "{request}");
    assert!(
        request.contains(&format!("\"queue\":\"{queue}\""))
            && request.contains("\"payload_size\":1"),
        "{request}"
    );
    let run = with(&dir, &["peek", &queue, "--json"]);
    assert_eq!(json(&run)[0]["text"], original, "{}", run.stdout);
    let run = with(&dir, &["stats", "--json"]);
    assert_eq!(json(&run)[0]["poison_depth"], 0);
}
