//! Edges a new user hit: values the service sees rounded, secrets written loosely, sharded
//! queues whose shards changed, a config with no queues.

use crate::{common, config, ebbflow, json, with};

/// The service counts a delay and a time to live in whole seconds (a fraction rounds up), and
/// refuses a delay that is not shorter than the time to live: refused here, exit 2, before
/// any call (the queue is not even created).
#[test]
fn a_delay_that_rounds_up_to_the_ttl_is_refused_before_sending() {
    let queue = common::unique("round");
    let dir = config(&format!("[queues.{queue}]\nencoding = \"none\"\n"));
    for (ttl, delay) in [("1s", "500ms"), ("2s", "1500ms"), ("1500ms", "1200ms")] {
        let run = with(
            &dir,
            &[
                "enqueue", &queue, "x", "--create", "--ttl", ttl, "--delay", delay,
            ],
        );
        assert_eq!(
            run.code,
            Some(2),
            "--ttl {ttl} --delay {delay}: {}",
            run.both()
        );
        assert!(
            run.stderr.contains("shorter than the time to live"),
            "{}",
            run.stderr
        );
    }
    let stats = json(&with(&dir, &["stats", "--json"]));
    assert_eq!(
        stats[0]["exists"], false,
        "refused before any call: {stats}"
    );
    // One whole second apart is what the service takes.
    let run = with(
        &dir,
        &[
            "enqueue", &queue, "x", "--create", "--ttl", "3s", "--delay", "1500ms",
        ],
    );
    assert_eq!(run.code, Some(0), "{}", run.both());
}

/// The connection-string parser trims keys and values, so ` AccountKey = ...` works; its key
/// must be redacted by `config check` as well. A password in a URL's userinfo is refused
/// (Azure Storage takes none) without being shown.
#[test]
fn config_check_redacts_secrets_written_with_spaces_or_in_a_url() {
    let key = ebbflow::store::DEV_KEY;
    let dir = common::TempDir::new("cli-spaced");
    for (cs, secret, loads) in [
        (
            format!("AccountName=acct; AccountKey = {key} ;EndpointSuffix=core.windows.net"),
            key,
            true,
        ),
        (
            format!("AccountName=acct;\tAccountKey\t=\t{key};EndpointSuffix=core.windows.net"),
            key,
            true,
        ),
        (
            format!(
                "AccountName=acct;AccountKey={key};QueueEndpoint=https://user:s3cret-pass@q.example/acct"
            ),
            "s3cret-pass",
            // Refused (Azure takes no password in a URL), without showing it.
            false,
        ),
        (
            "QueueEndpoint=https://q.example/acct; SharedAccessSignature = sv=2020&sig=s3cret-sig"
                .to_string(),
            "s3cret-sig",
            true,
        ),
    ] {
        std::fs::write(
            dir.path().join("default.toml"),
            format!("[storage]\nconnection_string = \"{cs}\"\n\n[queues.orders]\n"),
        )
        .unwrap();
        for format in [&[][..], &["--json"][..]] {
            let mut args = vec!["config", "check"];
            args.extend(format);
            let run = with(&dir, &args);
            let code = if loads { 0 } else { 2 };
            assert_eq!(run.code, Some(code), "{cs}: {}", run.both());
            assert!(!run.both().contains(secret), "{cs}: {}", run.both());
            let head = secret.get(..12).unwrap_or(secret);
            assert!(!run.both().contains(head), "{cs}: {}", run.both());
            assert!(run.both().contains("<redacted>"), "{}", run.both());
        }
    }
}

/// `--trigger-url` with a password (for a proxy in front of the endpoint) never prints it.
#[test]
fn a_trigger_url_password_is_never_printed() {
    let queue = common::unique("pass");
    let dir = config(&format!("[queues.{queue}]\nencoding = \"none\"\n"));
    let run = with(
        &dir,
        &[
            "enqueue",
            &queue,
            "x",
            "--create",
            "--trigger-url",
            "http://user:s3cret-pass@127.0.0.1:1",
        ],
    );
    assert_eq!(run.code, Some(1), "{}", run.both());
    assert!(run.stdout.contains("trigger: FAILED"), "{}", run.stdout);
    assert!(!run.both().contains("s3cret-pass"), "{}", run.both());
}

/// A sharded queue whose `shards` grew before a worker created the new ones: `stats` still
/// shows the messages on the shards that exist and names the missing ones; a send that meets
/// a missing shard still reports its trigger.
#[test]
fn stats_of_a_sharded_queue_with_a_missing_shard_shows_the_others() {
    let queue = common::unique("grown");
    let two = config(&format!("[queues.{queue}]\nshards = 2\n"));
    let run = with(&two, &["enqueue", &queue, "x", "--create", "--count", "4"]);
    assert_eq!(run.code, Some(0), "{}", run.both());
    let three = config(&format!("[queues.{queue}]\nshards = 3\n"));
    let run = with(&three, &["stats", "--json"]);
    assert_eq!(run.code, Some(0), "{}", run.both());
    let row = &json(&run)[0];
    assert_eq!(row["depth"], 4, "{row}");
    assert_eq!(row["exists"], false, "{row}");
    assert_eq!(
        row["missing_shards"],
        serde_json::json!([format!("{queue}-2")]),
        "{row}"
    );
    let run = with(&three, &["stats"]);
    assert_eq!(run.code, Some(0), "{}", run.both());
    assert!(
        run.stdout.contains(&format!("{queue}-2 missing")),
        "{}",
        run.stdout
    );
    // Three sends go to shards 0, 1 and the missing 2: two land, and the trigger for them is
    // still reported.
    let run = with(
        &three,
        &[
            "enqueue",
            &queue,
            "y",
            "--count",
            "3",
            "--trigger-url",
            "http://127.0.0.1:1",
        ],
    );
    assert_eq!(run.code, Some(1), "{}", run.both());
    assert!(run.stderr.contains("2 of 3 sent"), "{}", run.stderr);
    assert!(run.stdout.contains("trigger: FAILED"), "{}", run.stdout);
}

/// A worker refuses to start without queues (exit 2); `config check` says so too instead of
/// calling such a config valid, naming the folder it read.
#[test]
fn config_check_refuses_a_config_without_queues() {
    let empty = common::TempDir::new("cli-noqueues");
    let run = with(&empty, &["config", "check"]);
    assert_eq!(run.code, Some(2), "{}", run.both());
    assert!(
        run.stderr.contains("no queues configured")
            && run.stderr.contains(empty.path().to_str().unwrap()),
        "{}",
        run.stderr
    );
    let run = ebbflow(
        &["config", "check"],
        &[("EBBFLOW_CONFIG_DIR", "/no/such/dir")],
    );
    assert_eq!(run.code, Some(2), "{}", run.both());
    assert!(run.stderr.contains("/no/such/dir"), "{}", run.stderr);
}

/// A file or standard input larger than any message is refused after reading one byte past
/// the service's limit, not after loading all of it (`/dev/zero` never ends).
#[test]
fn a_huge_file_is_refused_without_reading_it_all() {
    let queue = common::unique("huge");
    let dir = config(&format!("[queues.{queue}]\nencoding = \"none\"\n"));
    let file = dir.path().join("sparse.bin");
    std::fs::File::create(&file)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    for path in [file.to_str().unwrap(), "/dev/zero"] {
        let run = with(&dir, &["enqueue", &queue, "--create", "--file", path]);
        assert_eq!(run.code, Some(2), "{path}: {}", run.both());
        assert!(
            run.stderr.contains("more than 65536 bytes")
                && run.stderr.contains("the service takes at most 65536"),
            "{path}: {}",
            run.stderr
        );
    }
}

/// Two queues may share one poison queue: `poison requeue --queue b --all` requeues b's
/// poison messages only and leaves a's where they are (it used to send a's back to a too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requeue_all_on_a_shared_poison_queue_takes_only_that_queues_messages() {
    use ebbflow::listener::poison::{PoisonEnvelope, PoisonReason};
    let store = common::azurite();
    let (a, b, shared) = (
        common::unique("sha"),
        common::unique("shb"),
        common::unique("shp"),
    );
    let dir = config(&format!(
        "[queues.{a}]\nshards = 2\npoison_queue = \"{shared}\"\n\n\
         [queues.{b}]\npoison_queue = \"{shared}\"\n"
    ));
    let poison = store.queue(&shared).unwrap();
    poison.create_if_missing().await.unwrap();
    for queue in [&a, &b] {
        let run = with(&dir, &["enqueue", queue, "original", "--create"]);
        assert_eq!(run.code, Some(0), "{}", run.both());
        // A new producer starts at a random shard: look in each.
        let physical = if queue == &a {
            vec![format!("{a}-0"), format!("{a}-1")]
        } else {
            vec![b.clone()]
        };
        let mut found = None;
        for name in &physical {
            let source = store.queue(name).unwrap();
            let received = source
                .receive(1, std::time::Duration::from_secs(30))
                .await
                .unwrap();
            if !received.is_empty() {
                found = Some((source, received));
                break;
            }
        }
        let (source, received) = found.expect("the enqueued message is on a shard");
        let envelope = PoisonEnvelope::new(queue, &received[0], PoisonReason::Rejected, None);
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
    }
    let run = with(&dir, &["poison", "requeue", "--queue", &b, "--all"]);
    assert_eq!(run.code, Some(0), "{}", run.both());
    assert!(
        run.stdout.contains(&format!("to {b} as ")),
        "{}",
        run.stdout
    );
    assert!(
        !run.stdout.contains(&format!("to {a} as ")),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains(&format!("--queue {a}")),
        "{}",
        run.stdout
    );
    let stats = json(&with(&dir, &["stats", "--json"]));
    let depth = |q: &str| {
        stats
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["queue"] == q)
            .unwrap()
            .clone()
    };
    assert_eq!(depth(&b)["depth"], 1, "{stats}");
    assert_eq!(depth(&a)["depth"], 0, "{stats}");
    assert_eq!(depth(&a)["poison_depth"], 1, "a's copy stays: {stats}");
}
