//! Pickup while a long job runs: one message whose handler runs for the whole scenario, then
//! short messages one at a time, each followed by a push trigger. A listener that waited for
//! its batch to end before receiving again would hold every one of them behind the long job.

use std::time::{Duration, Instant};

use crate::env::{now_us, send, spawn, Env, Kind, Setup};
use crate::Plan;

#[derive(Debug, Clone)]
pub struct LongJob {
    /// How long the long job was set to run, ms (it is aborted when the worker stops).
    pub long_ms: u64,
    pub pickups_ms: Vec<f64>,
    /// The long job was running before the first short message and still after the last.
    pub ran_throughout: bool,
}

/// Waits until the worker's `in_flight` gauge reaches `n`.
async fn in_flight_reaches(env: &Env, worker: &crate::env::Running, n: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if worker.gauge(&env.client, "in_flight").await >= n {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

pub async fn long_job(env: &Env, plan: &Plan) -> LongJob {
    let name = "longjob";
    let queue = env.fresh_queue(name).await;
    // A short drain deadline: stopping aborts the long job (and releases it) at once; the
    // warning that says so is expected here.
    let setup = Setup::new(1, true)
        .with("EBBFLOW__WORKER__DRAIN_TIMEOUT", "1s")
        .with("RUST_LOG", "error");
    let worker = spawn(env, Kind::Ebbflow, name, &setup);
    worker.wait_ready().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Longer than the series can take, with room to spare.
    let long_ms = plan.long_job_reps as u64 * (plan.long_job_gap_ms.1 + 200) + 10_000;
    let long = format!("work_ms={long_ms};{name}-long");
    send(&queue, &long).await;
    worker.trigger(&env.client).await;
    let started_before = in_flight_reaches(env, &worker, 1).await;
    let mut pickups_ms = Vec::new();
    let (gap_min, gap_max) = plan.long_job_gap_ms;
    for rep in 0..plan.long_job_reps {
        // Gaps spread evenly over [min, max) so arrivals fall anywhere in the task's cycle.
        let spread = (gap_max - gap_min).max(1);
        let gap = gap_min + (rep as u64 * 37) % spread;
        tokio::time::sleep(Duration::from_millis(gap)).await;
        let body = format!("{name}-{rep}");
        let sent_at = now_us();
        send(&queue, &body).await;
        worker.trigger(&env.client).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        let started = loop {
            if let Some(at) = worker.started(&body) {
                break at;
            }
            assert!(Instant::now() < deadline, "{body} never picked up");
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        pickups_ms.push(started.saturating_sub(sent_at) as f64 / 1000.0);
    }
    // The long job writes its record only when it ends: none yet means it still runs.
    let still_running =
        worker.gauge(&env.client, "in_flight").await >= 1 && worker.started(&long).is_none();
    worker.stop();
    LongJob {
        long_ms,
        pickups_ms,
        ran_throughout: started_before && still_running,
    }
}
