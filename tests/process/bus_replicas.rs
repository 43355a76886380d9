//! Work detected across instances: worker processes (the load-test worker) on one Azurite
//! queue with Redis as the bus, woken from zero tasks by producers in other processes. Also the
//! `World` and `Worker` helpers the other bus modules of this binary start their workers with.
//! The bus connection itself (bad settings, a Redis outage, TLS) is in `bus_connect`.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::redis::{redis_url, RedisServer};
use ebbflow::bus::RedisBus;
use ebbflow::bus::{Announcer, Bus, Member, Presence, QueueBusSettings};
use ebbflow::codec::Encoding;
use ebbflow::Publisher;

/// One test's world: an Azurite queue, a bus prefix, a config folder for its workers.
pub(crate) struct World {
    pub(crate) queue: String,
    prefix: String,
    url: String,
    pub(crate) dir: common::TempDir,
    record: std::path::PathBuf,
}

impl World {
    /// `extra` ends the config (`{queue}` in it is the queue's name).
    pub(crate) fn new(reach: &str, extra: &str) -> Self {
        Self::on(&redis_url(), reach, extra)
    }

    /// A world on the Redis at `url`.
    fn on(url: &str, reach: &str, extra: &str) -> Self {
        let queue = common::unique("rep");
        let prefix = common::unique("bus");
        let dir = common::TempDir::new("cfg");
        let url = url.to_string();
        let config = format!(
            r#"
[storage]
connection_string = "{cs}"

[bus]
kind = "redis"
url = "{url}"
channel_prefix = "{prefix}"
pulse_interval = "200ms"
claim_timeout = "2s"

[queues.{queue}]
concurrency = 16

[queues.{queue}.idle_backoff]
max = "1s"

[queues.{queue}.scaling]
min_tasks = 0
wake_on_publish = true

[queues.{queue}.bus]
reach = "{reach}"
{extra}
"#,
            cs = common::azurite_connection_string(),
            extra = extra.replace("{queue}", &queue),
        );
        std::fs::write(dir.path().join("default.toml"), config).unwrap();
        let record = dir.path().join("handled.txt");
        Self {
            queue,
            prefix,
            url,
            dir,
            record,
        }
    }

    fn settings(&self) -> ebbflow::bus::BusSettings {
        common::redis::settings(&self.url, &self.prefix, "producer", Duration::from_secs(2))
    }

    pub(crate) fn worker(&self, handler_ms: u64) -> Worker {
        self.worker_as(handler_ms, None)
    }

    /// A worker with a fixed bus instance id (`bus.instance_id`, as a StatefulSet pod keeps
    /// its name), or a generated one.
    pub(crate) fn worker_as(&self, handler_ms: u64, id: Option<&str>) -> Worker {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_loadtest"));
        cmd.env_clear();
        if let Some(id) = id {
            cmd.env("EBBFLOW__BUS__INSTANCE_ID", id);
        }
        let child = cmd
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("EBBFLOW_CONFIG_DIR", self.dir.path())
            .env("QUEUE_NAME", &self.queue)
            .env("HANDLER_MS", handler_ms.to_string())
            .env("LOADTEST_RECORD", &self.record)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Worker(Some(child))
    }

    /// A producer in this process: its own client connection to the bus.
    pub(crate) async fn client(&self) -> Arc<dyn Bus> {
        Arc::new(
            RedisBus::connect_client(
                &self.settings(),
                Member::new("producer-1", "producer").unwrap(),
            )
            .await
            .unwrap(),
        )
    }

    pub(crate) fn handled(&self) -> Vec<String> {
        std::fs::read_to_string(&self.record)
            .unwrap_or_default()
            .lines()
            .map(|l| l.split('\t').next().unwrap_or_default().to_string())
            .collect()
    }
}

/// A worker process, stopped (SIGKILL) if the test ends without stopping it.
pub(crate) struct Worker(pub(crate) Option<Child>);

impl Worker {
    /// SIGTERM, then its exit code and its stderr.
    pub(crate) fn stop(mut self) -> (Option<i32>, String) {
        let child = self.0.take().unwrap();
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let out = child.wait_with_output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    }
}

impl Worker {
    /// Sends it `signal` (`"HUP"`, `"TERM"`, ...) with kill(1).
    pub(crate) fn signal(&self, signal: &str) {
        let child = self.0.as_ref().expect("the worker runs");
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal}");
    }

    /// Its exit code once it exited by itself, or `None` when it still runs after `limit`.
    pub(crate) async fn exited_within(&mut self, limit: Duration) -> Option<Option<i32>> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let child = self.0.as_mut()?;
            if let Some(status) = child.try_wait().unwrap() {
                self.0 = None;
                return Some(status.code());
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The live instances once `n` are up, idle at zero tasks, with their receive counts steady.
/// Within 2 minutes: workers run at the lowest priority beside busy loops took up to a minute
/// to start (nextest gives this binary 5).
pub(crate) async fn idle_instances(bus: &Arc<dyn Bus>, n: usize) -> BTreeMap<String, Presence> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut last: Option<BTreeMap<String, Presence>> = None;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{n} idle instances never showed up: {last:?}"
        );
        let now: BTreeMap<String, Presence> = bus
            .instances()
            .await
            .unwrap()
            .into_iter()
            .map(|p| (p.instance.clone(), p))
            .collect();
        let idle = now.len() == n && now.values().all(|p| p.active_tasks == 0);
        let steady = last.as_ref().is_some_and(|l| {
            l.len() == n
                && l.iter()
                    .all(|(id, p)| now.get(id).map(|q| q.receive_calls) == Some(p.receive_calls))
        });
        if idle && steady {
            return now;
        }
        last = Some(now);
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
}

/// The instances' pulses after at least `wait`.
async fn instances_after(bus: &Arc<dyn Bus>, wait: Duration) -> BTreeMap<String, Presence> {
    tokio::time::sleep(wait).await;
    bus.instances()
        .await
        .unwrap()
        .into_iter()
        .map(|p| (p.instance.clone(), p))
        .collect()
}

/// The issue's case: three replicas at zero tasks, a producer in another process sends one
/// message through a `Publisher` announcing on the bus: exactly one replica receives, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_publish_wakes_exactly_one_of_three_replicas_at_zero_tasks() {
    let world = World::new("one", "");
    let store = common::azurite();
    let queue = store.queue(&world.queue).unwrap();
    queue.create_if_missing().await.unwrap();
    let workers: Vec<Worker> = (0..3).map(|_| world.worker(0)).collect();
    let bus = world.client().await;
    let before = idle_instances(&bus, 3).await;
    let publisher = Publisher::new(queue.clone(), Encoding::Base64).with_announcer(Announcer::new(
        bus.clone(),
        &world.queue,
        QueueBusSettings::default(),
    ));
    publisher
        .send_bytes(b"only-one", Default::default())
        .await
        .unwrap();
    common::wait_for("the message handled", Duration::from_secs(20), || {
        world.handled().len() == 1
    })
    .await;
    // A few pulses later (the woken task waits for a next trigger, then retires).
    let after = instances_after(&bus, Duration::from_secs(3)).await;
    let receives: BTreeMap<&String, u64> = after
        .iter()
        .map(|(id, p)| (id, p.receive_calls - before[id].receive_calls))
        .collect();
    assert_eq!(
        receives.values().sum::<u64>(),
        1,
        "one receive in all, by one replica: {receives:?}"
    );
    assert_eq!(after.values().map(|p| p.handled).sum::<u64>(), 1);
    assert_eq!(world.handled(), vec!["only-one".to_string()]);
    for w in workers {
        let (code, err) = w.stop();
        assert_eq!(code, Some(0), "{err}");
    }
}

/// A covered queue (`wake_on_publish`) at zero tasks: start-up makes one receive per replica,
/// and so does a Redis restart (every listener is woken once to find what was missed), each
/// replica back at zero tasks after it (receive calls counted from the replicas' presence).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_covered_queue_woken_by_start_up_or_a_reconnect_makes_one_receive_per_replica() {
    let mut server = RedisServer::start();
    let world = World::on(&server.url(), "one", "");
    let store = common::azurite();
    let queue = store.queue(&world.queue).unwrap();
    queue.create_if_missing().await.unwrap();
    let workers: Vec<Worker> = (0..3).map(|_| world.worker(0)).collect();
    let bus = world.client().await;
    let before = idle_instances(&bus, 3).await;
    let started: Vec<u64> = before.values().map(|p| p.receive_calls).collect();
    assert_eq!(
        started,
        vec![1, 1, 1],
        "one receive per replica at start-up"
    );
    server.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.restart();
    // The replicas reconnect, are woken once each, and settle at zero tasks again.
    common::wait_for_async("the replicas pulse again", Duration::from_secs(30), || {
        let bus = bus.clone();
        async move { bus.instances().await.map(|l| l.len() == 3).unwrap_or(false) }
    })
    .await;
    let after = idle_instances(&bus, 3).await;
    let after = instances_after(&bus, Duration::from_secs(3))
        .await
        .into_iter()
        .map(|(id, p)| (id, p.receive_calls))
        .collect::<BTreeMap<_, _>>()
        .into_iter()
        .map(|(id, n)| {
            (
                id.clone(),
                n - before[&id].receive_calls,
                after[&id].active_tasks,
            )
        })
        .collect::<Vec<_>>();
    assert!(
        after.iter().all(|(_, n, tasks)| *n == 1 && *tasks == 0),
        "one receive per replica after the reconnect, back at zero tasks: {after:?}"
    );
    for w in workers {
        let (code, err) = w.stop();
        assert_eq!(code, Some(0), "{err}");
    }
}

/// `reach = "all"`: one notice (from `ebbflow notify`, a producer with no Rust code) wakes every
/// replica; `ebbflow instances --json` lists them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reach_all_wakes_every_replica_and_the_cli_lists_them() {
    let world = World::new("all", "");
    let store = common::azurite();
    let queue = store.queue(&world.queue).unwrap();
    queue.create_if_missing().await.unwrap();
    let workers: Vec<Worker> = (0..3).map(|_| world.worker(0)).collect();
    let bus = world.client().await;
    let before = idle_instances(&bus, 3).await;
    let cli = |args: &[&str]| {
        Command::new(common::bins::ebbflow_cli())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .args(["--config", world.dir.path().to_str().unwrap()])
            .args(args)
            .output()
            .unwrap()
    };
    let listed = cli(&["instances", "--json"]);
    assert!(listed.status.success(), "{listed:?}");
    let listed: Vec<Presence> = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(
        listed.iter().map(|p| &p.instance).collect::<BTreeSet<_>>(),
        before.keys().collect::<BTreeSet<_>>()
    );
    queue.send("aGVsbG8=", Default::default()).await.unwrap();
    let out = cli(&["notify", &world.queue]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{out:?}");
    assert!(text.contains("work notice"), "{text}");
    common::wait_for("the message handled", Duration::from_secs(20), || {
        world.handled().len() == 1
    })
    .await;
    let after = instances_after(&bus, Duration::from_secs(3)).await;
    for (id, p) in &after {
        assert!(
            p.receive_calls > before[id].receive_calls,
            "{id} was woken: {after:?}"
        );
    }
    assert_eq!(world.handled(), vec!["hello".to_string()]);
    for w in workers {
        assert_eq!(w.stop().0, Some(0));
    }
}

/// A burst of 160 messages announced by a single notice: the replica it wakes cannot take
/// them all at once and passes the notice on (to another replica, never back to itself), so
/// every replica handles some; none is handled twice or lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_announced_once_spreads_over_the_replicas() {
    let world = World::new("one", "");
    let store = common::azurite();
    let queue = store.queue(&world.queue).unwrap();
    queue.create_if_missing().await.unwrap();
    let workers: Vec<Worker> = (0..3).map(|_| world.worker(50)).collect();
    let bus = world.client().await;
    let before = idle_instances(&bus, 3).await;
    let publisher = Publisher::new(queue.clone(), Encoding::Base64);
    for n in 0..160 {
        publisher
            .send_bytes(format!("m{n}").as_bytes(), Default::default())
            .await
            .unwrap();
    }
    Announcer::new(bus.clone(), &world.queue, QueueBusSettings::default())
        .announce(160, 0)
        .await;
    common::wait_for("the burst handled", Duration::from_secs(60), || {
        world.handled().len() >= 160
    })
    .await;
    let after = instances_after(&bus, Duration::from_secs(1)).await;
    let handled: BTreeMap<&String, u64> = after
        .iter()
        .map(|(id, p)| (id, p.handled - before[id].handled))
        .collect();
    assert!(
        handled.values().all(|n| *n > 0),
        "every replica took part: {handled:?}"
    );
    let all = world.handled();
    let unique: BTreeSet<&String> = all.iter().collect();
    assert_eq!(
        (all.len(), unique.len()),
        (160, 160),
        "none twice, none lost"
    );
    for w in workers {
        assert_eq!(w.stop().0, Some(0));
    }
}
