//! Fault injection against Azurite: a proxy that answers 503s, adds latency and cuts
//! connections; a proxy that loses deletes (re-delivery); Azurite killed and restarted while
//! the worker runs; the worker process killed with SIGKILL mid-batch and started again.
//! Each test prints the messages lost (must be 0) and the duplicates, with their cause.

// Each test reports its counts (lost, duplicates, statuses) on stdout, shown with --nocapture.
#![allow(clippy::print_stdout)]

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::proxy::{Faults, Proxy};
use common::AzuriteProcess;
use ebbflow::config::QueueSettings;
use ebbflow::store::{AzureStore, DEV_ACCOUNT, DEV_KEY};
use ebbflow::store::{Queue, QueueStore};
use ebbflow::{Context, Handler, HandlerError, Settings};

/// Records every body it handles.
#[derive(Clone, Default)]
struct Recorder {
    seen: Arc<Mutex<Vec<String>>>,
    work: Duration,
}

impl Handler for Recorder {
    type Message = String;
    async fn handle(&self, body: String, _: Context) -> Result<(), HandlerError> {
        tokio::time::sleep(self.work).await;
        self.seen.lock().unwrap().push(body);
        Ok(())
    }
}

/// (lost, duplicates) of `records` against the bodies `sent`.
fn tally(sent: &BTreeSet<String>, records: &[String]) -> (usize, usize) {
    let unique: BTreeSet<&String> = records.iter().collect();
    let lost = sent.iter().filter(|b| !unique.contains(b)).count();
    (lost, records.len() - unique.len())
}

fn store_at(url: &str) -> Arc<dyn QueueStore> {
    let cs = format!(
        "DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={DEV_KEY};QueueEndpoint={url}"
    );
    // The same cut-off as the retry settings, so the service's own timeout stays below it.
    Arc::new(
        AzureStore::from_connection_string(&cs)
            .unwrap()
            .with_try_cutoff(Duration::from_secs(10)),
    )
}

fn settings(queue: &str, visibility: Duration) -> Settings {
    let mut s = Settings::default();
    s.storage.retry.max_attempts = 8;
    s.storage.retry.min_delay = Duration::from_millis(20);
    s.storage.retry.max_delay = Duration::from_millis(500);
    s.storage.retry.request_timeout = Duration::from_secs(10);
    let mut q = QueueSettings::default();
    q.visibility_timeout = visibility;
    q.encoding = ebbflow::codec::Encoding::None;
    q.idle_backoff.max = Duration::from_millis(500);
    q.scaling.max_tasks = ebbflow::config::MaxTasks::of::<4>();
    s.queues.insert(queue.to_string(), q);
    s.validate().unwrap();
    s
}

async fn send_all(queue: &Arc<dyn Queue>, prefix: &str, n: usize) -> BTreeSet<String> {
    let mut sent = BTreeSet::new();
    for i in 0..n {
        let body = format!("{prefix}-{i}");
        queue.send(&body, Default::default()).await.unwrap();
        sent.insert(body);
    }
    sent
}

async fn wait_all_seen(recorder: &Recorder, sent: &BTreeSet<String>, limit: Duration) {
    let seen = recorder.seen.clone();
    let sent = sent.clone();
    common::wait_for("every message handled", limit, move || {
        let records = seen.lock().unwrap();
        tally(&sent, &records).0 == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_503s_latency_and_cut_connections_lose_nothing() {
    let proxy = Proxy::start(&common::azurite_url()).await;
    let direct = common::azurite();
    let name = common::unique("faults");
    let queue = direct.queue(&name).unwrap();
    queue.create_if_missing().await.unwrap();
    let sent = send_all(&queue, "m", 120).await;
    proxy.set_faults(Faults {
        busy_every: Some(7),
        drop_every: Some(11),
        latency: Duration::from_millis(5),
        ..Faults::default()
    });
    let recorder = Recorder {
        work: Duration::from_millis(5),
        ..Recorder::default()
    };
    let via_proxy = store_at(&proxy.url());
    let worker = common::start(
        &via_proxy,
        settings(&name, Duration::from_secs(3)),
        &name,
        recorder.clone(),
    )
    .await;
    wait_all_seen(&recorder, &sent, Duration::from_secs(90)).await;
    proxy.set_faults(Faults::default());
    // Settled too: nothing left visible or invisible on the queue, nothing poisoned.
    common::wait_for_async("queue empty", Duration::from_secs(30), || async {
        queue.approximate_depth().await.unwrap() == 0
    })
    .await;
    let snap = worker.snapshot().remove(0);
    let unknown = worker.unknown_outcomes().remove(0).1;
    assert!(worker.fatal_error().is_none());
    let report = worker.shutdown().await;
    let records = recorder.seen.lock().unwrap().clone();
    let (lost, duplicates) = tally(&sent, &records);
    let counts = proxy.counts();
    println!(
        "faults: {} 503s, {} cut connections; lost {lost}, duplicates {duplicates}, \
         lost ownership {}, store errors {}, unknown outcomes {unknown:?}",
        counts.busy_injected, counts.dropped, snap.lost_ownership, snap.store_errors
    );
    assert!(
        counts.busy_injected >= 10 && counts.dropped >= 5,
        "{counts:?}"
    );
    assert_eq!(lost, 0);
    assert_eq!(snap.poisoned, 0);
    // A 503 was not acted on, so its retry is safe. A cut answer came after the service
    // acted: a cut delete is confirmed by its retry's 404 (done, not lost ownership), and a
    // cut receive only hides messages no handler saw. No renewals run (5 ms handlers), so
    // nothing is handled twice.
    assert_eq!(snap.lost_ownership, 0);
    assert_eq!(duplicates, 0);
    assert!(
        unknown.receives + unknown.deletes_confirmed <= counts.dropped,
        "{unknown:?} {counts:?}"
    );
    assert!(report.clean);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_lost_to_redelivery_are_counted_and_the_messages_come_back() {
    let proxy = Proxy::start(&common::azurite_url()).await;
    let direct = common::azurite();
    let name = common::unique("lostdel");
    let queue = direct.queue(&name).unwrap();
    queue.create_if_missing().await.unwrap();
    let sent = send_all(&queue, "d", 10).await;
    proxy.set_faults(Faults {
        lose_deletes: 3,
        ..Faults::default()
    });
    let recorder = Recorder::default();
    let worker = common::start(
        &store_at(&proxy.url()),
        settings(&name, Duration::from_secs(1)),
        &name,
        recorder.clone(),
    )
    .await;
    let seen = recorder.seen.clone();
    common::wait_for("13 handler runs", Duration::from_secs(30), move || {
        seen.lock().unwrap().len() >= 13
    })
    .await;
    // Each message's last delete went through (the counter follows the service's answer).
    common::wait_for("10 handled", Duration::from_secs(30), || {
        worker.snapshot()[0].handled == 10
    })
    .await;
    assert_eq!(queue.approximate_depth().await.unwrap(), 0);
    let snap = worker.snapshot().remove(0);
    worker.shutdown().await;
    let records = recorder.seen.lock().unwrap().clone();
    let (lost, duplicates) = tally(&sent, &records);
    println!(
        "lost deletes: 3; lost {lost}, duplicates {duplicates}, lost ownership {}",
        snap.lost_ownership
    );
    assert_eq!(lost, 0);
    assert_eq!(snap.lost_ownership, 3);
    assert_eq!(duplicates, 3, "each lost delete means one more delivery");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_survives_azurite_restarting_and_resumes() {
    let mut azurite = AzuriteProcess::start();
    let store = store_at(&azurite.url());
    let name = common::unique("restart");
    let queue = store.queue(&name).unwrap();
    queue.create_if_missing().await.unwrap();
    let before = send_all(&queue, "before", 20).await;
    let recorder = Recorder::default();
    let worker = common::start(
        &store,
        settings(&name, Duration::from_secs(5)),
        &name,
        recorder.clone(),
    )
    .await;
    wait_all_seen(&recorder, &before, Duration::from_secs(30)).await;
    // The service goes away for 3 s (connection refused), then comes back empty (in-memory
    // Azurite): the listener keeps going, recreates its queue and handles new work.
    azurite.kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = worker.snapshot().remove(0);
    azurite.restart();
    queue.create_if_missing().await.unwrap();
    let after = send_all(&queue, "after", 20).await;
    wait_all_seen(&recorder, &after, Duration::from_secs(60)).await;
    let snap = worker.snapshot().remove(0);
    assert!(worker.fatal_error().is_none(), "{:?}", worker.fatal_error());
    worker.shutdown().await;
    let records = recorder.seen.lock().unwrap().clone();
    let all: BTreeSet<String> = before.union(&after).cloned().collect();
    let (lost, duplicates) = tally(&all, &records);
    println!(
        "azurite restart: store errors {} during the outage, {} in all; lost {lost}, duplicates {duplicates}",
        during.store_errors, snap.store_errors
    );
    assert!(snap.store_errors > 0, "the outage was seen");
    assert_eq!(lost, 0);
    assert_eq!(duplicates, 0);
}

fn loadtest(cs: &str, queue: &str, record: &std::path::Path) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("EBBFLOW_CONFIG_DIR", "/nonexistent")
        .env("AZURE_STORAGE_CONNECTION_STRING", cs)
        .env("QUEUE_NAME", queue)
        .env(
            format!(
                "EBBFLOW__QUEUES__{}__VISIBILITY_TIMEOUT",
                queue.to_uppercase()
            ),
            "3s",
        )
        .env("HANDLER_MS", "300")
        .env("LOADTEST_RECORD", record)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

fn read_records(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| l.split('\t').next().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_batch_then_restart_handles_every_message() {
    let store = common::azurite();
    // Killed handlers' messages come back after the 3 s visibility timeout.
    let name = common::unique("k").replace('-', "");
    let queue = store.queue(&name).unwrap();
    queue.create_if_missing().await.unwrap();
    let bodies: BTreeSet<String> = (0..100).map(|i| format!("k-{i}")).collect();
    for b in &bodies {
        // The load-test worker reads raw bytes; base64 is the default encoding.
        let text = ebbflow::codec::Encoding::Base64
            .encode(b.as_bytes())
            .unwrap();
        queue.send(&text, Default::default()).await.unwrap();
    }
    let dir = common::TempDir::new("kill");
    let record = dir.path().join("handled.txt");
    let cs = common::azurite_connection_string();
    let mut first = loadtest(&cs, &name, &record);
    // Mid-batch: some handled, 16 in flight (concurrency 16, 300 ms each).
    let path = record.clone();
    common::wait_for("first handlers done", Duration::from_secs(30), move || {
        read_records(&path).len() >= 20
    })
    .await;
    first.kill().unwrap();
    first.wait().unwrap();
    let at_kill = read_records(&record).len();
    let mut second = loadtest(&cs, &name, &record);
    let (path, wanted) = (record.clone(), bodies.clone());
    common::wait_for(
        "every message handled after restart",
        Duration::from_secs(90),
        move || tally(&wanted, &read_records(&path)).0 == 0,
    )
    .await;
    common::wait_for_async("queue empty", Duration::from_secs(30), || async {
        queue.approximate_depth().await.unwrap() == 0
    })
    .await;
    unsafe_free_sigterm(&second);
    let status = second.wait().unwrap();
    let records = read_records(&record);
    let (lost, duplicates) = tally(&bodies, &records);
    let count: BTreeMap<&String, usize> = records.iter().fold(BTreeMap::new(), |mut m, r| {
        *m.entry(r).or_default() += 1;
        m
    });
    println!(
        "SIGKILL after {at_kill} handled: lost {lost}, duplicates {duplicates} \
         (handled, not yet deleted when killed); max deliveries of one message {}",
        count.values().max().unwrap()
    );
    assert_eq!(lost, 0);
    // Only messages whose handler had finished but whose delete had not: at most one batch.
    assert!(duplicates <= 32, "{duplicates}");
    assert_eq!(status.code(), Some(0));
}

/// SIGTERM through the `kill` command (no unsafe, no extra crate).
fn unsafe_free_sigterm(child: &std::process::Child) {
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_refused_at_runtime_stop_the_worker_with_an_explanation() {
    let proxy = Proxy::start(&common::azurite_url()).await;
    let name = common::unique("denied");
    let recorder = Recorder::default();
    let worker = common::start(
        &store_at(&proxy.url()),
        settings(&name, Duration::from_secs(5)),
        &name,
        recorder,
    )
    .await;
    // The key is revoked while the worker runs.
    let report = proxy.revoke_and_wait(worker).await;
    let fatal = report.fatal.clone().expect("a fatal error");
    println!("stopped with: {fatal}");
    assert!(
        matches!(fatal, ebbflow::store::StoreError::Unauthorized { .. }),
        "{fatal:?}"
    );
    assert!(
        fatal.to_string().contains(&name),
        "names the queue: {fatal}"
    );
    assert_eq!(report.exit_code(), 3);
}
