//! The heartbeat progress monitor across processes: a worker process runs a long job on a
//! queue with heartbeat settings; `ebbflow jobs` (another process) shows it running with its
//! pulses, then ended; a job whose pulses stopped (its worker died without an end) is shown
//! `stale` with its elapsed time frozen.

use crate::bus_replicas::World;
use crate::common;

use std::process::Command;
use std::time::Duration;

use ebbflow::bus::jobs::{JobRecord, JobState};

/// `ebbflow jobs` with `args`: its standard output.
fn run_jobs(world: &World, args: &[&str]) -> Vec<u8> {
    let out = Command::new(common::bins::ebbflow_cli())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .args(["--config", world.dir.path().to_str().unwrap()])
        .arg("jobs")
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    out.stdout
}

fn jobs(world: &World) -> Vec<JobRecord> {
    serde_json::from_slice(&run_jobs(world, &["--json"])).unwrap()
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

/// A job whose worker died without an END record: `running` in the store, its last change a
/// minute old with a 1 s pulse interval (three missed pulses long past). `ebbflow jobs` shows
/// it `stale`, its elapsed time at its last change (not growing); `--running` leaves it out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ebbflow_jobs_shows_a_job_whose_pulses_stopped_as_stale_with_its_elapsed_frozen() {
    let world = World::new("one", "");
    let bus = world.client().await;
    let now = ebbflow::bus::now_ms();
    let dead = JobRecord {
        id: "imports/dead".into(),
        source: "imports".into(),
        text: "message dead (dequeue 1)".into(),
        instance: "worker-gone".into(),
        role: "worker".into(),
        state: JobState::Running,
        count: 40,
        timed_pulses: 5,
        count_pulses: 0,
        last_pulse: Some(ebbflow::bus::events::PulseKind::Timed),
        interval_ms: Some(1_000),
        every: None,
        started_at_ms: now - 65_000,
        updated_at_ms: now - 60_000,
        elapsed_ms: 5_000,
        note: String::new(),
    };
    // A live one beside it: pulsed just now, with the same interval.
    let live = JobRecord {
        id: "imports/live".into(),
        text: "message live (dequeue 1)".into(),
        instance: "worker-1".into(),
        started_at_ms: now - 30_000,
        updated_at_ms: now,
        elapsed_ms: 30_000,
        ..dead.clone()
    };
    bus.record_job(&dead).await.unwrap();
    bus.record_job(&live).await.unwrap();
    let list = jobs(&world);
    let state = |id: &str| {
        let j = list.iter().find(|j| j.id == id).expect(id);
        (j.state, j.elapsed_ms)
    };
    assert_eq!(state("imports/dead"), (JobState::Stale, 5_000), "{list:?}");
    let (live_state, live_elapsed) = state("imports/live");
    assert_eq!(live_state, JobState::Running, "{list:?}");
    assert!(
        live_elapsed >= 30_000,
        "a running job's elapsed goes on: {list:?}"
    );
    let table = String::from_utf8(run_jobs(&world, &[])).unwrap();
    let row = table
        .lines()
        .find(|l| l.starts_with("imports/dead"))
        .expect(&table);
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[1..5], ["stale", "40", "5", "5.0s"], "{table}");
    let running: Vec<JobRecord> =
        serde_json::from_slice(&run_jobs(&world, &["--running", "--json"])).unwrap();
    let ids: Vec<&str> = running.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(ids, ["imports/live"], "{running:?}");
}
