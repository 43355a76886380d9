//! Live reload of the scaling rules across processes: a worker process (the load-test worker)
//! reloads its config folder on `ebbflow reload --role R` (a request on the bus, answered with
//! what it applied) and on SIGHUP; the reloaded rule changes its next scaling decision, seen
//! from outside in its presence pulses; an invalid file changes nothing.

use crate::bus_replicas::{idle_instances, World};
use crate::common;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use ebbflow::bus::Bus;

/// Rewrites the world's config file, replacing `from` with `to`.
fn edit(world: &World, from: &str, to: &str) {
    let file = world.dir.path().join("default.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains(from), "{from:?} not in the config");
    std::fs::write(&file, text.replace(from, to)).unwrap();
}

fn reload(world: &World) -> std::process::Output {
    Command::new(common::bins::ebbflow_cli())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .args(["--config", world.dir.path().to_str().unwrap()])
        .args(["reload", "--role", "worker"])
        .output()
        .unwrap()
}

/// Waits until the one live instance has shown `tasks` active tasks in every pulse for
/// `steady` (longer than the idle back-off maximum, 1 s, after which a spare task retires).
async fn holds_tasks(bus: &Arc<dyn Bus>, tasks: u64, steady: Duration) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut since: Option<tokio::time::Instant> = None;
    let mut seen: Vec<u64> = Vec::new();
    loop {
        let now = tokio::time::Instant::now();
        assert!(
            now < deadline,
            "the instance never held {tasks} task(s): {seen:?}"
        );
        let list = bus.instances().await.unwrap();
        seen = list.iter().map(|p| p.active_tasks).collect();
        if seen == [tasks] {
            let from = *since.get_or_insert(now);
            if now - from >= steady {
                return;
            }
        } else {
            since = None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ebbflow_reload_role_changes_the_next_scaling_decision_of_a_running_worker() {
    let world = World::new("one", "");
    let queue = common::azurite().queue(&world.queue).unwrap();
    queue.create_if_missing().await.unwrap();
    let worker = world.worker(0);
    let bus = world.client().await;
    // min_tasks = 0: idle at zero tasks.
    idle_instances(&bus, 1).await;
    edit(&world, "min_tasks = 0", "min_tasks = 1");
    edit(&world, "concurrency = 16", "concurrency = 8");
    let out = reload(&world);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{out:?}");
    let q = &world.queue;
    assert!(
        text.contains(&format!("applied queues.{q}.scaling.min_tasks: 0 -> 1")),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "needs a restart (not applied): queues.{q}.concurrency"
        )),
        "{text}"
    );
    // The floor is the new rule: one task starts and stays, past the back-off maximum.
    holds_tasks(&bus, 1, Duration::from_secs(3)).await;
    // And back: with min_tasks = 0 the idle task retires again.
    edit(&world, "min_tasks = 1", "min_tasks = 0");
    assert!(reload(&world).status.success());
    holds_tasks(&bus, 0, Duration::from_secs(2)).await;
    let (code, logs) = worker.stop();
    assert_eq!(code, Some(0), "{logs}");
    assert!(
        logs.contains("needs a restart") && logs.contains(&format!("queues.{q}.concurrency")),
        "the key that needs a restart is named in a warning: {logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_config_folder_and_an_invalid_file_keeps_the_old_rules() {
    let world = World::new("one", "");
    let queue = common::azurite().queue(&world.queue).unwrap();
    queue.create_if_missing().await.unwrap();
    let worker = world.worker(0);
    let bus = world.client().await;
    idle_instances(&bus, 1).await;
    // Invalid as a whole: the valid min_tasks change in it is not applied either.
    edit(&world, "min_tasks = 0", "min_tasks = 1\nmax_tasks = 999");
    worker.signal("HUP");
    holds_tasks(&bus, 0, Duration::from_secs(3)).await;
    edit(&world, "max_tasks = 999", "max_tasks = 2");
    worker.signal("HUP");
    holds_tasks(&bus, 1, Duration::from_secs(3)).await;
    let (code, logs) = worker.stop();
    assert_eq!(code, Some(0), "SIGHUP does not stop the worker: {logs}");
    let q = &world.queue;
    assert!(
        logs.contains("config reload rejected")
            && logs.contains(&format!("queues.{q}.scaling.max_tasks")),
        "the rejected file's key is named: {logs}"
    );
}

/// A reload for a role with no live instance (a typo, or every instance gone) is an error, as
/// for `ebbflow drain`: exit 1, naming the role and where to check, not a silent success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_for_a_role_with_no_live_instance_fails_naming_it() {
    let world = World::new("one", "");
    let out = reload(&world);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(err.contains("no live instance of role worker"), "{err}");
    assert!(err.contains("ebbflow instances"), "{err}");
    assert!(
        out.stdout.is_empty(),
        "nothing reloaded, nothing said on stdout: {out:?}"
    );
}
