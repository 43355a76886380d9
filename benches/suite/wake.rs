//! Wake: one message after a long idle, several times; pickup = handler start minus send
//! start, for each of the idle scenario's consumers side by side.

use std::time::{Duration, Instant};

use crate::env::{join_all, now_us, send, start_all, Env, Running};
use crate::Plan;

#[derive(Debug, Clone)]
pub struct Wake {
    pub label: &'static str,
    pub pickups_ms: Vec<f64>,
}

async fn wake_series(env: &Env, r: &Running, plan: &Plan) -> Vec<f64> {
    let queue = env.direct.queue(&r.queue).unwrap();
    r.wait_ready().await;
    let mut pickups = Vec::new();
    for rep in 0..plan.wake_reps {
        tokio::time::sleep(plan.wake_idle).await;
        let body = format!("wake-{rep}");
        let sent_at = now_us();
        send(&queue, &body).await;
        r.trigger(&env.client).await;
        let deadline = Instant::now() + Duration::from_secs(120);
        let started = loop {
            if let Some(at) = r.started(&body) {
                break at;
            }
            assert!(Instant::now() < deadline, "{body} never picked up");
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        pickups.push(started.saturating_sub(sent_at) as f64 / 1000.0);
    }
    pickups
}

pub async fn wake(env: &Env, plan: &Plan) -> Vec<Wake> {
    let running = start_all(env, "wake").await;
    let series = join_all(
        running
            .iter()
            .map(|(_, r)| wake_series(env, r, plan))
            .collect(),
    )
    .await;
    running
        .into_iter()
        .zip(series)
        .map(|((label, r), pickups_ms)| {
            r.stop();
            Wake { label, pickups_ms }
        })
        .collect()
}
