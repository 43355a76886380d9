//! The `ebbflow` command line as a user runs it: every command against the test Azurite (the
//! `EBBFLOW_AZURITE_URL` that scripts/test starts), exit codes, help and errors.

mod common;

use std::process::Command;

/// What a run of `ebbflow` printed and how it exited.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn both(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Runs `ebbflow args` with a clean environment plus `env`.
fn ebbflow(args: &[&str], env: &[(&str, &str)]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_ebbflow"))
        .env_clear()
        .envs(env.iter().copied())
        .args(args)
        .output()
        .unwrap();
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn every_command_has_help_that_exits_0() {
    let commands: &[&[&str]] = &[
        &[],
        &["simulate"],
        &["poison"],
        &["poison", "list"],
        &["poison", "show"],
        &["poison", "requeue"],
        &["completions"],
        &["enqueue"],
        &["peek"],
        &["stats"],
        &["config"],
        &["config", "check"],
    ];
    for command in commands {
        let mut args = command.to_vec();
        args.push("--help");
        let run = ebbflow(&args, &[]);
        assert_eq!(run.code, Some(0), "{args:?}: {}", run.both());
        assert!(
            run.stdout.contains("Usage: ebbflow"),
            "{args:?}: {}",
            run.stdout
        );
        assert!(
            run.stdout.contains("--config <DIR>"),
            "{args:?}: {}",
            run.stdout
        );
    }
}

#[test]
fn usage_errors_exit_2_and_name_the_culprit() {
    let cases: &[(&[&str], &str)] = &[
        (&[], "Usage: ebbflow"),
        (&["frobnicate"], "frobnicate"),
        (&["poison", "list"], "--queue"),
        (
            &["poison", "list", "--queue", "q", "--limit", "x"],
            "--limit",
        ),
        (
            &["poison", "requeue", "--queue", "q"],
            "requeue needs either --all or --id",
        ),
        (
            &["poison", "requeue", "--queue", "q", "--all", "--id", "a"],
            "--all",
        ),
        (&["completions", "tcsh"], "tcsh"),
        (&["simulate", "--profile", "nope.toml"], "nope.toml"),
        (&["enqueue", "orders", "x", "--count", "0"], "--count"),
        (
            &["enqueue", "orders", "x", "--delay", "8d"],
            "--delay 8days: at most 7d",
        ),
        (&["enqueue", "orders", "x", "--delay", "soon"], "--delay"),
        (&["enqueue", "orders", "x", "--ttl", "0s"], "--ttl 0s"),
        (
            &["enqueue", "orders", "x", "--ttl", "1000y"],
            "--ttl 1000years",
        ),
        (
            &["enqueue", "orders", "x", "--delay", "7d"],
            "shorter than the time to live",
        ),
        (&["enqueue", "orders"], "give the message text or --file"),
        (&["enqueue", "orders", "x", "--file", "f"], "--file"),
        (
            &["enqueue", "orders", "--file", "/no/such/file"],
            "--file /no/such/file",
        ),
        (&["peek", "orders", "--count", "33"], "--count"),
        (&["peek", "orders", "--count", "0"], "--count"),
    ];
    for (args, culprit) in cases {
        let run = ebbflow(args, &[]);
        assert_eq!(run.code, Some(2), "{args:?}: {}", run.both());
        assert!(run.stderr.contains(culprit), "{args:?}: {}", run.stderr);
    }
}

#[test]
fn a_missing_config_folder_and_the_embedded_store_are_config_errors() {
    let run = ebbflow(
        &[
            "poison",
            "list",
            "--queue",
            "orders",
            "--config",
            "/no/such/dir",
        ],
        &[],
    );
    assert_eq!(run.code, Some(2), "{}", run.both());
    assert!(
        run.stderr.contains("--config /no/such/dir"),
        "{}",
        run.stderr
    );
    let dir = common::TempDir::new("cli-embedded");
    std::fs::write(dir.path().join("default.toml"), "[queues.orders]\n").unwrap();
    let config = dir.path().to_str().unwrap();
    let run = ebbflow(
        &["poison", "list", "--queue", "orders", "--config", config],
        &[],
    );
    assert_eq!(run.code, Some(2), "{}", run.both());
    assert!(
        run.stderr.contains("embedded in-process backend"),
        "{}",
        run.stderr
    );
    let run = ebbflow(
        &["poison", "list", "--queue", "nope", "--config", config],
        &[],
    );
    assert_eq!(run.code, Some(2), "{}", run.both());
    assert!(
        run.stderr.contains("queue nope is not configured") && run.stderr.contains("orders"),
        "{}",
        run.stderr
    );
}

#[test]
fn completions_are_printed_for_each_shell() {
    for shell in ["bash", "zsh", "fish", "powershell", "elvish"] {
        let run = ebbflow(&["completions", shell], &[]);
        assert_eq!(run.code, Some(0), "{shell}: {}", run.both());
        assert!(run.stdout.contains("ebbflow"), "{shell}");
        assert!(run.stdout.contains("requeue"), "{shell}");
    }
}

/// A config folder for the test Azurite with the given queue sections (and anything else).
fn config(body: &str) -> common::TempDir {
    let dir = common::TempDir::new("cli");
    std::fs::write(
        dir.path().join("default.toml"),
        format!(
            "[storage]\nconnection_string = \"{}\"\n\n{body}",
            common::azurite_connection_string()
        ),
    )
    .unwrap();
    dir
}

/// Runs `ebbflow args --config dir`.
fn with(dir: &common::TempDir, args: &[&str]) -> Run {
    let mut all = args.to_vec();
    all.extend(["--config", dir.path().to_str().unwrap()]);
    ebbflow(&all, &[])
}

/// The ids `enqueue` printed (indented lines after "sent").
fn sent_ids(run: &Run) -> Vec<String> {
    run.stdout
        .lines()
        .filter(|l| l.starts_with("  "))
        .map(|l| l.trim().to_string())
        .collect()
}

fn json(run: &Run) -> serde_json::Value {
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", run.both()))
}

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

/// Without secrets (which print redacted), the output of `config check` is itself a config
/// with the same effective settings.
#[test]
fn config_check_prints_a_config_that_loads_back() {
    let dir = common::TempDir::new("cli-check");
    std::fs::write(
        dir.path().join("default.toml"),
        "[queues.orders]\nbatch_size = 16\nheartbeat.interval = \"1m\"\n\n[queues.orders.scaling]\n\
         depth_rules = [{ from = 0, tasks = 1 }, { from = 100, tasks = 4 }]\n\n[queues.emails]\nencoding = \"none\"\n",
    )
    .unwrap();
    let env = [("EBBFLOW__QUEUES__ORDERS__CONCURRENCY", "3")];
    let run = ebbflow(
        &["config", "check", "--config", dir.path().to_str().unwrap()],
        &env,
    );
    assert_eq!(run.code, Some(0), "{}", run.both());
    let again = common::TempDir::new("cli-again");
    std::fs::write(again.path().join("default.toml"), &run.stdout).unwrap();
    let reloaded = ebbflow::Settings::load_from(again.path(), &Default::default())
        .unwrap_or_else(|e| panic!("{e}: {}", run.stdout));
    let orders = &reloaded.queues["orders"];
    assert_eq!((orders.batch_size, orders.concurrency), (16, 3));
    assert_eq!(orders.scaling.depth_rules.len(), 2);
    assert_eq!(
        orders.heartbeat.interval,
        Some(std::time::Duration::from_secs(60))
    );
    let rerun = ebbflow(
        &[
            "config",
            "check",
            "--config",
            again.path().to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(rerun.code, Some(0), "{}", rerun.both());
    let body = |text: &str| text.split_once('\n').unwrap().1.to_string();
    assert_eq!(body(&rerun.stdout), body(&run.stdout));
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
            ebbflow::store::azure::DEV_ACCOUNT,
            common::azurite_url()
        ),
    )
    .unwrap();
    for args in [&["stats"][..], &["enqueue", &queue, "x"], &["peek", &queue]] {
        let run = with(&dir, args);
        assert_eq!(run.code, Some(1), "{args:?}: {}", run.both());
        assert!(
            run.stderr
                .contains(&format!("not authorized on queue {queue}")),
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

#[test]
fn config_check_names_a_bad_key_and_prints_no_secret() {
    let dir = common::TempDir::new("cli-check");
    let file = dir.path().join("default.toml");
    for (body, key) in [
        (
            "[queues.orders]\nbatch_size = 64\n",
            "queues.orders.batch_size",
        ),
        ("[queues.orders]\nbach_size = 8\n", "bach_size"),
        (
            "[triggers.http]\nenabled = true\ntoken = \"short\"\n",
            "triggers.http.token",
        ),
        (
            "[storage]\nconnection_string = \"AccountName=a;AccountKey=not base64!!\"\n",
            "storage.connection_string",
        ),
    ] {
        std::fs::write(&file, body).unwrap();
        let run = with(&dir, &["config", "check"]);
        assert_eq!(run.code, Some(2), "{body}: {}", run.both());
        assert!(run.stderr.contains(key), "{body}: {}", run.stderr);
        assert!(run.stdout.is_empty(), "{body}: {}", run.stdout);
    }
    let key = ebbflow::store::azure::DEV_KEY;
    let token = "trigger-token-0123456789";
    std::fs::write(
        &file,
        format!(
            "[storage]\nconnection_string = \"AccountName=acct;AccountKey={key};EndpointSuffix=core.windows.net\"\n\n\
             [triggers.http]\nenabled = true\ntoken = \"{token}\"\n\n[queues.orders]\nbatch_size = 16\n"
        ),
    )
    .unwrap();
    // An environment override takes part, as in a worker.
    let config = dir.path().to_str().unwrap();
    let metrics_token = "metrics-token-0123456789";
    let env = [
        ("EBBFLOW__QUEUES__ORDERS__CONCURRENCY", "3"),
        ("EBBFLOW__OBSERVABILITY__METRICS_TOKEN", metrics_token),
    ];
    for format in [&[][..], &["--json"][..]] {
        let mut args = vec!["config", "check", "--config", config];
        args.extend(format);
        let run = ebbflow(&args, &env);
        assert_eq!(run.code, Some(0), "{}", run.both());
        for secret in [key, token, &key[..20], metrics_token] {
            assert!(
                !run.both().contains(secret),
                "a secret was printed: {}",
                run.both()
            );
        }
        assert!(
            run.stdout
                .contains("AccountName=acct;AccountKey=<redacted>"),
            "{}",
            run.stdout
        );
        if format.is_empty() {
            assert!(
                run.stdout
                    .contains("[queues.orders]\nbatch_size = 16\nconcurrency = 3\n"),
                "{}",
                run.stdout
            );
        } else {
            let settings = json(&run);
            assert_eq!(settings["queues"]["orders"]["batch_size"], 16);
            assert_eq!(settings["queues"]["orders"]["concurrency"], 3);
            assert_eq!(settings["queues"]["orders"]["visibility_timeout"], "30s");
            assert_eq!(settings["triggers"]["http"]["token"], "<redacted>");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_requeue_puts_the_original_text_back() {
    use ebbflow::listener::poison::{PoisonEnvelope, PoisonReason};
    let store = common::azurite();
    let queue = common::unique("requeue");
    let dir = config(&format!("[queues.{queue}]\n"));
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
    let run = with(&dir, &["poison", "requeue", "--queue", &queue, "--all"]);
    assert_eq!(run.code, Some(0), "{}", run.both());
    assert!(
        run.stdout.contains(&format!("to {queue} as ")),
        "{}",
        run.stdout
    );
    let run = with(&dir, &["peek", &queue, "--json"]);
    assert_eq!(json(&run)[0]["text"], original, "{}", run.stdout);
    let run = with(&dir, &["stats", "--json"]);
    assert_eq!(json(&run)[0]["poison_depth"], 0);
}

/// A free port on loopback (bound, then released for the worker to take).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills the child process when dropped.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The load-test worker at min_tasks = 0 with the HTTP trigger endpoint on: a message sent
/// with `--no-trigger` waits (nothing polls), and `enqueue` with the configured trigger wakes
/// the worker, which then handles both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_with_the_http_trigger_wakes_an_idle_worker() {
    let queue = common::unique("wake");
    let port = free_port();
    let token = "wake-token-0123456789";
    let dir = config(&format!(
        "[triggers.http]\nenabled = true\nbind = \"0.0.0.0:{port}\"\ntoken = \"{token}\"\n\n\
         [queues.{queue}]\nencoding = \"none\"\n\n[queues.{queue}.idle_backoff]\nmax = \"200ms\"\n\n\
         [queues.{queue}.scaling]\nmin_tasks = 0\n"
    ));
    let record = dir.path().join("handled.txt");
    let _worker = KillOnDrop(
        std::process::Command::new(env!("CARGO_BIN_EXE_loadtest"))
            .env_clear()
            .env("EBBFLOW_CONFIG_DIR", dir.path())
            .env("QUEUE_NAME", &queue)
            .env("HANDLER_MS", "1")
            .env("LOADTEST_RECORD", &record)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Up, and at zero tasks (its first task retired at the back-off maximum).
    let client = reqwest::Client::new();
    let metrics = format!("http://127.0.0.1:{port}/metrics");
    let idle = format!("ebbflow_active_tasks{{queue=\"{queue}\"}} 0\n");
    common::wait_for_async(
        "the worker at zero tasks",
        std::time::Duration::from_secs(60),
        || async {
            match client.get(&metrics).bearer_auth(token).send().await {
                Ok(r) => r.text().await.is_ok_and(|t| t.contains(&idle)),
                Err(_) => false,
            }
        },
    )
    .await;
    let handled = || std::fs::read_to_string(&record).unwrap_or_default();
    let run = with(&dir, &["enqueue", &queue, "first", "--no-trigger"]);
    assert_eq!(run.code, Some(0), "{}", run.both());
    assert!(
        run.stdout.contains("trigger: none sent (--no-trigger)"),
        "{}",
        run.stdout
    );
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(handled(), "", "nothing polls at zero tasks");
    let run = with(&dir, &["enqueue", &queue, "second"]);
    assert_eq!(run.code, Some(0), "{}", run.both());
    assert!(
        run.stdout.contains(&format!("trigger: sent (http POST http://127.0.0.1:{port}/trigger: 202 Accepted, woke 1 listener(s))")),
        "{}",
        run.stdout
    );
    common::wait_for("both handled", std::time::Duration::from_secs(30), || {
        let h = handled();
        h.contains("first\t") && h.contains("second\t")
    })
    .await;
    assert!(!run.both().contains(token));
}
