//! Trickle: a steady light stream, each message followed by a push trigger (as a producer
//! using triggers sends them), with and without a batch window. What it costs in storage calls
//! per message, and how long each message waits to be picked up.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::common::proxy::CountSnapshot;
use crate::env::{drained, now_us, send, spawn, Env, Kind, Setup, Tally};
use crate::Plan;

#[derive(Debug, Clone)]
pub struct Trickle {
    /// The batch window, ms (None: off).
    pub window_ms: Option<u64>,
    pub messages: usize,
    /// From the first send until the last message was settled.
    pub seconds: f64,
    pub calls: CountSnapshot,
    pub calls_per_message: f64,
    /// Handler start minus send start.
    pub pickups_ms: Vec<f64>,
    /// How long the producer's send took (until the message was stored).
    pub send_ms: Vec<f64>,
    /// Handler start minus the send's return: the trigger's POST and the listener's share.
    pub after_stored_ms: Vec<f64>,
    pub tally: Tally,
    pub peak_tasks: u64,
}

impl Trickle {
    pub fn label(&self) -> String {
        match self.window_ms {
            None => "no batch window".to_string(),
            Some(ms) => format!("batch_window = {ms}ms"),
        }
    }
}

pub async fn trickle(env: &Env, plan: &Plan, window_ms: Option<u64>) -> Trickle {
    let name = match window_ms {
        None => "tricklenowindow".to_string(),
        Some(ms) => format!("trickle{ms}ms"),
    };
    let queue = env.fresh_queue(&name).await;
    let mut setup = Setup::new(1, true);
    if let Some(ms) = window_ms {
        setup = setup.with("BATCH_WINDOW", format!("{ms}ms"));
    }
    let worker = spawn(env, Kind::Ebbflow, &name, &setup);
    worker.wait_ready().await;
    // Past its first (empty) receive: the task is sleeping on its back-off curve.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let trigger = worker.trigger_target().expect("a trigger endpoint");
    let n = (plan.trickle_rate * plan.trickle_for.as_secs_f64()).round() as usize;
    let before = env.proxy.counts_for(&name);
    let start = Instant::now();
    // One producer per message, started on a fixed schedule, so a slow send never delays the
    // next one.
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / plan.trickle_rate));
    let mut producers = tokio::task::JoinSet::new();
    for i in 0..n {
        ticker.tick().await;
        let (queue, trigger, client) = (queue.clone(), trigger.clone(), env.client.clone());
        let body = format!("{name}-{i}");
        producers.spawn(async move {
            let sent_at = now_us();
            send(&queue, &body).await;
            let stored = now_us();
            trigger.send(&client).await;
            (body, [sent_at, stored, now_us()])
        });
    }
    // Per payload: send started, send returned, trigger returned (Unix µs).
    let mut timeline: BTreeMap<String, [u128; 3]> = BTreeMap::new();
    while let Some(done) = producers.join_next().await {
        let (body, times) = done.unwrap();
        timeline.insert(body, times);
    }
    let sent: BTreeSet<String> = timeline.keys().cloned().collect();
    drained(&queue, &worker, &sent, Duration::from_secs(120)).await;
    let seconds = start.elapsed().as_secs_f64();
    let calls = env.proxy.counts_for(&name).since(&before);
    let peak_tasks = worker.gauge(&env.client, "peak_tasks").await;
    let records = worker.stop_and_read();
    let mut first_start: BTreeMap<&str, u128> = BTreeMap::new();
    for (body, at) in &records {
        let e = first_start.entry(body.as_str()).or_insert(*at);
        *e = (*e).min(*at);
    }
    let ms = |from: u128, to: u128| to.saturating_sub(from) as f64 / 1000.0;
    let (mut pickups_ms, mut send_ms, mut after_stored_ms) = (vec![], vec![], vec![]);
    let mut lines = String::from("payload\tsend_us\tstored_us\ttriggered_us\tstarted_us\n");
    for (body, [sent_at, stored, triggered]) in &timeline {
        let Some(started) = first_start.get(body.as_str()).copied() else {
            continue;
        };
        pickups_ms.push(ms(*sent_at, started));
        send_ms.push(ms(*sent_at, *stored));
        after_stored_ms.push(ms(*stored, started));
        lines.push_str(&format!(
            "{body}\t{sent_at}\t{stored}\t{triggered}\t{started}\n"
        ));
    }
    // The whole timeline, for looking into a tail.
    std::fs::write(env.dir.join(format!("{name}-timeline.tsv")), lines).unwrap();
    Trickle {
        window_ms,
        messages: n,
        seconds,
        calls,
        calls_per_message: calls.consumer_calls() as f64 / n as f64,
        pickups_ms,
        send_ms,
        after_stored_ms,
        tally: Tally::of(&sent, &records),
        peak_tasks,
    }
}
