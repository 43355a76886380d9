//! A new user's first hour with the CLI (issue 24): queues outside the config (`--encoding`),
//! `queue create|purge|delete`, the progress line of a many-message send, and the label of a
//! poison copy without an envelope.

use crate::{common, config, json, sent_ids, with};

#[test]
fn a_queue_outside_the_config_takes_encoding_and_the_config_wins_on_its_own() {
    let (loose, known) = (common::unique("loose"), common::unique("known"));
    let dir = config(&format!("[queues.{known}]\n"));
    // Without --encoding: the error says how to use a queue outside the config.
    let run = with(&dir, &["enqueue", &loose, "hi", "--create"]);
    assert_eq!(run.code, Some(2), "{}", run.both());
    assert!(
        run.stderr
            .contains(&format!("queue {loose} is not configured"))
            && run.stderr.contains("--encoding base64 or --encoding none"),
        "{}",
        run.stderr
    );
    for (encoding, text) in [("none", "hi"), ("base64", "aGk=")] {
        let queue = format!("{loose}-{encoding}");
        let run = with(
            &dir,
            &["enqueue", &queue, "hi", "--create", "--encoding", encoding],
        );
        assert_eq!(run.code, Some(0), "{}", run.both());
        assert_eq!(sent_ids(&run).len(), 1, "{}", run.stdout);
        let run = with(&dir, &["peek", &queue, "--json", "--encoding", encoding]);
        assert_eq!(run.code, Some(0), "{}", run.both());
        assert_eq!(json(&run)[0]["text"], text, "{}", run.stdout);
        assert_eq!(json(&run)[0]["body"], "hi", "{}", run.stdout);
    }
    // A configured queue keeps its encoding: another one is refused, naming both.
    let run = with(&dir, &["enqueue", &known, "hi", "--encoding", "none"]);
    assert_eq!(run.code, Some(2), "{}", run.both());
    assert!(
        run.stderr.contains("--encoding none")
            && run.stderr.contains("configured with encoding \"base64\""),
        "{}",
        run.stderr
    );
    // A value clap does not know lists the ones it does.
    let run = with(&dir, &["peek", &loose, "--encoding", "base-64"]);
    assert_eq!(run.code, Some(2), "{}", run.both());
    assert!(
        run.stderr.contains("base64") && run.stderr.contains("none"),
        "{}",
        run.stderr
    );
}

#[test]
fn queue_create_purge_and_delete_with_yes() {
    let queue = common::unique("trial");
    let dir = config("");
    let run = with(&dir, &["queue", "create", &queue]);
    assert_eq!(run.code, Some(0), "{}", run.both());
    assert!(
        run.stdout.contains(&format!("queue {queue} is there")),
        "{}",
        run.stdout
    );
    let run = with(
        &dir,
        &["enqueue", &queue, "x", "--count", "3", "--encoding", "none"],
    );
    assert_eq!(run.code, Some(0), "{}", run.both());
    // Purge and delete refuse without --yes, saying how to go ahead, and touch nothing.
    for verb in ["purge", "delete"] {
        let run = with(&dir, &["queue", verb, &queue]);
        assert_eq!(run.code, Some(2), "{verb}: {}", run.both());
        assert!(
            run.stderr
                .contains(&format!("ebbflow queue {verb} {queue} --yes")),
            "{}",
            run.stderr
        );
    }
    let peeked = with(
        &dir,
        &[
            "peek",
            &queue,
            "--count",
            "32",
            "--json",
            "--encoding",
            "none",
        ],
    );
    assert_eq!(
        json(&peeked).as_array().unwrap().len(),
        3,
        "{}",
        peeked.both()
    );
    let run = with(&dir, &["queue", "purge", &queue, "--yes"]);
    assert_eq!(run.code, Some(0), "{}", run.both());
    assert!(
        run.stdout.contains(&format!("purged queue {queue}")),
        "{}",
        run.stdout
    );
    let peeked = with(
        &dir,
        &[
            "peek",
            &queue,
            "--count",
            "32",
            "--json",
            "--encoding",
            "none",
        ],
    );
    assert_eq!(
        json(&peeked).as_array().unwrap().len(),
        0,
        "{}",
        peeked.both()
    );
    let run = with(&dir, &["queue", "delete", &queue, "--yes"]);
    assert_eq!(run.code, Some(0), "{}", run.both());
    assert!(
        run.stdout.contains(&format!("deleted queue {queue}")),
        "{}",
        run.stdout
    );
    // Gone: a second delete is a runtime error naming it.
    let run = with(&dir, &["queue", "delete", &queue, "--yes"]);
    assert_eq!(run.code, Some(1), "{}", run.both());
    assert!(
        run.stderr
            .contains(&format!("queue {queue} does not exist")),
        "{}",
        run.stderr
    );
    // A name the service would refuse is a usage error before any call.
    let run = with(&dir, &["queue", "create", "Bad_Name"]);
    assert_eq!(run.code, Some(2), "{}", run.both());
    assert!(run.stderr.contains("Bad_Name"), "{}", run.stderr);
}

/// A send of many messages says how far it got on stderr: with --progress when piped (here),
/// on a terminal by itself from 100 sends up; a plain piped send, and a few sends on a
/// terminal, stay quiet.
#[test]
fn a_many_message_send_shows_progress_only_when_asked_or_on_a_terminal() {
    let queue = common::unique("many");
    let dir = config("");
    let args = [
        "enqueue",
        &queue,
        "x",
        "--create",
        "--count",
        "200",
        "--encoding",
        "none",
    ];
    let run = with(&dir, &args);
    assert_eq!(run.code, Some(0), "{}", run.both());
    assert!(
        !run.stderr.contains("sent "),
        "piped and not asked: {}",
        run.stderr
    );
    let mut asked = args.to_vec();
    asked.push("--progress");
    let run = with(&dir, &asked);
    assert_eq!(run.code, Some(0), "{}", run.both());
    let last = run.stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with(&format!("sent 200 of 200 to {queue}")),
        "{}",
        run.stderr
    );
    assert_eq!(sent_ids(&run).len(), 200);
    // On a terminal (a pseudo-terminal from `script`, where it is installed), the line is
    // rewritten in place.
    if std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        let on_terminal = |count: &str| {
            let mut line = vec![env!("CARGO_BIN_EXE_ebbflow")];
            line.extend(&args);
            line[6] = count;
            line.extend(["--config", dir.path().to_str().unwrap()]);
            let out = std::process::Command::new("script")
                .args(["-qec", &line.join(" "), "/dev/null"])
                .env_clear()
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(out.status.success(), "{text}");
            text
        };
        let text = on_terminal("200");
        assert!(
            text.contains(&format!("\r\x1b[Ksent 200 of 200 to {queue}")),
            "{text:?}"
        );
        // A few sends need no progress: their summary follows at once.
        let text = on_terminal("5");
        assert!(text.contains("sent 5 message(s)"), "{text:?}");
        assert!(!text.contains("of 5 to"), "{text:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_copy_without_an_envelope_says_what_it_is_and_what_to_do() {
    let store = common::azurite();
    let queue = common::unique("bare");
    let dir = config(&format!("[queues.{queue}]\n"));
    let poison = store.queue(&format!("{queue}-poison")).unwrap();
    poison.create_if_missing().await.unwrap();
    // What a message too large for its envelope leaves: its original text.
    let original = ebbflow::codec::Encoding::Base64.encode(b"big one").unwrap();
    let sent = poison.send(&original, Default::default()).await.unwrap();
    let run = with(&dir, &["poison", "list", "--queue", &queue]);
    assert_eq!(run.code, Some(0), "{}", run.both());
    let line = run
        .stdout
        .lines()
        .find(|l| l.starts_with(&sent.id))
        .unwrap_or_else(|| panic!("{}", run.stdout));
    for said in [
        "original text only, no failure details",
        "too large to wrap in a poison envelope",
    ] {
        assert!(line.contains(said), "{said}: {line}");
    }
    // Not a JSON parser's complaint.
    assert!(
        !line.contains("line 1") && !line.contains("expected"),
        "{line}"
    );
    // What to do with it, said once under the list.
    let requeue = format!("ebbflow poison requeue --queue {queue} --id <ID>");
    assert_eq!(run.stdout.matches(&requeue).count(), 1, "{}", run.stdout);
    let run = with(
        &dir,
        &["poison", "show", "--queue", &queue, "--id", &sent.id],
    );
    assert_eq!(run.code, Some(0), "{}", run.both());
    assert!(
        run.stdout.contains("decoded body (") && run.stdout.contains(" bytes): big one"),
        "{}",
        run.stdout
    );
}

/// An endpoint that accepts connections and never answers: the first call of a command is
/// bounded by `storage.startup_timeout` (as a worker's start-up is), and the error names the
/// endpoint and the key that raises the bound, instead of minutes of silent retries.
#[test]
fn a_command_against_a_silent_endpoint_stops_at_the_startup_timeout() {
    // Connections complete in the kernel's backlog; nothing ever reads or answers them.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let dir = common::TempDir::new("cli");
    std::fs::write(
        dir.path().join("default.toml"),
        format!(
            "[storage]\nconnection_string = \"DefaultEndpointsProtocol=http;AccountName={};\
             AccountKey={};QueueEndpoint=http://127.0.0.1:{port}/{}\"\nstartup_timeout = \"1s\"\n\
             [queues.orders]\n",
            ebbflow::store::DEV_ACCOUNT,
            ebbflow::store::DEV_KEY,
            ebbflow::store::DEV_ACCOUNT,
        ),
    )
    .unwrap();
    for args in [&["enqueue", "orders", "hi"][..], &["peek", "orders"][..]] {
        let run = with(&dir, args);
        assert_ne!(run.code, Some(0), "{}", run.both());
        assert!(
            run.stderr.contains(&format!("127.0.0.1:{port}"))
                && run.stderr.contains("storage.startup_timeout")
                && !run.stderr.contains(ebbflow::store::DEV_KEY),
            "{args:?}: {}",
            run.stderr
        );
    }
    drop(silent);
}
