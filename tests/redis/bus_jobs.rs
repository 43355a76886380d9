//! The heartbeat progress monitor outside a queue handler, on a real Redis: a `JobMonitor`'s
//! START record, count and timed pulses, a shaping hook that suppresses and rewrites pulses,
//! and the end, read back from another connection and received as `ebbflow.job` events.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use common::redis::{member, redis_url, settings};
use ebbflow::bus::jobs::{JobMonitor, JobRecord, JobState};
use ebbflow::bus::RedisBus;
use ebbflow::bus::{BusHandle, Filter};

async fn connect(prefix: &str, id: &str) -> BusHandle {
    let claim = Duration::from_secs(30);
    let bus = RedisBus::connect(
        &settings(&redis_url(), prefix, "processor", claim),
        member(id, "processor"),
    )
    .await
    .unwrap();
    BusHandle::new(Arc::new(bus))
}

/// The stored record of `id` once `done` holds for it.
async fn stored(bus: &BusHandle, id: &str, done: impl Fn(&JobRecord) -> bool) -> JobRecord {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let list = bus.transport().jobs().await.unwrap();
        if let Some(r) = list.iter().find(|r| r.id == id && done(r)) {
            return r.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "record of {id} never as expected: {list:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_job_monitor_records_start_pulses_and_end_for_another_process() {
    let prefix = common::unique("jobs");
    let worker = connect(&prefix, "w1").await;
    let watcher = connect(&prefix, "watch").await;
    let mut events = watcher.subscribe::<JobRecord>(Filter::new());
    watcher.start();
    worker.start();
    let job = JobMonitor::start(&worker, "export", "nightly export", Some(100), None);
    let id = job.record().id;
    assert!(id.starts_with("export/"), "{id}");
    let started = stored(&watcher, &id, |_| true).await;
    assert_eq!(started.state, JobState::Running);
    assert_eq!(started.text, "nightly export");
    assert_eq!(
        (started.instance.as_str(), started.role.as_str()),
        ("w1", "processor")
    );
    // Count pulses: one per multiple of 100 passed.
    job.add(250);
    let pulsed = stored(&watcher, &id, |r| r.count_pulses == 1).await;
    assert_eq!(pulsed.count, 250);
    // A hook rewrites pulses, and suppresses those under 400 units.
    job.shape(Arc::new(|r: &mut JobRecord| {
        r.text = format!("export at {}", r.count);
        r.count >= 400
    }));
    job.add(50); // 300: a pulse, suppressed
    job.add(150); // 450: a pulse, stored rewritten
    let shaped = stored(&watcher, &id, |r| r.count == 450).await;
    assert_eq!(shaped.text, "export at 450");
    assert_eq!(shaped.count_pulses, 3, "the suppressed pulse still counted");
    job.end(JobState::Failed, "disk full");
    job.add(1_000); // after the end: nothing more is recorded
    let ended = stored(&watcher, &id, |r| r.state != JobState::Running).await;
    assert_eq!(
        (ended.state, ended.note.as_str()),
        (JobState::Failed, "disk full")
    );
    assert_eq!(ended.count, 450);
    // The same records arrived as events, the suppressed one excepted: start, 250, 450, end.
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let e = tokio::time::timeout(Duration::from_secs(5), events.next())
            .await
            .expect("job events")
            .unwrap();
        if e.body.id == id {
            seen.push((e.body.state, e.body.count));
        }
    }
    assert_eq!(
        seen,
        vec![
            (JobState::Running, 0),
            (JobState::Running, 250),
            (JobState::Running, 450),
            (JobState::Failed, 450)
        ]
    );
}

#[tokio::test]
async fn a_job_monitor_pulses_on_its_interval_until_it_ends() {
    let prefix = common::unique("jobs");
    let worker = connect(&prefix, "w1").await;
    worker.start();
    let job = JobMonitor::start(
        &worker,
        "scan",
        "full scan",
        None,
        Some(Duration::from_millis(100)),
    );
    let id = job.record().id;
    let pulsing = stored(&worker, &id, |r| r.timed_pulses >= 3).await;
    assert_eq!(pulsing.interval_ms, Some(100));
    job.end(JobState::Succeeded, "");
    let ended = stored(&worker, &id, |r| r.state == JobState::Succeeded).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let after = stored(&worker, &id, |_| true).await;
    assert_eq!(after, ended, "no pulse after the end");
}
