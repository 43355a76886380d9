//! The fleet view: with the bus on, a worker's `/dashboard.json` lists every live instance from
//! the bus presence (role, queues, tasks, handled, pulse age; itself marked), and an instance
//! that stops leaves the list.

use crate::common;

use std::time::Duration;

use common::redis::{redis_url, settings};
use ebbflow::bus::Name;
use ebbflow::{Context, Handler, HandlerError, Worker};
use serde_json::Value;

struct Done;
impl Handler for Done {
    type Message = String;
    async fn handle(&self, _: String, _: Context) -> Result<(), HandlerError> {
        Ok(())
    }
}

fn worker_settings(prefix: &str, queue: &str, id: &str, role: &str) -> ebbflow::Settings {
    let mut s = ebbflow::Settings::default();
    s.bus = settings(&redis_url(), prefix, role, Duration::from_secs(2));
    s.bus.instance_id = Some(Name::new(id).unwrap());
    let mut q = ebbflow::config::QueueSettings::default();
    q.idle_backoff.max = Duration::from_millis(300);
    s.queues.insert(queue.to_string(), q);
    s
}

async fn fleet(url: &str) -> Value {
    let body = reqwest::get(url).await.unwrap().text().await.unwrap();
    let doc: Value = serde_json::from_str(&body).unwrap();
    doc["fleet"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_lists_every_live_instance_and_drops_one_that_stopped() {
    let prefix = common::unique("fleet");
    let queue = common::unique("fq");
    let store = common::memory();
    let mut front = worker_settings(&prefix, &queue, "fleet-a", "front");
    front.observability.bind = Some("127.0.0.1:0".parse().unwrap());
    let a = Worker::new(front)
        .with_store(store.clone())
        .handler(&queue, Done)
        .start()
        .await
        .unwrap();
    let b = Worker::new(worker_settings(&prefix, &queue, "fleet-b", "back"))
        .with_store(store.clone())
        .handler(&queue, Done)
        .start()
        .await
        .unwrap();
    let publisher = a.publisher(&queue).unwrap();
    for n in 0..6 {
        publisher
            .send_bytes(format!("m{n}").as_bytes(), Default::default())
            .await
            .unwrap();
    }
    let url = format!("http://{}/dashboard.json", a.ops_addr().unwrap());

    // Both instances, with what their pulses (every 200 ms) say they handled.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let fleet_now = loop {
        let f = fleet(&url).await;
        let handled: u64 = f["instances"]
            .as_array()
            .map(|l| l.iter().map(|i| i["handled"].as_u64().unwrap()).sum())
            .unwrap_or(0);
        if f["instances"].as_array().map(Vec::len) == Some(2) && handled == 6 {
            break f;
        }
        assert!(tokio::time::Instant::now() < deadline, "{f}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(fleet_now["error"].is_null(), "{fleet_now}");
    let rows = fleet_now["instances"].as_array().unwrap();
    // Sorted by role, then id.
    let who: Vec<(&str, &str, bool)> = rows
        .iter()
        .map(|i| {
            (
                i["instance"].as_str().unwrap(),
                i["role"].as_str().unwrap(),
                i["this"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        who,
        [("fleet-b", "back", false), ("fleet-a", "front", true)],
        "{fleet_now}"
    );
    for i in rows {
        assert_eq!(i["queues"], serde_json::json!([queue]), "{i}");
        assert!(i["active_tasks"].as_u64().unwrap() >= 1, "{i}");
        assert!(i["pulse_age_ms"].as_u64().unwrap() < 5_000, "{i}");
    }

    // The stopped instance withdraws its presence.
    b.shutdown().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let f = fleet(&url).await;
        let ids: Vec<&str> = f["instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["instance"].as_str().unwrap())
            .collect();
        if ids == ["fleet-a"] {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{f}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    a.shutdown().await;
}

/// The heartbeat monitor's jobs are in the fleet view: a job another instance runs shows on
/// this one's `/dashboard.json` with its progress, running first, and its end once it ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_another_instance_s_job_progress_and_its_end() {
    use ebbflow::bus::jobs::{JobMonitor, JobState};
    let prefix = common::unique("fleetjobs");
    let queue = common::unique("fj");
    let store = common::memory();
    let mut front = worker_settings(&prefix, &queue, "jobs-a", "front");
    front.observability.bind = Some("127.0.0.1:0".parse().unwrap());
    let a = Worker::new(front)
        .with_store(store.clone())
        .handler(&queue, Done)
        .start()
        .await
        .unwrap();
    let b = Worker::new(worker_settings(&prefix, &queue, "jobs-b", "back"))
        .with_store(store.clone())
        .handler(&queue, Done)
        .start()
        .await
        .unwrap();
    let url = format!("http://{}/dashboard.json", a.ops_addr().unwrap());
    let done = JobMonitor::start(&b.bus(), "export", "yesterday's export", Some(10), None);
    done.add(5);
    done.end(JobState::Succeeded, "5 rows");
    let job = JobMonitor::start(&b.bus(), "export", "today's export", Some(10), None);
    job.add(25);
    let id = job.record().id;

    let row = |f: &Value, id: &str| {
        f["jobs"]
            .as_array()
            .and_then(|l| l.iter().find(|j| j["id"] == id).cloned())
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let f = loop {
        let f = fleet(&url).await;
        let seen = row(&f, &id);
        if seen.as_ref().is_some_and(|j| j["count"] == 25)
            && f["jobs"].as_array().unwrap().len() == 2
        {
            break f;
        }
        assert!(tokio::time::Instant::now() < deadline, "{f}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let jobs = f["jobs"].as_array().unwrap();
    // Running first, whatever changed last.
    assert_eq!(jobs[0]["id"], id, "{f}");
    assert_eq!(jobs[0]["state"], "running", "{f}");
    assert_eq!(jobs[0]["instance"], "jobs-b", "{f}");
    assert_eq!(jobs[0]["text"], "today's export", "{f}");
    assert_eq!(jobs[1]["state"], "succeeded", "{f}");
    assert_eq!(jobs[1]["note"], "5 rows", "{f}");

    job.end(JobState::Failed, "the disk filled");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let f = fleet(&url).await;
        if row(&f, &id).is_some_and(|j| j["state"] == "failed" && j["note"] == "the disk filled") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{f}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    b.shutdown().await;
    a.shutdown().await;
}

/// A job whose worker died without an end (its record still `running`, its last change long
/// past three of its pulse intervals) is `stale` on the dashboard, its elapsed time frozen at
/// that change, after the running ones; a running job's elapsed time goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_a_job_whose_pulses_stopped_as_stale() {
    use ebbflow::bus::jobs::{JobMonitor, JobRecord, JobState};
    let prefix = common::unique("fleetstale");
    let queue = common::unique("fs");
    let mut front = worker_settings(&prefix, &queue, "stale-a", "front");
    front.observability.bind = Some("127.0.0.1:0".parse().unwrap());
    let a = Worker::new(front)
        .with_store(common::memory())
        .handler(&queue, Done)
        .start()
        .await
        .unwrap();
    let url = format!("http://{}/dashboard.json", a.ops_addr().unwrap());
    let running = JobMonitor::start(&a.bus(), "export", "today's export", Some(10), None);
    let now = ebbflow::bus::now_ms();
    let mut dead = running.record();
    dead.id = "export/dead".into();
    dead.instance = "stale-gone".into();
    dead.interval_ms = Some(2_000);
    dead.started_at_ms = now - 100_000;
    dead.updated_at_ms = now - 90_000;
    dead.elapsed_ms = 10_000;
    a.bus().transport().record_job(&dead).await.unwrap();
    // The running job has not pulsed (its stored elapsed time is 0); shown, it goes on.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let f = loop {
        let f = fleet(&url).await;
        if f["jobs"].as_array().is_some_and(|l| l.len() == 2) {
            break f;
        }
        assert!(tokio::time::Instant::now() < deadline, "{f}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let jobs: Vec<JobRecord> = serde_json::from_value(f["jobs"].clone()).unwrap();
    assert_eq!(jobs[0].id, running.record().id, "{f}");
    assert_eq!(jobs[0].state, JobState::Running, "{f}");
    assert!(jobs[0].elapsed_ms >= 300, "{f}");
    assert_eq!(
        (jobs[1].id.as_str(), jobs[1].state, jobs[1].elapsed_ms),
        ("export/dead", JobState::Stale, 10_000),
        "{f}"
    );
    a.shutdown().await;
}
