//! The load-test worker as a real process against Azurite, with the ops endpoint on and
//! triggers off: probes, the parsed metrics (histograms present, counts that match the
//! messages sent), `/readyz` answering 503 through a SIGTERM drain with long handlers in
//! flight, and a second stop signal ending the drain. The JSON logs are in `json_logs`, which
//! starts its worker with this module's helpers.

use crate::common;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ebbflow::codec::Encoding;
use ebbflow::Publisher;

/// A free loopback port (bound and released; the worker binds it right after).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub(crate) fn loadtest(queue: &str, port: u16) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_loadtest"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env(
            "EBBFLOW_CONFIG_DIR",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config"),
        )
        .env(
            "AZURE_STORAGE_CONNECTION_STRING",
            common::azurite_connection_string(),
        )
        .env("QUEUE_NAME", queue)
        .env("HANDLER_MS", "20")
        .env("EBBFLOW__OBSERVABILITY__BIND", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// One sample of a text exposition: its labels and value.
#[derive(Debug)]
struct Sample {
    labels: BTreeMap<String, String>,
    value: f64,
}

/// The exposition parsed: samples by metric name, and each family's `# TYPE`.
#[derive(Debug, Default)]
pub(crate) struct Exposition {
    samples: BTreeMap<String, Vec<Sample>>,
    types: BTreeMap<String, String>,
}

impl Exposition {
    fn parse(text: &str) -> Self {
        let mut out = Self::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE line");
                out.types.insert(name.into(), kind.into());
                continue;
            }
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("sample line");
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, labels.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split(',')
                .filter(|l| !l.is_empty())
                .map(|l| {
                    let (k, v) = l.split_once('=').expect("label");
                    (k.to_string(), v.trim_matches('"').to_string())
                })
                .collect();
            let value = match value {
                "+Inf" => f64::INFINITY,
                v => v.parse().unwrap_or_else(|_| panic!("value in {line:?}")),
            };
            out.samples
                .entry(name.into())
                .or_default()
                .push(Sample { labels, value });
        }
        out
    }

    /// The value of `name` whose labels include every pair of `labels`.
    pub(crate) fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples.get(name)?.iter().find_map(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
                .then_some(s.value)
        })
    }
}

async fn get(url: &str) -> Option<(u16, String)> {
    let r = reqwest::get(url).await.ok()?;
    let status = r.status().as_u16();
    Some((status, r.text().await.ok()?))
}

pub(crate) async fn metrics(base: &str) -> Exposition {
    let (status, text) = get(&format!("{base}/metrics")).await.expect("metrics");
    assert_eq!(status, 200, "{text}");
    Exposition::parse(&text)
}

/// Waits until the worker's ops endpoint answers `/healthz`.
pub(crate) async fn wait_live(base: &str, child: &mut Child) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some((200, _)) = get(&format!("{base}/healthz")).await {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the worker exited with {status} before its ops endpoint answered");
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "ops endpoint never answered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_process_serves_probes_and_metrics_and_is_unready_through_its_drain() {
    let store = common::azurite();
    let name = common::unique("ops");
    let queue = store.queue(&name).unwrap();
    queue.create_if_missing().await.unwrap();
    let publisher = Publisher::new(queue.clone(), Encoding::Base64);
    const SENT: u64 = 40;
    for n in 0..SENT {
        publisher
            .send_bytes(format!("m{n}").as_bytes(), Default::default())
            .await
            .unwrap();
    }
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = loadtest(&name, port).spawn().unwrap();
    wait_live(&base, &mut child).await;

    // Every message handled, as the metrics say.
    let handled = [("queue", name.as_str())];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let m = loop {
        let m = metrics(&base).await;
        if m.get("ebbflow_handled_total", &handled) == Some(SENT as f64) {
            break m;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never handled {SENT}: {m:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (status, body) = get(&format!("{base}/readyz")).await.unwrap();
    assert_eq!(status, 200, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["status"], "ready", "{body}");
    for check in ["startup", "listeners", "store"] {
        assert_eq!(ready["checks"][check]["status"], "ready", "{check}: {body}");
    }
    for family in [
        "ebbflow_handler_duration_seconds",
        "ebbflow_pickup_latency_seconds",
        "ebbflow_messages_per_receive",
        "ebbflow_storage_call_duration_seconds",
    ] {
        assert_eq!(
            m.types.get(family).map(String::as_str),
            Some("histogram"),
            "{family}"
        );
    }
    let q = name.as_str();
    assert_eq!(
        m.get("ebbflow_handler_duration_seconds_count", &[("queue", q)]),
        Some(SENT as f64)
    );
    assert_eq!(
        m.get(
            "ebbflow_handler_duration_seconds_bucket",
            &[("queue", q), ("le", "+Inf")]
        ),
        Some(SENT as f64)
    );
    assert_eq!(
        m.get("ebbflow_pickup_latency_seconds_count", &[("queue", q)]),
        Some(SENT as f64)
    );
    // Messages per receive add up to the messages received.
    assert_eq!(
        m.get("ebbflow_messages_per_receive_sum", &[("queue", q)]),
        Some(SENT as f64)
    );
    assert_eq!(
        m.get("ebbflow_received_total", &[("queue", q)]),
        Some(SENT as f64)
    );
    assert_eq!(
        m.get(
            "ebbflow_storage_call_duration_seconds_count",
            &[("queue", q), ("op", "delete")]
        ),
        Some(SENT as f64)
    );
    let receives = m
        .get(
            "ebbflow_storage_call_duration_seconds_count",
            &[("queue", q), ("op", "receive")],
        )
        .unwrap();
    // The listener counts a receive when it makes it, the store layer times it when it ends:
    // a receive in flight (a task polling) is in the first only.
    let made = m
        .get("ebbflow_receive_calls_total", &[("queue", q)])
        .unwrap();
    assert!(
        receives >= 1.0 && receives <= made,
        "{receives} timed, {made} made"
    );
    // Triggers are off: none from any source.
    assert_eq!(
        m.get(
            "ebbflow_triggers_total",
            &[("queue", q), ("source", "http")]
        ),
        Some(0.0)
    );

    // Three long jobs in flight, then SIGTERM: /readyz says 503 "draining" while they finish.
    for n in 0..3 {
        publisher
            .send_bytes(
                format!("work_ms=4000;long{n}").as_bytes(),
                Default::default(),
            )
            .await
            .unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while metrics(&base)
        .await
        .get("ebbflow_in_flight", &[("queue", q)])
        != Some(3.0)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "long jobs never ran"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sigterm(&child);
    let mut saw = None;
    for _ in 0..100 {
        if let Some((503, body)) = get(&format!("{base}/readyz")).await {
            saw = Some(body);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let body = saw.expect("/readyz never answered 503 during the drain");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["reason"], "draining", "{body}");
    // The listeners stop taking work at once; their check says so in words that do not read
    // like a crash (the handlers still run).
    let mut listeners = None;
    for _ in 0..100 {
        if let Some((503, body)) = get(&format!("{base}/readyz")).await {
            let json: serde_json::Value = serde_json::from_str(&body).unwrap();
            if json["checks"]["listeners"]["status"] == "unready" {
                listeners = Some(json["checks"]["listeners"].clone());
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let listeners = listeners.expect("the listeners check stayed ready through the drain");
    assert_eq!(
        listeners["reason"],
        format!("the listener of {q} stopped for the drain"),
        "{listeners}"
    );
    assert_eq!(
        child.try_wait().unwrap(),
        None,
        "the worker exited before its handlers finished"
    );
    assert_eq!(get(&format!("{base}/healthz")).await.unwrap().0, 200);
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let final_line = text
        .lines()
        .find(|l| l.contains("final counts"))
        .unwrap_or_else(|| panic!("no final counts: {text}"));
    assert!(
        final_line.contains(&format!("handled={}", SENT + 3)),
        "{final_line}"
    );
    assert_eq!(queue.approximate_depth().await.unwrap(), 0);
}

/// A second ctrl-c (or SIGTERM) during the drain is the operator saying "now": the worker
/// aborts its handlers at once, releases their messages (nothing is lost or counted as a
/// failure) and exits 1, instead of ignoring it until `drain_timeout` (30 s) passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_stop_signal_ends_the_drain_at_once_and_releases_the_messages() {
    let store = common::azurite();
    let name = common::unique("twice");
    let queue = store.queue(&name).unwrap();
    queue.create_if_missing().await.unwrap();
    let publisher = Publisher::new(queue.clone(), Encoding::Base64);
    for n in 0..2 {
        publisher
            .send_bytes(
                format!("work_ms=600000;long{n}").as_bytes(),
                Default::default(),
            )
            .await
            .unwrap();
    }
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = loadtest(&name, port).spawn().unwrap();
    wait_live(&base, &mut child).await;
    let q = name.as_str();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while metrics(&base)
        .await
        .get("ebbflow_in_flight", &[("queue", q)])
        != Some(2.0)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "long jobs never ran"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let interrupt = || {
        let status = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    interrupt();
    // The first one starts the drain (readiness turns 503), the second ends it.
    let mut draining = false;
    for _ in 0..100 {
        if let Some((503, _)) = get(&format!("{base}/readyz")).await {
            draining = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        draining,
        "/readyz never answered 503 after the first ctrl-c"
    );
    interrupt();
    let started = std::time::Instant::now();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the second ctrl-c waited for the 30 s drain deadline: {text}"
    );
    let final_line = text
        .lines()
        .find(|l| l.contains("final counts"))
        .unwrap_or_else(|| panic!("no final counts: {text}"));
    assert!(final_line.contains("handled=0"), "{final_line}");
    // Both messages were released, visible again at once.
    let peeked = queue.peek(32).await.unwrap();
    assert_eq!(peeked.len(), 2, "{text}");
    assert!(text.contains("second stop signal received"), "{text}");
    // Each release and the last line name the second signal, not the deadline (which never
    // came).
    let released: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("message released"))
        .collect();
    assert_eq!(released.len(), 2, "{text}");
    for line in released {
        assert!(line.contains("reason=\"second stop signal\""), "{line}");
    }
    assert!(!text.contains("drain deadline passed"), "{text}");
    let stopped = text
        .lines()
        .find(|l| l.contains("worker stopped"))
        .unwrap_or_else(|| panic!("no 'worker stopped': {text}"));
    assert!(
        stopped.contains("reason=\"second stop signal\""),
        "{stopped}"
    );
}
