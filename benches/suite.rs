//! The benchmark suite: ebbflow's load-test worker against the classic fixed listener, both as
//! processes on the same SDK, against an Azurite of the suite's own behind a request-counting
//! proxy; plus ebbflow's runtime against a hand-written loop on the embedded backend.
//!
//! `scripts/bench` runs the full suite (`cargo bench --bench suite`); without `--bench` (as in
//! `cargo test --all-targets`, which CI runs) or with `--smoke` it runs a short smoke version
//! whose figures mean nothing but whose JSON must come out. Options: `--out DIR` (default
//! `target/bench`). Writes `DIR/results.json`, `DIR/burst.svg` and prints the table.

// A benchmark reports on stdout.
#![allow(clippy::print_stdout)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::proxy::{CountSnapshot, Proxy};
use common::AzuriteProcess;
use ebbflow::codec::Encoding;
use ebbflow::config::{QueueSettings, Settings};
use ebbflow::store::azure::{AzureStore, DEV_ACCOUNT, DEV_KEY};
use ebbflow::store::memory::MemoryStore;
use ebbflow::store::{Queue, QueueStore};
use ebbflow::{Context, Handler, HandlerError, Json, Worker};
use serde_json::{json, Value};

/// The sizes of one run of the suite.
#[derive(Debug, Clone, Copy)]
struct Plan {
    full: bool,
    burst_messages: usize,
    burst_runs: usize,
    idle_warm_up: Duration,
    idle_window: Duration,
    wake_idle: Duration,
    wake_reps: usize,
    embedded_messages: usize,
    embedded_runs: usize,
}

const FULL: Plan = Plan {
    full: true,
    burst_messages: 600,
    burst_runs: 3,
    // The 30 s back-off maximum is reached about 80 s after the last work: warm up past it.
    idle_warm_up: Duration::from_secs(100),
    idle_window: Duration::from_secs(60),
    wake_idle: Duration::from_secs(45),
    wake_reps: 10,
    embedded_messages: 200_000,
    embedded_runs: 3,
};

const SMOKE: Plan = Plan {
    full: false,
    burst_messages: 40,
    burst_runs: 1,
    idle_warm_up: Duration::from_secs(2),
    idle_window: Duration::from_secs(3),
    wake_idle: Duration::from_secs(1),
    wake_reps: 2,
    embedded_messages: 1_000,
    embedded_runs: 1,
};

const HANDLER_MS: u64 = 20;
const CONCURRENCY: u32 = 8;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let full = args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--smoke");
    let out = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/bench")));
    let plan = if full { FULL } else { SMOKE };
    // `--only embedded`: just the in-process dispatch comparison (a quick check while tuning).
    if args.iter().any(|a| a == "embedded") && args.iter().any(|a| a == "--only") {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            for _ in 0..plan.embedded_runs {
                let raw = raw_loop(plan.embedded_messages).await;
                let emb = ebbflow_embedded(plan.embedded_messages).await;
                println!("raw {raw:.0}/s, ebbflow {emb:.0}/s, ratio {:.3}", emb / raw);
            }
        });
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(plan, &out));
}

/// Which consumer a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ebbflow,
    Classic,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Ebbflow => "ebbflow",
            Kind::Classic => "classic",
        }
    }
}

/// How an ebbflow worker is configured for a scenario.
#[derive(Debug, Clone, Copy)]
struct Setup {
    min_tasks: u32,
    trigger: bool,
}

struct Env {
    proxy: Proxy,
    direct: Arc<dyn QueueStore>,
    dir: PathBuf,
    client: reqwest::Client,
}

impl Env {
    fn proxy_connection_string(&self) -> String {
        format!(
            "DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={DEV_KEY};QueueEndpoint={}",
            self.proxy.url()
        )
    }
}

/// A consumer process.
struct Running {
    queue: String,
    child: Child,
    trigger_port: Option<u16>,
    record: PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn(env: &Env, kind: Kind, queue: &str, setup: Setup) -> Running {
    let record = env.dir.join(format!("{queue}.txt"));
    let _ = std::fs::remove_file(&record);
    let bin = match kind {
        Kind::Ebbflow => env!("CARGO_BIN_EXE_loadtest"),
        Kind::Classic => env!("CARGO_BIN_EXE_classic"),
    };
    let mut cmd = Command::new(bin);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("EBBFLOW_CONFIG_DIR", "/nonexistent")
        .env(
            "AZURE_STORAGE_CONNECTION_STRING",
            env.proxy_connection_string(),
        )
        .env("QUEUE_NAME", queue)
        .env("HANDLER_MS", HANDLER_MS.to_string())
        .env("LOADTEST_RECORD", &record)
        .env("LOOPS", CONCURRENCY.to_string())
        .env("POLL_MS", "1000")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let q = format!("EBBFLOW__QUEUES__{}", queue.to_uppercase());
    cmd.env(format!("{q}__CONCURRENCY"), CONCURRENCY.to_string())
        .env(format!("{q}__SCALING__MAX_TASKS"), CONCURRENCY.to_string())
        .env(
            format!("{q}__SCALING__MIN_TASKS"),
            setup.min_tasks.to_string(),
        )
        .env(format!("{q}__IDLE_BACKOFF__MAX"), "30s");
    let trigger_port = (kind == Kind::Ebbflow && setup.trigger).then(free_port);
    if let Some(port) = trigger_port {
        cmd.env("EBBFLOW__TRIGGERS__HTTP__ENABLED", "true")
            .env("EBBFLOW__TRIGGERS__HTTP__BIND", format!("127.0.0.1:{port}"));
    }
    let child = cmd.spawn().unwrap();
    Running {
        queue: queue.to_string(),
        child,
        trigger_port,
        record,
    }
}

impl Running {
    async fn wait_ready(&self) {
        if let Some(port) = self.trigger_port {
            for _ in 0..500 {
                if tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("{} did not open its trigger port", self.queue);
        }
    }

    async fn trigger(&self, client: &reqwest::Client) {
        if let Some(port) = self.trigger_port {
            client
                .post(format!("http://127.0.0.1:{port}/trigger"))
                .header("content-type", "application/json")
                .body(format!(r#"{{"queue":"{}"}}"#, self.queue))
                .send()
                .await
                .unwrap();
        }
    }

    async fn tasks(&self, client: &reqwest::Client) -> u64 {
        let Some(port) = self.trigger_port else {
            return u64::from(CONCURRENCY);
        };
        let Ok(r) = client
            .get(format!("http://127.0.0.1:{port}/metrics"))
            .send()
            .await
        else {
            return 0;
        };
        let text = r.text().await.unwrap_or_default();
        let prefix = format!("ebbflow_active_tasks{{queue=\"{}\"}} ", self.queue);
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    fn records(&self) -> Vec<(String, u128)> {
        std::fs::read_to_string(&self.record)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (body, at) = l.split_once('\t')?;
                Some((body.to_string(), at.parse().ok()?))
            })
            .collect()
    }

    fn status_kb(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    /// CPU time used so far (user + system), in clock ticks.
    fn cpu_ticks(&self) -> u64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
        let fields: Vec<&str> = after.split_whitespace().collect();
        // After the command name: state is field 3, utime 14 and stime 15 (1-based).
        let get = |i: usize| fields.get(i - 3).and_then(|v| v.parse::<u64>().ok());
        get(14).unwrap_or(0) + get(15).unwrap_or(0)
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn now_us() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros()
}

fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

async fn fresh_queue(env: &Env, name: &str) -> Arc<dyn Queue> {
    let q = env.direct.queue(name).unwrap();
    q.create_if_missing().await.unwrap();
    q
}

/// Sends `n` messages (base64 of `prefix-i`) with 16 senders, straight to Azurite (the proxy
/// counts only the consumer's calls).
async fn send_burst(queue: &Arc<dyn Queue>, prefix: &str, n: usize) -> BTreeSet<String> {
    let bodies: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
    let mut senders = tokio::task::JoinSet::new();
    for chunk in bodies.chunks(n.div_ceil(16).max(1)) {
        let (queue, chunk) = (queue.clone(), chunk.to_vec());
        senders.spawn(async move {
            for b in chunk {
                let text = Encoding::Base64.encode(b.as_bytes()).unwrap();
                queue.send(&text, Default::default()).await.unwrap();
            }
        });
    }
    while senders.join_next().await.is_some() {}
    bodies.into_iter().collect()
}

/// One point of the burst chart.
#[derive(Debug, Clone, Copy)]
struct Point {
    t: f64,
    depth: u64,
    tasks: u64,
}

#[derive(Debug, Clone)]
struct Burst {
    drain_s: f64,
    per_s: f64,
    calls_per_message: f64,
    calls: CountSnapshot,
    duplicates: usize,
    lost: usize,
    peak_rss_mb: f64,
    points: Vec<Point>,
}

async fn burst(env: &Env, kind: Kind, run: usize, n: usize) -> Burst {
    let name = format!("burst{run}{}", kind.name());
    let queue = fresh_queue(env, &name).await;
    let worker = spawn(
        env,
        kind,
        &name,
        Setup {
            min_tasks: 1,
            trigger: true,
        },
    );
    worker.wait_ready().await;
    // The worker idles first: ebbflow's task backs off, the classic loops poll every second.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = env.proxy.counts_for(&name);
    let start = Instant::now();
    let sender = {
        let queue = queue.clone();
        let name = name.clone();
        tokio::spawn(async move { send_burst(&queue, &name, n).await })
    };
    // The producer's push trigger, as soon as the first messages are on their way.
    tokio::time::sleep(Duration::from_millis(5)).await;
    worker.trigger(&env.client).await;
    let mut points = Vec::new();
    let deadline = start + Duration::from_secs(300);
    let sent = loop {
        let depth = queue.approximate_depth().await.unwrap_or(0);
        let tasks = worker.tasks(&env.client).await;
        points.push(Point {
            t: start.elapsed().as_secs_f64(),
            depth,
            tasks,
        });
        let unique: BTreeSet<String> = worker.records().into_iter().map(|r| r.0).collect();
        if sender.is_finished() && unique.len() >= n && depth == 0 {
            break unique;
        }
        assert!(Instant::now() < deadline, "burst on {name} did not drain");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let drain_s = start.elapsed().as_secs_f64();
    let calls = env.proxy.counts_for(&name).since(&before);
    let records = worker.records();
    let peak_rss_mb = worker.status_kb("VmHWM:") as f64 / 1024.0;
    worker.stop();
    let expected = sender.await.unwrap();
    let lost = expected.difference(&sent).count();
    Burst {
        drain_s,
        per_s: n as f64 / drain_s,
        calls_per_message: calls.consumer_calls() as f64 / n as f64,
        calls,
        duplicates: records.len() - sent.len(),
        lost,
        peak_rss_mb,
        points,
    }
}

#[derive(Debug, Clone)]
struct Idle {
    label: &'static str,
    receives_per_hour: f64,
    calls_per_hour: f64,
    cpu_percent: f64,
    rss_mb: f64,
}

/// The three consumers the idle and wake scenarios compare.
const SETUPS: [(&str, Kind, Setup); 3] = [
    (
        "ebbflow min_tasks=1, max 30s, no trigger",
        Kind::Ebbflow,
        Setup {
            min_tasks: 1,
            trigger: false,
        },
    ),
    (
        "ebbflow min_tasks=0, push trigger",
        Kind::Ebbflow,
        Setup {
            min_tasks: 0,
            trigger: true,
        },
    ),
    (
        "classic 8 loops, 1s poll",
        Kind::Classic,
        Setup {
            min_tasks: 1,
            trigger: false,
        },
    ),
];

/// Starts each of [`SETUPS`] on a fresh queue named after `scenario`.
async fn start_all(env: &Env, scenario: &str) -> Vec<(&'static str, Running)> {
    let mut running = Vec::new();
    for (i, (label, kind, setup)) in SETUPS.into_iter().enumerate() {
        let name = format!("{scenario}{i}{}", kind.name());
        fresh_queue(env, &name).await;
        running.push((label, spawn(env, kind, &name, setup)));
    }
    running
}

async fn idle(env: &Env, plan: Plan) -> Vec<Idle> {
    let running = start_all(env, "idle").await;
    // Some work first, so the back-off starts from a busy state, then the warm-up.
    for (_, r) in &running {
        let q = env.direct.queue(&r.queue).unwrap();
        send_burst(&q, "warm", 5).await;
        r.wait_ready().await;
        r.trigger(&env.client).await;
    }
    tokio::time::sleep(plan.idle_warm_up).await;
    let before: Vec<(CountSnapshot, u64)> = running
        .iter()
        .map(|(_, r)| (env.proxy.counts_for(&r.queue), r.cpu_ticks()))
        .collect();
    tokio::time::sleep(plan.idle_window).await;
    let hours = plan.idle_window.as_secs_f64() / 3600.0;
    let ticks = clock_ticks_per_second();
    let mut results = Vec::new();
    for ((label, r), (c0, cpu0)) in running.into_iter().zip(before) {
        let c = env.proxy.counts_for(&r.queue).since(&c0);
        let cpu = (r.cpu_ticks() - cpu0) as f64 / ticks;
        results.push(Idle {
            label,
            receives_per_hour: c.receive as f64 / hours,
            calls_per_hour: c.consumer_calls() as f64 / hours,
            cpu_percent: 100.0 * cpu / plan.idle_window.as_secs_f64(),
            rss_mb: r.status_kb("VmRSS:") as f64 / 1024.0,
        });
        r.stop();
    }
    results
}

#[derive(Debug, Clone)]
struct Wake {
    label: &'static str,
    pickups_ms: Vec<f64>,
}

async fn wake_series(env: &Env, r: &Running, plan: Plan) -> Vec<f64> {
    let queue = env.direct.queue(&r.queue).unwrap();
    r.wait_ready().await;
    let mut pickups = Vec::new();
    for rep in 0..plan.wake_reps {
        tokio::time::sleep(plan.wake_idle).await;
        let body = format!("wake-{rep}");
        let sent_at = now_us();
        let text = Encoding::Base64.encode(body.as_bytes()).unwrap();
        queue.send(&text, Default::default()).await.unwrap();
        r.trigger(&env.client).await;
        let deadline = Instant::now() + Duration::from_secs(120);
        let started = loop {
            if let Some((_, at)) = r.records().into_iter().find(|(b, _)| *b == body) {
                break at;
            }
            assert!(Instant::now() < deadline, "{body} never picked up");
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        pickups.push(started.saturating_sub(sent_at) as f64 / 1000.0);
    }
    pickups
}

async fn wake(env: &Env, plan: Plan) -> Vec<Wake> {
    let running = start_all(env, "wake").await;
    let series = futures_join(
        running
            .iter()
            .map(|(_, r)| wake_series(env, r, plan))
            .collect(),
    )
    .await;
    running
        .into_iter()
        .zip(series)
        .map(|((label, r), pickups_ms)| {
            r.stop();
            Wake { label, pickups_ms }
        })
        .collect()
}

/// Runs futures side by side on this task.
async fn futures_join<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut pinned: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, slot) in pinned.iter_mut().zip(out.iter_mut()) {
            if slot.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *slot = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(|v| v.unwrap()).collect()
}

#[derive(Debug, serde::Deserialize)]
#[allow(dead_code)]
struct Item {
    id: u64,
    pad: String,
}

struct Noop;
impl Handler for Noop {
    type Message = Json<Item>;
    async fn handle(&self, _: Json<Item>, _: Context) -> Result<(), HandlerError> {
        Ok(())
    }
}

async fn preload(store: &Arc<dyn QueueStore>, name: &str, n: usize) -> Arc<dyn Queue> {
    let q = store.queue(name).unwrap();
    q.create_if_missing().await.unwrap();
    let pad = "x".repeat(1000);
    for id in 0..n {
        let json = serde_json::to_vec(&json!({ "id": id, "pad": pad })).unwrap();
        q.send(&Encoding::Base64.encode(&json).unwrap(), Default::default())
            .await
            .unwrap();
    }
    q
}

/// A minimal receive / decode / handle / delete loop: the floor any runtime adds to.
async fn raw_loop(n: usize) -> f64 {
    let store: Arc<dyn QueueStore> = Arc::new(MemoryStore::new());
    let q = preload(&store, "raw", n).await;
    let start = Instant::now();
    let mut done = 0;
    loop {
        let batch = q.receive(32, Duration::from_secs(30)).await.unwrap();
        if batch.is_empty() {
            break;
        }
        for m in batch {
            let bytes = Encoding::Base64.decode(&m.text).unwrap();
            let _item: Item = serde_json::from_slice(&bytes).unwrap();
            q.delete(&m.id, &m.pop_receipt).await.unwrap();
            done += 1;
        }
    }
    assert_eq!(done, n);
    n as f64 / start.elapsed().as_secs_f64()
}

async fn ebbflow_embedded(n: usize) -> f64 {
    let store: Arc<dyn QueueStore> = Arc::new(MemoryStore::new());
    preload(&store, "emb", n).await;
    let mut s = Settings::default();
    s.queues.insert("emb".into(), QueueSettings::default());
    let start = Instant::now();
    let worker = Worker::new(s)
        .with_store(store)
        .handler("emb", Noop)
        .start()
        .await
        .unwrap();
    while worker.snapshot()[0].handled < n as u64 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    worker.shutdown().await;
    rate
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

/// Nearest-rank percentile.
fn percentile(values: &[f64], p: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

fn range(values: &[f64]) -> (f64, f64) {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (min, max)
}

fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map(|kb| (kb / 1024.0 / 1024.0 * 10.0).round() / 10.0);
    let cmd = |c: &str, a: &str| {
        Command::new(c)
            .arg(a)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    json!({
        "cpu": model,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "memory_gib": mem_gib,
        "kernel": cmd("uname", "-r"),
        "node": cmd("node", "--version"),
        "azurite": "3.37.0 (in memory)",
        "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
    })
}

fn burst_json(runs: &[Burst]) -> Value {
    let per_s: Vec<f64> = runs.iter().map(|b| b.per_s).collect();
    let drain: Vec<f64> = runs.iter().map(|b| b.drain_s).collect();
    let calls: Vec<f64> = runs.iter().map(|b| b.calls_per_message).collect();
    let rss: Vec<f64> = runs.iter().map(|b| b.peak_rss_mb).collect();
    json!({
        "median": {
            "messages_per_s": median(&per_s),
            "drain_s": median(&drain),
            "calls_per_message": median(&calls),
            "peak_rss_mb": median(&rss),
        },
        "range": {
            "messages_per_s": range(&per_s),
            "drain_s": range(&drain),
            "calls_per_message": range(&calls),
            "peak_rss_mb": range(&rss),
        },
        "duplicates": runs.iter().map(|b| b.duplicates).sum::<usize>(),
        "lost": runs.iter().map(|b| b.lost).sum::<usize>(),
        "runs": runs.iter().map(|b| json!({
            "drain_s": b.drain_s,
            "messages_per_s": b.per_s,
            "calls_per_message": b.calls_per_message,
            "calls": {
                "receive": b.calls.receive, "delete": b.calls.delete, "update": b.calls.update,
                "peek": b.calls.peek, "properties": b.calls.properties, "send": b.calls.send,
            },
            "duplicates": b.duplicates,
            "lost": b.lost,
            "peak_rss_mb": b.peak_rss_mb,
            "peak_tasks": b.points.iter().map(|p| p.tasks).max().unwrap_or(0),
        })).collect::<Vec<_>>(),
    })
}

/// Queue depth and active tasks over time, ebbflow against the classic listener.
fn chart(ebb: &Burst, classic: &Burst, title: &str) -> String {
    let (w, h, left, right, top, bottom) = (860.0, 340.0, 60.0, 60.0, 40.0, 60.0);
    let t_max = ebb
        .points
        .iter()
        .chain(&classic.points)
        .map(|p| p.t)
        .fold(1.0, f64::max);
    let d_max = ebb
        .points
        .iter()
        .chain(&classic.points)
        .map(|p| p.depth)
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let k_max = f64::from(CONCURRENCY);
    let x = |t: f64| left + (w - left - right) * t / t_max;
    let yd = |d: f64| top + (h - top - bottom) * (1.0 - d / d_max);
    let yk = |k: f64| top + (h - top - bottom) * (1.0 - k / k_max);
    let line = |pts: &[Point], f: &dyn Fn(&Point) -> (f64, f64), color: &str, dash: &str| {
        let coords: Vec<String> = pts
            .iter()
            .map(|p| {
                let (a, b) = f(p);
                format!("{a:.1},{b:.1}")
            })
            .collect();
        format!(
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" stroke-dasharray=\"{dash}\" points=\"{}\"/>",
            coords.join(" ")
        )
    };
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\
         <text x=\"{left}\" y=\"20\" font-size=\"14\">{title}</text>\
         <line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#999\"/>\
         <line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{}\" stroke=\"#999\"/>\
         <line x1=\"{}\" y1=\"{top}\" x2=\"{}\" y2=\"{}\" stroke=\"#999\"/>",
        h - bottom,
        w - right,
        h - bottom,
        h - bottom,
        w - right,
        w - right,
        h - bottom
    );
    for i in 0..=4 {
        let d = d_max * f64::from(i) / 4.0;
        let k = k_max * f64::from(i) / 4.0;
        svg.push_str(&format!(
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{d:.0}</text><text x=\"{}\" y=\"{:.1}\">{k:.0}</text>",
            left - 6.0,
            yd(d) + 4.0,
            w - right + 6.0,
            yk(k) + 4.0
        ));
        let t = t_max * f64::from(i) / 4.0;
        svg.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{t:.1} s</text>",
            x(t),
            h - bottom + 16.0
        ));
    }
    svg.push_str(&line(
        &ebb.points,
        &|p| (x(p.t), yd(p.depth as f64)),
        "#1f77b4",
        "",
    ));
    svg.push_str(&line(
        &classic.points,
        &|p| (x(p.t), yd(p.depth as f64)),
        "#888",
        "6,4",
    ));
    svg.push_str(&line(
        &ebb.points,
        &|p| (x(p.t), yk(p.tasks as f64)),
        "#ff7f0e",
        "",
    ));
    svg.push_str(&format!(
        "<text x=\"{}\" y=\"{}\" fill=\"#1f77b4\">ebbflow queue depth (left)</text>\
         <text x=\"{}\" y=\"{}\" fill=\"#888\">classic queue depth (left)</text>\
         <text x=\"{}\" y=\"{}\" fill=\"#ff7f0e\">ebbflow active tasks (right; classic: always 8 loops)</text></svg>",
        left,
        h - 12.0,
        left + 200.0,
        h - 12.0,
        left + 400.0,
        h - 12.0
    ));
    svg
}

async fn run(plan: Plan, out: &Path) {
    std::fs::create_dir_all(out).unwrap();
    let dir = out.join("records");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let azurite = AzuriteProcess::start();
    let proxy = Proxy::start(&azurite.url()).await;
    let direct: Arc<dyn QueueStore> =
        Arc::new(AzureStore::from_connection_string(&azurite.connection_string()).unwrap());
    let env = Env {
        proxy,
        direct,
        dir,
        client: reqwest::Client::new(),
    };
    let mode = if plan.full { "full" } else { "smoke" };
    println!(
        "ebbflow benchmark suite ({mode}), Azurite at {}",
        azurite.url()
    );

    let (mut ebb_runs, mut classic_runs) = (Vec::new(), Vec::new());
    for run in 0..plan.burst_runs {
        for kind in [Kind::Ebbflow, Kind::Classic] {
            let b = burst(&env, kind, run, plan.burst_messages).await;
            println!(
                "burst {} run {}: {:.2} s, {:.1} msg/s, {:.3} calls/msg, {} duplicates",
                kind.name(),
                run + 1,
                b.drain_s,
                b.per_s,
                b.calls_per_message,
                b.duplicates
            );
            match kind {
                Kind::Ebbflow => ebb_runs.push(b),
                Kind::Classic => classic_runs.push(b),
            }
        }
    }
    println!(
        "idle: {:?} warm-up, {:?} window",
        plan.idle_warm_up, plan.idle_window
    );
    let idle = idle(&env, plan).await;
    println!(
        "wake: {} times after {:?} idle",
        plan.wake_reps, plan.wake_idle
    );
    let wake = wake(&env, plan).await;
    let (mut raw, mut emb) = (Vec::new(), Vec::new());
    for _ in 0..plan.embedded_runs {
        raw.push(raw_loop(plan.embedded_messages).await);
        emb.push(ebbflow_embedded(plan.embedded_messages).await);
    }

    // The figures, each next to its target.
    let ebb_json = burst_json(&ebb_runs);
    let classic_json = burst_json(&classic_runs);
    let m = |v: &Value, k: &str| v["median"][k].as_f64().unwrap_or(f64::NAN);
    let speedup = m(&ebb_json, "messages_per_s") / m(&classic_json, "messages_per_s");
    let (raw_rate, emb_rate) = (median(&raw), median(&emb));
    let trig = &wake[1].pickups_ms;
    let idle_rss = idle[0].rss_mb.max(idle[1].rss_mb);
    let targets = vec![
        (
            "burst calls per message",
            m(&ebb_json, "calls_per_message"),
            "<= 1.045",
            m(&ebb_json, "calls_per_message") <= 1.045,
        ),
        ("burst msg/s vs classic", speedup, ">= 1.5x", speedup >= 1.5),
        (
            "idle receives/hour, min_tasks=1 max 30s",
            idle[0].receives_per_hour,
            "<= 120",
            idle[0].receives_per_hour <= 120.0,
        ),
        (
            "idle receives/hour, min_tasks=0 + trigger",
            idle[1].receives_per_hour,
            "== 0",
            idle[1].receives_per_hour == 0.0,
        ),
        (
            "pickup after idle with trigger, p50 ms",
            percentile(trig, 50.0),
            "<= 20",
            percentile(trig, 50.0) <= 20.0,
        ),
        (
            "pickup after idle with trigger, p99 ms",
            percentile(trig, 99.0),
            "<= 100",
            percentile(trig, 99.0) <= 100.0,
        ),
        (
            "embedded dispatch, ebbflow / raw loop",
            emb_rate / raw_rate,
            ">= 0.8",
            emb_rate / raw_rate >= 0.8,
        ),
        (
            "idle RSS of the load-test worker, MB",
            idle_rss,
            "<= 25",
            idle_rss <= 25.0,
        ),
    ];

    println!();
    println!("| burst ({} messages, {} ms work, concurrency {CONCURRENCY}, {} runs) | ebbflow median [range] | classic median [range] |", plan.burst_messages, HANDLER_MS, plan.burst_runs);
    println!("|---|---|---|");
    for (label, key, digits) in [
        ("drain time, s", "drain_s", 2),
        ("messages/s", "messages_per_s", 1),
        ("storage calls per message", "calls_per_message", 3),
        ("peak RSS, MB", "peak_rss_mb", 1),
    ] {
        let cell = |v: &Value| {
            let r = &v["range"][key];
            format!(
                "{:.*} [{:.*}-{:.*}]",
                digits,
                m(v, key),
                digits,
                r[0].as_f64().unwrap_or(f64::NAN),
                digits,
                r[1].as_f64().unwrap_or(f64::NAN)
            )
        };
        println!(
            "| {label} | {} | {} |",
            cell(&ebb_json),
            cell(&classic_json)
        );
    }
    println!(
        "| duplicates / lost | {} / {} | {} / {} |",
        ebb_json["duplicates"], ebb_json["lost"], classic_json["duplicates"], classic_json["lost"]
    );
    println!();
    println!(
        "| idle ({:?} after warm-up) | receives/hour | all calls/hour | CPU % | RSS MB |",
        plan.idle_window
    );
    println!("|---|---|---|---|---|");
    for i in &idle {
        println!(
            "| {} | {:.0} | {:.0} | {:.2} | {:.1} |",
            i.label, i.receives_per_hour, i.calls_per_hour, i.cpu_percent, i.rss_mb
        );
    }
    println!();
    println!(
        "| wake ({} times after {:?} idle) | pickup p50 ms | p99 ms | max ms |",
        plan.wake_reps, plan.wake_idle
    );
    println!("|---|---|---|---|");
    for w in &wake {
        println!(
            "| {} | {:.1} | {:.1} | {:.1} |",
            w.label,
            percentile(&w.pickups_ms, 50.0),
            percentile(&w.pickups_ms, 99.0),
            range(&w.pickups_ms).1
        );
    }
    println!();
    println!(
        "| embedded dispatch ({} x 1 KiB JSON, no-op handler) | messages/s |\n|---|---|\n| raw receive/decode/delete loop | {raw_rate:.0} |\n| ebbflow runtime | {emb_rate:.0} |",
        plan.embedded_messages
    );
    println!();
    println!("| target | measured | target | met |");
    println!("|---|---|---|---|");
    for (name, value, target, met) in &targets {
        println!(
            "| {name} | {value:.3} | {target} | {} |",
            if *met { "yes" } else { "NO" }
        );
    }

    let results = json!({
        "mode": mode,
        "machine": machine(),
        "handler_ms": HANDLER_MS,
        "concurrency": CONCURRENCY,
        "burst": {
            "messages": plan.burst_messages,
            "ebbflow": ebb_json,
            "classic": classic_json,
            "speedup": speedup,
        },
        "idle": idle.iter().map(|i| json!({
            "setup": i.label,
            "window_s": plan.idle_window.as_secs_f64(),
            "receives_per_hour": i.receives_per_hour,
            "calls_per_hour": i.calls_per_hour,
            "cpu_percent": i.cpu_percent,
            "rss_mb": i.rss_mb,
        })).collect::<Vec<_>>(),
        "wake": wake.iter().map(|w| json!({
            "setup": w.label,
            "idle_s": plan.wake_idle.as_secs_f64(),
            "pickups_ms": w.pickups_ms,
            "p50_ms": percentile(&w.pickups_ms, 50.0),
            "p99_ms": percentile(&w.pickups_ms, 99.0),
        })).collect::<Vec<_>>(),
        "embedded": {
            "messages": plan.embedded_messages,
            "raw_loop_per_s": raw,
            "ebbflow_per_s": emb,
            "ratio": emb_rate / raw_rate,
        },
        "targets": targets.iter().map(|(name, value, target, met)| json!({
            "figure": name, "measured": value, "target": target, "met": met,
        })).collect::<Vec<_>>(),
    });
    let json_path = out.join(format!("results-{mode}.json"));
    std::fs::write(&json_path, serde_json::to_string_pretty(&results).unwrap()).unwrap();
    // The chart of the median ebbflow run (by drain time) and the classic run beside it.
    let mut order: Vec<usize> = (0..ebb_runs.len()).collect();
    order.sort_by(|a, b| ebb_runs[*a].drain_s.total_cmp(&ebb_runs[*b].drain_s));
    let mid = order[order.len() / 2];
    let svg = chart(
        &ebb_runs[mid],
        &classic_runs[mid],
        &format!(
            "burst of {} messages, {} ms each, concurrency {CONCURRENCY}: ebbflow vs classic (run {})",
            plan.burst_messages,
            HANDLER_MS,
            mid + 1
        ),
    );
    let svg_path = out.join(format!("burst-{mode}.svg"));
    std::fs::write(&svg_path, svg).unwrap();
    println!();
    println!("wrote {} and {}", json_path.display(), svg_path.display());
    assert_eq!(
        ebb_json["lost"].as_u64().unwrap_or(1) + classic_json["lost"].as_u64().unwrap_or(1),
        0,
        "messages were lost"
    );
}
