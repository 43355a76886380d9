//! Idle: after some work and a warm-up past the back-off maximum, what each consumer costs
//! while its queue stays empty: receives and all calls per hour, CPU and memory.

use crate::common::proxy::CountSnapshot;
use crate::env::{clock_ticks_per_second, send_burst, start_all, Env};
use crate::Plan;

#[derive(Debug, Clone)]
pub struct Idle {
    pub label: &'static str,
    pub receives_per_hour: f64,
    pub calls_per_hour: f64,
    pub cpu_percent: f64,
    pub rss_mb: f64,
}

pub async fn idle(env: &Env, plan: &Plan) -> Vec<Idle> {
    let running = start_all(env, "idle").await;
    // Some work first, so the back-off starts from a busy state, then the warm-up.
    for (_, r) in &running {
        let q = env.direct.queue(&r.queue).unwrap();
        send_burst(&q, "warm", 5).await;
        r.wait_ready().await;
        r.trigger(&env.client).await;
    }
    tokio::time::sleep(plan.idle_warm_up).await;
    let before: Vec<(CountSnapshot, u64)> = running
        .iter()
        .map(|(_, r)| (env.proxy.counts_for(&r.queue), r.cpu_ticks()))
        .collect();
    tokio::time::sleep(plan.idle_window).await;
    let hours = plan.idle_window.as_secs_f64() / 3600.0;
    let ticks = clock_ticks_per_second();
    let mut results = Vec::new();
    for ((label, r), (c0, cpu0)) in running.into_iter().zip(before) {
        let c = env.proxy.counts_for(&r.queue).since(&c0);
        let cpu = (r.cpu_ticks() - cpu0) as f64 / ticks;
        results.push(Idle {
            label,
            receives_per_hour: c.receive as f64 / hours,
            calls_per_hour: c.consumer_calls() as f64 / hours,
            cpu_percent: 100.0 * cpu / plan.idle_window.as_secs_f64(),
            rss_mb: r.status_kb("VmRSS:") as f64 / 1024.0,
        });
        r.stop();
    }
    results
}
