//! Role-wide drain across processes: `ebbflow drain --role R` makes every instance of the role
//! stop and exit 0, all at once or one at a time (each after its replacement joined).

use crate::bus_replicas::{idle_instances, World};
use crate::common;

use std::process::{Command, Stdio};
use std::time::Duration;

fn drain(world: &World, extra: &[&str]) -> Command {
    let mut cmd = Command::new(common::bins::ebbflow_cli());
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .args(["--config", world.dir.path().to_str().unwrap()])
        .args(["drain", "--role", "worker"])
        .args(extra);
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_role_exits_0_all_at_once() {
    let world = World::new("one", "");
    let queue = common::azurite().queue(&world.queue).unwrap();
    queue.create_if_missing().await.unwrap();
    let mut workers: Vec<_> = (0..2).map(|_| world.worker(0)).collect();
    let bus = world.client().await;
    idle_instances(&bus, 2).await;
    let out = drain(&world, &[]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{out:?}");
    assert!(text.contains("2 live instance(s)"), "{text}");
    for w in &mut workers {
        assert_eq!(
            w.exited_within(Duration::from_secs(20)).await,
            Some(Some(0)),
            "a drained instance exits 0 by itself"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_role_exits_0_one_at_a_time_each_after_its_replacement() {
    let world = World::new("one", "");
    let queue = common::azurite().queue(&world.queue).unwrap();
    queue.create_if_missing().await.unwrap();
    let mut first: Vec<_> = (0..2).map(|_| world.worker(0)).collect();
    let bus = world.client().await;
    idle_instances(&bus, 2).await;
    let mut cli = drain(&world, &["--one-at-a-time", "--timeout", "30"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // The test is the orchestrator: each instance that exits is replaced by a new one.
    let mut replacements = Vec::new();
    let mut exits = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while cli.try_wait().unwrap().is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the drain never ended"
        );
        for w in &mut first {
            if let Some(code) = w.exited_within(Duration::ZERO).await {
                // Only one instance is away at a time.
                assert!(
                    exits.len() == replacements.len(),
                    "two instances drained before a replacement joined"
                );
                exits.push(code);
                replacements.push(world.worker(0));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = cli.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}");
    assert_eq!(exits, vec![Some(0), Some(0)], "{text}");
    assert!(text.contains("[2/2]"), "{text}");
    // The replacements were not drained: they still run.
    for w in &mut replacements {
        assert_eq!(w.exited_within(Duration::from_millis(500)).await, None);
    }
}

/// With ids kept across restarts (a StatefulSet's pod names, `bus.instance_id`), the
/// replacement of a drained instance pulses under the same id: the drain sees it was replaced
/// (a new start time) and goes on (newcomer pass: it waited its whole timeout and failed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_at_a_time_goes_on_when_the_replacement_keeps_the_drained_instance_s_id() {
    let world = World::new("one", "");
    let queue = common::azurite().queue(&world.queue).unwrap();
    queue.create_if_missing().await.unwrap();
    let ids = ["worker-0", "worker-1"];
    let mut first: Vec<_> = ids.iter().map(|id| world.worker_as(0, Some(id))).collect();
    let bus = world.client().await;
    idle_instances(&bus, 2).await;
    let mut cli = drain(&world, &["--one-at-a-time", "--timeout", "30"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut replacements = Vec::new();
    let mut exits = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while cli.try_wait().unwrap().is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the drain never ended"
        );
        for (w, id) in first.iter_mut().zip(ids) {
            if exits.len() < 2 && !exits.iter().any(|(i, _)| *i == id) {
                if let Some(code) = w.exited_within(Duration::ZERO).await {
                    assert!(
                        exits.len() == replacements.len(),
                        "two instances drained before a replacement joined"
                    );
                    exits.push((id, code));
                    // The orchestrator restarts it under the same name.
                    replacements.push(world.worker_as(0, Some(id)));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = cli.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}");
    assert_eq!(
        exits.iter().map(|(_, c)| *c).collect::<Vec<_>>(),
        vec![Some(0), Some(0)],
        "{text}"
    );
    assert!(text.contains("[2/2] worker-1 was replaced"), "{text}");
    for w in &mut replacements {
        assert_eq!(w.exited_within(Duration::from_millis(500)).await, None);
    }
}

/// A drain for a role with no live instance (a typo) is an error, not a silent success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_for_a_role_with_no_live_instance_fails_naming_it() {
    let world = World::new("one", "");
    for extra in [&[][..], &["--one-at-a-time"][..]] {
        let out = drain(&world, extra).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("no live instance of role worker"), "{err}");
        assert!(err.contains("ebbflow instances"), "{err}");
    }
}
