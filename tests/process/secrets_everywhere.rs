//! No secret in any output, for any malformed input. Every settings key that holds a secret
//! ([`ebbflow::config::SECRET_KEYS`], checked against the settings types by the runtime's own
//! tests) gets malformed values: a TOML string left open, a backslash escape TOML refuses, and
//! values of the wrong shape for its type (a typo in a connection string, a Redis URL that does
//! not parse, a token too short or with a space), through a config file and through its
//! `EBBFLOW__` variable. For each, the settings are loaded and started in process (the error's
//! `Display` and `Debug`), and the load-test worker and the `ebbflow` command line (`config
//! check`, the manifests of `deploy keda` and `deploy container-apps`, `stats`) are run on them
//! (stdout and stderr, logs at trace level in text and JSON). The secret must be in none.

use crate::common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use ebbflow::{Context, Handler, HandlerError, Settings, Worker};

/// The secret every malformed value carries; found in no output.
const SECRET: &str = "Zq9S3CRETw0rd";

/// A malformed value for `key`: as TOML source text (`toml`, written after `key = `) or as a
/// plain value (written quoted into the file, and given as the key's `EBBFLOW__` variable).
struct Case {
    key: &'static str,
    value: Value,
    /// Other keys this case needs to reach the key's own checks (`bus.kind = "redis"`).
    with: &'static [(&'static str, &'static str)],
}

enum Value {
    /// TOML source that does not parse.
    Toml(String),
    /// A string the key's type or the store refuses.
    Text(String),
}

struct Nop;
impl Handler for Nop {
    type Message = String;
    async fn handle(&self, _: String, _: Context) -> Result<(), HandlerError> {
        Ok(())
    }
}

/// Nothing reachable answers here: a store call fails at once.
const NOWHERE: &str = "http://127.0.0.1:1/acct";

fn cases() -> Vec<Case> {
    let s = SECRET;
    let mut cases = Vec::new();
    for &key in ebbflow::config::SECRET_KEYS {
        // Malformed TOML around the secret: the parser quotes the line in its error.
        for toml in [
            format!("\"unterminated-{s}-0123456789abcdef0123456789"),
            format!("\"redis://:{s}\\q@h:6379\""),
            format!("\"\"\"{s}-never-closed-0123456789abcdef"),
            format!("'{s}' trailing"),
        ] {
            cases.push(Case {
                key,
                value: Value::Toml(toml),
                with: &[],
            });
        }
        let text = |v: String| Value::Text(v);
        let (values, with): (Vec<Value>, &'static [(&str, &str)]) = match key {
            "storage.connection_string" => (
                vec![
                    text(format!("AccountName=acct;AccountKey:{s}==")),
                    text(format!("AccountName=acct;AccountKey={s}*not-base64")),
                    text(format!("AccountName=acct;{s}")),
                    text(format!("AccountName=acct; accountkey {s}==")),
                    text(format!(
                        "QueueEndpoint=not a url;SharedAccessSignature=sv=1&sig={s}"
                    )),
                    text(format!(
                        "DefaultEndpointsProtocol=http;AccountName=acct;AccountKey=a2V5;\
                         QueueEndpoint=http://u:{s}@127.0.0.1:1/acct"
                    )),
                ],
                &[("storage.startup_timeout", "1s")],
            ),
            "storage.queue_endpoint" => (
                vec![
                    text(format!("https//acct.queue.example/?sv=1&sig={s}")),
                    text(format!("ftp://u:{s}@h/acct")),
                    text(format!("http://u:{s}@127.0.0.1:1/acct")),
                    text(format!("{NOWHERE}?sv=1&sig={s}")),
                    // A SAS pasted with its separators escaped, or with none the redaction
                    // could name: the whole query is hidden.
                    text(format!("{NOWHERE}?sv=2022&amp;sig={s}")),
                    text(format!("{NOWHERE}?sv=2022;sig={s}")),
                    text(format!("{NOWHERE}?sv=2022%3Bsig%3D{s}")),
                    text(format!("https://a.queue.core.windows.net?{s}")),
                ],
                &[("storage.startup_timeout", "1s")],
            ),
            "storage.sas_token" => (
                vec![
                    text(format!("sv=1&sig={s} with a space")),
                    text(format!("?sv=1&sig={s}")),
                ],
                &[
                    ("storage.queue_endpoint", NOWHERE),
                    ("storage.startup_timeout", "1s"),
                ],
            ),
            "storage.claim_check.blob_endpoint" => (
                vec![
                    text(format!("https//acct.blob.example/?sv=1&sig={s}")),
                    text(format!("ftp://u:{s}@h/acct")),
                ],
                &[
                    ("storage.claim_check.enabled", "true"),
                    ("storage.startup_timeout", "1s"),
                ],
            ),
            "storage.claim_check.sas_token" => (
                vec![text(format!("sv=1&sig={s} with a space"))],
                &[
                    ("storage.claim_check.enabled", "true"),
                    ("storage.claim_check.blob_endpoint", "https//not a url"),
                    ("storage.startup_timeout", "1s"),
                ],
            ),
            "triggers.http.token" | "observability.metrics_token" => (
                vec![
                    text(s.to_string()),
                    text(format!("{s} with spaces in it")),
                    text(format!("{s}-0123456789\n")),
                ],
                &[("triggers.http.enabled", "true")],
            ),
            "bus.url" => (
                vec![
                    text(format!("cache.example:6380,password={s},ssl=True")),
                    text(format!("redis//:{s}@h:6379")),
                    text(format!("redis://:{s}@h:notaport")),
                    text(format!("redis://:ab/{s}@h:6379")),
                    text(format!("http://u:{s}@h:6379")),
                    text(format!("redis://u:{s}@h/notadb")),
                    text(format!("redis://u:{s}@")),
                ],
                &[("bus.kind", "redis")],
            ),
            "bus.signing_key" => (vec![text(s.to_string())], &[]),
            "bus.signing_previous_key" => (
                vec![
                    text(s.to_string()),
                    text(format!("{s}-0123456789abcdef0123456789abcdef")),
                ],
                &[],
            ),
            other => panic!("{other}: a secret key this test gives no malformed values"),
        };
        for value in values {
            cases.push(Case { key, value, with });
        }
    }
    cases
}

/// The config folder for `case`, and its `EBBFLOW__` variables (when the value goes there).
fn layout(case: &Case, dir: &Path, by_env: bool) -> BTreeMap<String, String> {
    // A key's section: every dotted key is written under its table.
    let mut lines: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut put = |key: &str, source: String| {
        let (table, name) = key.rsplit_once('.').unwrap_or(("", key));
        lines
            .entry(table.to_string())
            .or_default()
            .push(format!("{name} = {source}"));
    };
    put("queues.secrets.batch_size", "1".into());
    for (key, value) in case.with {
        let source = if *value == "true" {
            value.to_string()
        } else {
            format!("{value:?}")
        };
        put(key, source);
    }
    let mut env = BTreeMap::new();
    match (&case.value, by_env) {
        (Value::Toml(toml), _) => put(case.key, toml.clone()),
        (Value::Text(text), false) => put(case.key, toml_string(text)),
        (Value::Text(text), true) => {
            env.insert(
                format!(
                    "EBBFLOW__{}",
                    case.key.replace('.', "__").to_ascii_uppercase()
                ),
                text.clone(),
            );
        }
    }
    let mut file = String::new();
    for (table, lines) in &lines {
        if !table.is_empty() {
            file.push_str(&format!("[{table}]\n"));
        }
        for line in lines {
            file.push_str(line);
            file.push('\n');
        }
    }
    std::fs::write(dir.join("default.toml"), file).unwrap();
    env
}

/// `text` as a TOML basic string.
fn toml_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Runs `program` with `args` on the config in `dir`, logs at trace level in `format`; its
/// stdout and stderr, and whether it failed. Stopped after 20 s (nothing here should run).
async fn run(
    program: &Path,
    args: &[&str],
    dir: &Path,
    env: &BTreeMap<String, String>,
    format: &str,
) -> (String, bool) {
    let mut cmd = std::process::Command::new("timeout");
    cmd.arg("20")
        .arg(program)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("EBBFLOW_CONFIG_DIR", dir)
        .env("EBBFLOW_LOG_FORMAT", format)
        .env("RUST_LOG", "trace")
        .env("QUEUE_NAME", "secrets")
        .envs(env)
        .stdin(Stdio::null());
    let shown = format!("{} {args:?}", program.display());
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .expect("spawn");
    assert_ne!(out.status.code(), Some(124), "{shown} still ran after 20 s");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (text, !out.status.success())
}

/// Everything one case makes visible, and whether each path refused the input.
async fn outputs(case: &Case, by_env: bool, n: usize) -> Vec<(String, String)> {
    let dir = std::env::temp_dir().join(format!(
        "ebbflow-secrets-{}-{n}-{}",
        std::process::id(),
        by_env
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let env = layout(case, &dir, by_env);
    let mut seen = Vec::new();
    // In process: the load's error, or the start's.
    match Settings::load_from(&dir, &env) {
        Err(e) => seen.push(("load error".into(), format!("{e}\n{e:?}"))),
        Ok(settings) => {
            seen.push(("settings".into(), format!("{settings:?}")));
            seen.push((
                "serialized settings".into(),
                serde_json::to_string(&settings).unwrap(),
            ));
            let started = tokio::time::timeout(
                Duration::from_secs(20),
                Worker::new(settings).handler("secrets", Nop).start(),
            )
            .await
            .expect("start-up ends");
            match started {
                Err(e) => seen.push(("start error".into(), format!("{e}\n{e:?}"))),
                Ok(worker) => {
                    let report = worker.shutdown().await;
                    seen.push(("stopped worker".into(), format!("{report:?}")));
                }
            }
        }
    }
    let format = if n.is_multiple_of(2) { "json" } else { "text" };
    let (worker, failed) = run(&common::bins::loadtest(), &[], &dir, &env, format).await;
    assert!(failed, "the worker accepted {}: {worker}", case.key);
    seen.push((format!("worker ({format} logs)"), worker));
    let other = if format == "json" { "text" } else { "json" };
    // `config check` passes what loads (and prints it, redacted); `deploy` writes manifests
    // from it (references to secrets, never a value); `stats` reaches the store.
    for (args, must_fail) in [
        (&["config", "check"][..], false),
        (&["deploy", "keda"][..], false),
        (&["deploy", "container-apps"][..], false),
        (&["stats"][..], true),
    ] {
        let (cli, failed) = run(&common::bins::ebbflow_cli(), args, &dir, &env, other).await;
        assert!(
            failed || !must_fail,
            "ebbflow {args:?} accepted {}: {cli}",
            case.key
        );
        seen.push((format!("ebbflow {} ({other} logs)", args.join(" ")), cli));
    }
    std::fs::remove_dir_all(&dir).ok();
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_bearing_key_shows_its_value_in_any_output_for_any_malformed_input() {
    let cases = std::sync::Arc::new(cases());
    // A few cases at once: most end at the load, the store's at its 1 s start-up timeout.
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(4));
    let mut runs = tokio::task::JoinSet::new();
    for n in 0..cases.len() {
        let sources: &[bool] = match cases[n].value {
            Value::Toml(_) => &[false],
            Value::Text(_) => &[false, true],
        };
        for &by_env in sources {
            let (cases, slots) = (cases.clone(), slots.clone());
            runs.spawn(async move {
                let _slot = slots.acquire_owned().await.unwrap();
                let case = &cases[n];
                let source = if by_env { "its variable" } else { "the file" };
                outputs(case, by_env, n)
                    .await
                    .into_iter()
                    .filter_map(|(what, text)| {
                        let line = text.lines().find(|l| l.contains(SECRET))?;
                        Some(format!("{} via {source}, {what}: {line}", case.key))
                    })
                    .collect::<Vec<_>>()
            });
        }
    }
    let mut leaks = Vec::new();
    let mut count = 0;
    while let Some(found) = runs.join_next().await {
        leaks.extend(found.expect("a case panicked"));
        count += 1;
    }
    assert!(count > 60, "only {count} runs");
    assert!(
        leaks.is_empty(),
        "{} leak(s):\n{}",
        leaks.len(),
        leaks.join("\n")
    );
}
