//! The billing reference scenario, small: a controller and two processing replicas at
//! `min_tasks = 0` as processes against Azurite with Redis as the bus, and, once they are all
//! at zero tasks (so only the bus, or the controller's idle depth probe, can wake them), one
//! initiator's submission of 600 transactions in 30 work items over four queues. Every item is
//! billed exactly once (the controller's completion event says so, and the processors' own
//! counts add up to the items), completion reaches the initiator over the bus, nothing is left
//! in any queue, and the idle replicas then make no storage calls. A controller killed mid-run
//! and started again reports the same totals (its ledger is in blob storage).

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use std::time::Duration;

/// The scenario's processes, stopped (SIGKILL) when dropped so a failing test leaves none.
struct Fleet {
    children: Vec<(String, Child)>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

struct Scenario {
    dir: common::TempDir,
    config: PathBuf,
    prefix: String,
    channel: String,
    redis: String,
}

impl Scenario {
    fn new() -> Self {
        Self::edited(|text| text)
    }

    /// The scenario with its config text changed by `edit` first.
    fn edited(edit: impl Fn(String) -> String) -> Self {
        let dir = common::TempDir::new("billing");
        let prefix = common::unique("bill");
        let config = dir.path().join("config");
        std::fs::create_dir_all(&config).unwrap();
        // The scenario's own config, on queues of this test's own.
        let text = edit(
            std::fs::read_to_string(
                Path::new(env!("CARGO_MANIFEST_DIR")).join("config/billing/default.toml"),
            )
            .unwrap(),
        )
        .replace("billing-", &format!("{prefix}-"));
        std::fs::write(config.join("default.toml"), text).unwrap();
        Self {
            dir,
            config,
            channel: prefix.clone(),
            prefix,
            redis: common::redis::redis_url(),
        }
    }

    /// A command for `binary` as instance `name` of `role`, logging JSON to `<name>.log`.
    fn command(&self, binary: &str, name: &str, role: &str, ops: Option<u16>) -> Command {
        let log = std::fs::File::create(self.log(name)).unwrap();
        let mut c = Command::new(binary);
        c.env("AZURE_STORAGE_CONNECTION_STRING", connection_string())
            .env("EBBFLOW_CONFIG_DIR", &self.config)
            .env("EBBFLOW__BUS__URL", &self.redis)
            .env("EBBFLOW__BUS__CHANNEL_PREFIX", &self.channel)
            .env("EBBFLOW__BUS__ROLE", role)
            .env("EBBFLOW__BUS__INSTANCE_ID", name)
            .env("EBBFLOW_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .env("BILLING_QUEUE_PREFIX", &self.prefix)
            .env("BILLING_ITEM_MS", "5")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Some(port) = ops {
            c.env("EBBFLOW__OBSERVABILITY__BIND", format!("127.0.0.1:{port}"));
        }
        c
    }

    fn log(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    /// The JSON log lines of `name` whose message is `message`, as their fields.
    fn events(&self, name: &str, message: &str) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.log(name))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v.get("fields").cloned())
            .filter(|f| f["message"] == message)
            .collect()
    }
}

/// The test Azurite's connection string, with its blob service (where the controller keeps
/// its ledger) when `scripts/test` started one (`EBBFLOW_AZURITE_BLOB_URL`).
fn connection_string() -> String {
    let mut cs = common::azurite_connection_string();
    if let Ok(blob) = std::env::var("EBBFLOW_AZURITE_BLOB_URL") {
        cs.push_str(&format!(";BlobEndpoint={blob}"));
    }
    cs
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `ebbflow_<name>` summed over the queues, from an ops endpoint's `/metrics`.
async fn metric(port: u16, name: &str) -> u64 {
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let prefix = format!("ebbflow_{name}{{");
    text.lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Storage calls a listener made: receives and depth probes.
async fn storage_calls(port: u16) -> u64 {
    metric(port, "receive_calls_total").await + metric(port, "probe_calls_total").await
}

async fn ready(port: u16) {
    common::wait_for_async(
        "ops endpoint ready",
        Duration::from_secs(60),
        || async move {
            match reqwest::get(format!("http://127.0.0.1:{port}/readyz")).await {
                Ok(r) => r.status().is_success(),
                Err(_) => false,
            }
        },
    )
    .await;
}

/// Waits until no instance runs a dequeue task.
async fn all_idle(ops: &BTreeMap<&str, u16>) {
    for (name, port) in ops {
        let port = *port;
        common::wait_for_async(
            &format!("{name} at zero tasks"),
            Duration::from_secs(30),
            || async move { metric(port, "active_tasks").await == 0 },
        )
        .await;
    }
}

fn terminate(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn billing_scenario_bills_every_item_exactly_once_and_reports_completion() {
    let s = Scenario::new();
    let mut fleet = Fleet {
        children: Vec::new(),
    };
    let mut ops = BTreeMap::new();
    for (name, role, binary) in [
        (
            "controller",
            "controller",
            env!("CARGO_BIN_EXE_billing-controller"),
        ),
        (
            "processor-1",
            "processor",
            env!("CARGO_BIN_EXE_billing-processor"),
        ),
        (
            "processor-2",
            "processor",
            env!("CARGO_BIN_EXE_billing-processor"),
        ),
    ] {
        let port = free_port();
        ops.insert(name, port);
        let child = s.command(binary, name, role, Some(port)).spawn().unwrap();
        fleet.children.push((name.to_string(), child));
    }
    for port in ops.values() {
        ready(*port).await;
    }
    // Every replica at zero tasks first: from here only the bus can wake them.
    all_idle(&ops).await;

    // One submission: 600 transactions in 30 items of 20.
    let initiator = s
        .command(
            env!("CARGO_BIN_EXE_billing-initiator"),
            "initiator",
            "initiator",
            None,
        )
        .env("BILLING_TRANSACTIONS", "600")
        .env("BILLING_ITEM_SIZE", "20")
        .env("BILLING_WAIT_S", "90")
        .spawn()
        .unwrap();
    let status = tokio::task::spawn_blocking(move || {
        let mut initiator = initiator;
        initiator.wait().unwrap()
    })
    .await
    .unwrap();
    let completed = s.events("initiator", "submission completed");
    assert_eq!(
        status.code(),
        Some(0),
        "initiator: {completed:?} {:?}",
        s.events("initiator", "no completion reported in time")
    );
    // The completion event, as the initiator received it over the bus.
    let c = &completed[0];
    assert_eq!(c["items"], 30, "{c}");
    assert_eq!(c["transactions"], 600, "{c}");
    assert_eq!(c["amount_cents"], c["expected_cents"], "{c}");
    assert_eq!(c["verdict"], "billed exactly once", "{c}");

    // Idle again: once every replica's tasks retired, no storage calls at all. (The controller
    // probes its results queue's depth every 2 s while idle, by its config, so that results a
    // killed controller held are found again: it is not counted here.)
    all_idle(&ops).await;
    let replicas: BTreeMap<&str, u16> = ops
        .iter()
        .filter(|(name, _)| name.starts_with("processor"))
        .map(|(name, port)| (*name, *port))
        .collect();
    let before: Vec<u64> = {
        let mut v = Vec::new();
        for port in replicas.values() {
            v.push(storage_calls(*port).await);
        }
        v
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    for ((name, port), calls) in replicas.iter().zip(before) {
        assert_eq!(
            storage_calls(*port).await,
            calls,
            "{name} made storage calls while idle"
        );
    }

    // Drain: each process exits 0 and reports what it handled.
    for (_, child) in &fleet.children {
        terminate(child);
    }
    for (name, child) in &mut fleet.children {
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(0), "{name} did not drain cleanly");
    }
    let handled = |name: &str| -> u64 {
        s.events(name, "final counts")
            .iter()
            .map(|f| f["handled"].as_u64().unwrap())
            .sum()
    };
    // Each item handled once by exactly one processor, each result once by the controller.
    assert_eq!(handled("processor-1") + handled("processor-2"), 30);
    // A result the store stored twice (a send retried after an unseen success) is the one
    // duplicate allowed; the controller took it without billing it again.
    assert_eq!(
        handled("controller"),
        30 + c["duplicates"].as_u64().unwrap(),
        "{c}"
    );

    // Nothing left in any of the four work queues nor in the results queue.
    let store = common::azurite();
    let mut queues: Vec<String> = (0..4).map(|n| format!("{}-work-{n}", s.prefix)).collect();
    queues.push(format!("{}-results", s.prefix));
    for name in queues {
        let q = store.queue(&name).unwrap();
        assert!(q.peek(32).await.unwrap().is_empty(), "{name} is not empty");
    }
}

/// The controller killed (SIGKILL) in the middle of a submission and started again: its ledger
/// is in blob storage, so the completion it reports covers every item exactly once, as if it had
/// never stopped (a controller keeping it in memory forgets the items before the kill and never
/// completes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_killed_mid_run_and_restarted_reports_the_same_totals() {
    assert!(
        std::env::var("EBBFLOW_AZURITE_BLOB_URL").is_ok(),
        "EBBFLOW_AZURITE_BLOB_URL is not set: the controller's ledger needs Azurite's blob \
         service; run the tests through scripts/test"
    );
    // Slow processors (two items at a time each, 150 ms an item), so the kill lands mid-run.
    let s = Scenario::edited(|text| {
        text.replace(
            "[queues.billing-work]\nshards = 4\nconcurrency = 16",
            "[queues.billing-work]\nshards = 4\nconcurrency = 2",
        )
        .replace("max_tasks = 4", "max_tasks = 1")
        // Results the killed controller held come back after 10 s; at zero tasks the restarted
        // one looks every 2 s (the scenario's config says so).
    });
    let mut fleet = Fleet {
        children: Vec::new(),
    };
    let controller_bin = env!("CARGO_BIN_EXE_billing-controller");
    let mut ops = BTreeMap::new();
    for (name, role, binary) in [
        ("controller", "controller", controller_bin),
        (
            "processor-1",
            "processor",
            env!("CARGO_BIN_EXE_billing-processor"),
        ),
        (
            "processor-2",
            "processor",
            env!("CARGO_BIN_EXE_billing-processor"),
        ),
    ] {
        let port = free_port();
        ops.insert(name, port);
        let child = s
            .command(binary, name, role, Some(port))
            .env("BILLING_ITEM_MS", "150")
            .spawn()
            .unwrap();
        fleet.children.push((name.to_string(), child));
    }
    for port in ops.values() {
        ready(*port).await;
    }
    all_idle(&ops).await;
    let initiator = s
        .command(
            env!("CARGO_BIN_EXE_billing-initiator"),
            "initiator",
            "initiator",
            None,
        )
        .env("BILLING_TRANSACTIONS", "600")
        .env("BILLING_ITEM_SIZE", "20")
        .env("BILLING_WAIT_S", "90")
        .spawn()
        .unwrap();
    // Killed once it aggregated some items and before the submission was complete.
    common::wait_for(
        "the controller's first progress",
        Duration::from_secs(60),
        || !s.events("controller", "progress").is_empty(),
    )
    .await;
    let (_, mut controller) = fleet.children.remove(0);
    controller.kill().unwrap();
    controller.wait().unwrap();
    assert!(
        s.events("controller", "submission billed").is_empty(),
        "the kill came too late: the submission was complete already"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let port = free_port();
    let again = s
        .command(controller_bin, "controller", "controller", Some(port))
        .spawn()
        .unwrap();
    fleet.children.push(("controller".into(), again));
    let status = tokio::task::spawn_blocking(move || {
        let mut initiator = initiator;
        initiator.wait().unwrap()
    })
    .await
    .unwrap();
    let completed = s.events("initiator", "submission completed");
    let log = std::fs::read_to_string(s.log("controller")).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(15).collect();
    assert_eq!(
        status.code(),
        Some(0),
        "initiator: {completed:?}; the restarted controller's last lines: {tail:#?}"
    );
    let c = &completed[0];
    assert_eq!(c["items"], 30, "{c}");
    assert_eq!(c["transactions"], 600, "{c}");
    assert_eq!(c["amount_cents"], c["expected_cents"], "{c}");
    assert_eq!(c["verdict"], "billed exactly once", "{c}");
    assert_eq!(
        c["duplicates"], 0,
        "a result redelivered after the kill is the same message, not a duplicate: {c}"
    );
}
