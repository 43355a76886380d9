//! The suite's surroundings: its own Azurite behind the counting proxy, consumer processes
//! (ebbflow's load-test worker or the classic listener) with their settings, sending, push
//! triggers, and reading back the load-test records.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use crate::common::proxy::Proxy;
use crate::common::AzuriteProcess;
use ebbflow::codec::Encoding;
use ebbflow::config::RetrySettings;
use ebbflow::store::RetryingStore;
use ebbflow::store::{AzureStore, DEV_ACCOUNT, DEV_KEY};
use ebbflow::store::{Queue, QueueStore};

/// Simulated work per message unless a scenario says otherwise, ms.
pub const HANDLER_MS: u64 = 20;
/// Concurrency (and most tasks) of ebbflow, loops of the classic listener, unless a scenario
/// says otherwise.
pub const CONCURRENCY: u32 = 8;

/// Azurite, the proxy in front of it, a direct (uncounted) store for producers, and the folder
/// the consumers' records go to.
pub struct Env {
    // Dropped after the proxy (fields drop in order), so no request meets a dead upstream.
    pub proxy: Proxy,
    pub direct: Arc<dyn QueueStore>,
    pub dir: PathBuf,
    pub client: reqwest::Client,
    /// `--set KEY=VALUE` settings, applied to every ebbflow worker after the scenario's own.
    pub overrides: Vec<(String, String)>,
    pub azurite: AzuriteProcess,
}

impl Env {
    /// Starts Azurite and the proxy; records go to `dir` (emptied first).
    pub async fn start(dir: PathBuf, overrides: Vec<(String, String)>) -> Env {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let azurite = AzuriteProcess::start();
        let proxy = Proxy::start(&azurite.url()).await;
        // Producers retry transient faults as ebbflow's own publishers do: Azurite sometimes
        // resets a pooled connection it has just closed, and a lost send would stall a scenario.
        let direct = RetryingStore::wrap(
            Arc::new(AzureStore::from_connection_string(&azurite.connection_string()).unwrap()),
            RetrySettings::default(),
        );
        Env {
            proxy,
            direct,
            dir,
            client: reqwest::Client::new(),
            overrides,
            azurite,
        }
    }

    fn proxy_connection_string(&self) -> String {
        format!(
            "DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={DEV_KEY};QueueEndpoint={}",
            self.proxy.url()
        )
    }

    /// A created queue, reached directly (the proxy does not count producers).
    pub async fn fresh_queue(&self, name: &str) -> Arc<dyn Queue> {
        let q = self.direct.queue(name).unwrap();
        q.create_if_missing().await.unwrap();
        q
    }
}

/// Which consumer a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ebbflow,
    Classic,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Ebbflow => "ebbflow",
            Kind::Classic => "classic",
        }
    }
}

/// How a consumer is configured for a scenario.
#[derive(Debug, Clone)]
pub struct Setup {
    pub min_tasks: u32,
    /// The HTTP trigger endpoint (and `/metrics`) on a free port; it makes the queue
    /// trigger-covered.
    pub trigger: bool,
    pub handler_ms: u64,
    /// ebbflow's `concurrency` and `max_tasks`; the classic listener's loops.
    pub concurrency: u32,
    /// Further settings: `(KEY, value)` as `EBBFLOW__QUEUES__<NAME>__KEY`; a key starting with
    /// `EBBFLOW__`, or `RUST_LOG`, is set as it is.
    pub settings: Vec<(&'static str, String)>,
}

impl Setup {
    pub fn new(min_tasks: u32, trigger: bool) -> Self {
        Self {
            min_tasks,
            trigger,
            handler_ms: HANDLER_MS,
            concurrency: CONCURRENCY,
            settings: Vec::new(),
        }
    }

    pub fn handler_ms(mut self, ms: u64) -> Self {
        self.handler_ms = ms;
        self
    }

    pub fn concurrency(mut self, n: u32) -> Self {
        self.concurrency = n;
        self
    }

    pub fn with(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.settings.push((key, value.into()));
        self
    }
}

/// Where a worker's push triggers go.
#[derive(Debug, Clone)]
pub struct Trigger {
    url: String,
    body: String,
}

impl Trigger {
    /// Posts one work-detected event.
    pub async fn send(&self, client: &reqwest::Client) {
        client
            .post(&self.url)
            .header("content-type", "application/json")
            .body(self.body.clone())
            .send()
            .await
            .unwrap();
    }
}

/// A consumer process.
pub struct Running {
    pub queue: String,
    child: Child,
    trigger_port: Option<u16>,
    concurrency: u32,
    record: PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts a consumer of `queue` through the proxy.
pub fn spawn(env: &Env, kind: Kind, queue: &str, setup: &Setup) -> Running {
    spawn_named(env, kind, queue, queue, setup)
}

/// Starts a consumer of `queue` through the proxy, recording to `<name>.txt` (several replicas
/// of one queue each keep their own record).
pub fn spawn_named(env: &Env, kind: Kind, queue: &str, name: &str, setup: &Setup) -> Running {
    let record = env.dir.join(format!("{name}.txt"));
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
        .env("HANDLER_MS", setup.handler_ms.to_string())
        .env("LOADTEST_RECORD", &record)
        .env("LOOPS", setup.concurrency.to_string())
        .env("POLL_MS", "1000")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let q = format!("EBBFLOW__QUEUES__{}", queue.to_uppercase());
    cmd.env(format!("{q}__CONCURRENCY"), setup.concurrency.to_string())
        .env(
            format!("{q}__SCALING__MAX_TASKS"),
            setup.concurrency.to_string(),
        )
        .env(
            format!("{q}__SCALING__MIN_TASKS"),
            setup.min_tasks.to_string(),
        )
        .env(format!("{q}__IDLE_BACKOFF__MAX"), "30s");
    let overrides = match kind {
        Kind::Ebbflow => &env.overrides[..],
        Kind::Classic => &[],
    };
    let settings = setup.settings.iter().map(|(k, v)| (*k, v.as_str()));
    for (key, value) in settings.chain(overrides.iter().map(|(k, v)| (k.as_str(), v.as_str()))) {
        if key.starts_with("EBBFLOW__") || key == "RUST_LOG" {
            cmd.env(key, value);
        } else {
            cmd.env(format!("{q}__{key}"), value);
        }
    }
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
        concurrency: setup.concurrency,
        record,
    }
}

impl Running {
    /// Waits until the trigger endpoint accepts connections (the worker has started).
    pub async fn wait_ready(&self) {
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

    /// Its trigger endpoint, if it has one.
    pub fn trigger_target(&self) -> Option<Trigger> {
        self.trigger_port.map(|port| Trigger {
            url: format!("http://127.0.0.1:{port}/trigger"),
            body: format!(r#"{{"queue":"{}"}}"#, self.queue),
        })
    }

    /// One push trigger, if it has an endpoint.
    pub async fn trigger(&self, client: &reqwest::Client) {
        if let Some(t) = self.trigger_target() {
            t.send(client).await;
        }
    }

    /// A per-queue gauge from `/metrics` (e.g. `active_tasks`, `in_flight`); 0 when it cannot
    /// be read.
    pub async fn gauge(&self, client: &reqwest::Client, name: &str) -> u64 {
        let Some(port) = self.trigger_port else {
            return 0;
        };
        let Ok(r) = client
            .get(format!("http://127.0.0.1:{port}/metrics"))
            .send()
            .await
        else {
            return 0;
        };
        let text = r.text().await.unwrap_or_default();
        let prefix = format!("ebbflow_{name}{{queue=\"{}\"}} ", self.queue);
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Active dequeue tasks (the classic listener: always its loops).
    pub async fn tasks(&self, client: &reqwest::Client) -> u64 {
        if self.trigger_port.is_none() {
            return u64::from(self.concurrency);
        }
        self.gauge(client, "active_tasks").await
    }

    /// The record file's lines so far: payload and handler start (Unix µs).
    pub fn records(&self) -> Vec<(String, u128)> {
        read_records(&self.record)
    }

    /// When `body`'s handler first started, if it has been recorded.
    pub fn started(&self, body: &str) -> Option<u128> {
        self.records()
            .into_iter()
            .filter(|(b, _)| b == body)
            .map(|(_, at)| at)
            .min()
    }

    pub fn status_kb(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    /// CPU time used so far (user + system), in clock ticks.
    pub fn cpu_ticks(&self) -> u64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
        let fields: Vec<&str> = after.split_whitespace().collect();
        // After the command name: state is field 3, utime 14 and stime 15 (1-based).
        let get = |i: usize| fields.get(i - 3).and_then(|v| v.parse::<u64>().ok());
        get(14).unwrap_or(0) + get(15).unwrap_or(0)
    }

    /// Stops it, then reads its records (so nothing it did is missed).
    pub fn stop_and_read(self) -> Vec<(String, u128)> {
        let record = self.record.clone();
        self.stop();
        read_records(&record)
    }

    /// SIGTERM, then SIGKILL if it has not exited within 5 s.
    pub fn stop(mut self) {
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

impl Drop for Running {
    /// A scenario that panics must not leave its worker running.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A record file: one line per handler run, the payload, a tab, its start in Unix µs.
fn read_records(path: &std::path::Path) -> Vec<(String, u128)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (body, at) = l.split_once('\t')?;
            Some((body.to_string(), at.parse().ok()?))
        })
        .collect()
}

/// Duplicates and losses, from the records against what was sent.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tally {
    /// Handler runs beyond the first, over all payloads.
    pub duplicates: usize,
    /// Sent payloads never recorded.
    pub lost: usize,
}

impl Tally {
    pub fn of(sent: &BTreeSet<String>, records: &[(String, u128)]) -> Tally {
        let mut runs: BTreeMap<&str, usize> = BTreeMap::new();
        for (body, _) in records {
            *runs.entry(body.as_str()).or_default() += 1;
        }
        Tally {
            duplicates: runs.values().map(|n| n - 1).sum(),
            lost: sent
                .iter()
                .filter(|b| !runs.contains_key(b.as_str()))
                .count(),
        }
    }
}

pub fn now_us() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros()
}

pub fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// Sends one message (base64 of `body`, as the workers expect).
pub async fn send(queue: &Arc<dyn Queue>, body: &str) {
    let text = Encoding::Base64.encode(body.as_bytes()).unwrap();
    queue.send(&text, Default::default()).await.unwrap();
}

/// Sends `n` messages (`prefix-i`) with 16 senders, straight to Azurite (the proxy counts only
/// the consumer's calls).
pub async fn send_burst(queue: &Arc<dyn Queue>, prefix: &str, n: usize) -> BTreeSet<String> {
    let bodies: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
    let mut senders = tokio::task::JoinSet::new();
    for chunk in bodies.chunks(n.div_ceil(16).max(1)) {
        let (queue, chunk) = (queue.clone(), chunk.to_vec());
        senders.spawn(async move {
            for b in chunk {
                send(&queue, &b).await;
            }
        });
    }
    while senders.join_next().await.is_some() {}
    bodies.into_iter().collect()
}

/// Polls every 100 ms until every payload of `sent` is recorded and the queue is empty (its
/// approximate count includes invisible messages, so every delete has landed); panics after
/// `limit`.
pub async fn drained(
    queue: &Arc<dyn Queue>,
    worker: &Running,
    sent: &BTreeSet<String>,
    limit: Duration,
) {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let depth = queue.approximate_depth().await.unwrap_or(u64::MAX);
        if depth == 0 && Tally::of(sent, &worker.records()).lost == 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} did not drain within {limit:?}",
            worker.queue
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The three consumers the idle and wake scenarios compare.
pub fn idle_setups() -> [(&'static str, Kind, Setup); 3] {
    [
        (
            "ebbflow min_tasks=1, max 30s, no trigger",
            Kind::Ebbflow,
            Setup::new(1, false),
        ),
        (
            "ebbflow min_tasks=0, push trigger",
            Kind::Ebbflow,
            Setup::new(0, true),
        ),
        (
            "classic 8 loops, 1s poll",
            Kind::Classic,
            Setup::new(1, false),
        ),
    ]
}

/// Starts each of [`idle_setups`] on a fresh queue named after `scenario`.
pub async fn start_all(env: &Env, scenario: &str) -> Vec<(&'static str, Running)> {
    let mut running = Vec::new();
    for (i, (label, kind, setup)) in idle_setups().into_iter().enumerate() {
        let name = format!("{scenario}{i}{}", kind.name());
        env.fresh_queue(&name).await;
        running.push((label, spawn(env, kind, &name, &setup)));
    }
    running
}

/// Runs futures side by side on this task.
pub async fn join_all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
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
