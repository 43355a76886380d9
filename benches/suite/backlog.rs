//! Backlog: a queue already holding many messages of slow work, with a short visibility
//! timeout, started cold. A received message that waited for a free slot past its visibility
//! would be received again (a duplicate); the listener takes slots before it receives, so
//! there should be none.

use std::time::{Duration, Instant};

use crate::common::proxy::CountSnapshot;
use crate::env::{drained, send_burst, spawn, Env, Kind, Setup, Tally};
use crate::Plan;

/// The visibility timeout of the backlog scenario.
pub const VISIBILITY: &str = "5s";

#[derive(Debug, Clone)]
pub struct Backlog {
    pub messages: usize,
    pub handler_ms: u64,
    pub concurrency: u32,
    pub drain_s: f64,
    pub per_s: f64,
    pub calls: CountSnapshot,
    pub calls_per_message: f64,
    pub tally: Tally,
}

pub async fn backlog(env: &Env, plan: &Plan) -> Backlog {
    let name = "backlog";
    let queue = env.fresh_queue(name).await;
    let sent = send_burst(&queue, name, plan.backlog_messages).await;
    let setup = Setup::new(1, false)
        .handler_ms(plan.backlog_handler_ms)
        .concurrency(plan.backlog_concurrency)
        .with("VISIBILITY_TIMEOUT", VISIBILITY);
    let before = env.proxy.counts_for(name);
    let start = Instant::now();
    let worker = spawn(env, Kind::Ebbflow, name, &setup);
    // At least twice the ideal time (messages / concurrency x handler), plus start-up.
    let ideal = plan.backlog_handler_ms * plan.backlog_messages as u64
        / u64::from(plan.backlog_concurrency);
    drained(
        &queue,
        &worker,
        &sent,
        Duration::from_millis(2 * ideal) + Duration::from_secs(60),
    )
    .await;
    let drain_s = start.elapsed().as_secs_f64();
    let calls = env.proxy.counts_for(name).since(&before);
    // Read after the worker exited: a late second run of a message would be in the file now.
    let records = worker.stop_and_read();
    let n = plan.backlog_messages;
    Backlog {
        messages: n,
        handler_ms: plan.backlog_handler_ms,
        concurrency: plan.backlog_concurrency,
        drain_s,
        per_s: n as f64 / drain_s,
        calls,
        calls_per_message: calls.consumer_calls() as f64 / n as f64,
        tally: Tally::of(&sent, &records),
    }
}
