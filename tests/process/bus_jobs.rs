//! The heartbeat progress monitor across processes: a worker process runs a long job on a
//! queue with heartbeat settings; `ebbflow jobs` (another process) shows it running with its
//! pulses, then ended.

use crate::bus_replicas::World;
use crate::common;

use std::process::Command;
use std::time::Duration;

use ebbflow::bus::jobs::{JobRecord, JobState};

fn jobs(world: &World) -> Vec<JobRecord> {
    let out = Command::new(common::bins::ebbflow_cli())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .args(["--config", world.dir.path().to_str().unwrap()])
        .args(["jobs", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ebbflow_jobs_shows_a_running_jobs_progress_from_another_process() {
    let world = World::new(
        "one",
        "\n[queues.{queue}.heartbeat]\ninterval = \"200ms\"\n",
    );
    let store = common::azurite();
    let queue = store.queue(&world.queue).unwrap();
    queue.create_if_missing().await.unwrap();
    let worker = world.worker(4_000);
    queue.send("aGVsbG8=", Default::default()).await.unwrap();
    // Running, with timed pulses counted while the handler still sleeps.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let running = loop {
        let list = jobs(&world);
        if let Some(j) = list
            .iter()
            .find(|j| j.state == JobState::Running && j.timed_pulses >= 2)
        {
            break j.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no running job with pulses: {list:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(running.source, world.queue);
    assert!(
        running.id.starts_with(&format!("{}/", world.queue)),
        "{running:?}"
    );
    assert_eq!(running.interval_ms, Some(200));
    assert!(running.text.starts_with("message "), "{running:?}");
    assert!(world.handled().is_empty(), "still running: {running:?}");
    // Then ended: the handler said nothing, so `unknown`, with how the run ended.
    common::wait_for("the job handled", Duration::from_secs(30), || {
        world.handled().len() == 1
    })
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let ended = loop {
        let list = jobs(&world);
        let this: Vec<&JobRecord> = list.iter().filter(|j| j.id == running.id).collect();
        assert_eq!(this.len(), 1, "one record per job: {list:?}");
        if this[0].state != JobState::Running {
            break this[0].clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never ended: {list:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(ended.state, JobState::Unknown, "{ended:?}");
    assert_eq!(ended.note, "result ok");
    assert!(ended.timed_pulses >= running.timed_pulses);
    assert!(ended.elapsed_ms >= 3_000, "{ended:?}");
    assert_eq!(worker.stop().0, Some(0));
}
