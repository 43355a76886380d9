//! Bus: three replicas of the load-test worker on one queue at `min_tasks = 0`, with Redis as
//! the bus (`reach = "one"`), woken only by work-detected events that this process (another
//! process than the replicas, as any producer) publishes over a raw RESP socket in the README's
//! wire format. Measures the pickup of one message after the replicas went back to zero tasks,
//! the receives each wake-up costs, the storage calls while idle (counted by the proxy), and
//! how a burst announced by one event spreads over the replicas.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::proxy::CountSnapshot;
use crate::common::redis::RedisServer;
use crate::env::{now_us, send, send_burst, spawn_named, Env, Kind, Running, Setup, Tally};
use crate::report::{at_most, calls_json, exactly, percentile, range, Target};
use crate::Plan;

/// The replicas.
pub const REPLICAS: usize = 3;
const QUEUE: &str = "busreplicas";
/// The bus's channel prefix (`bus.channel_prefix`).
const PREFIX: &str = "ebbflow";

#[derive(Debug, Clone)]
pub struct BusRun {
    /// Pickup of one message per repetition: handler start minus send start, ms.
    pub pickups_ms: Vec<f64>,
    /// Receive calls each wake-up cost, over all replicas, until they were idle again.
    pub receives_per_wake: Vec<f64>,
    /// The idle window, and the storage calls the replicas made in it.
    pub idle_s: f64,
    pub idle_calls: CountSnapshot,
    /// The burst: messages, what each replica handled, drain time, duplicates and losses.
    pub burst_messages: usize,
    pub burst_per_replica: Vec<usize>,
    pub burst_drain_s: f64,
    pub burst_tally: Tally,
}

/// A producer's connection to Redis, speaking RESP by hand as a producer in any language can.
struct Producer {
    conn: TcpStream,
}

impl Producer {
    async fn connect(url: &str) -> Self {
        let addr = url.trim_start_matches("redis://");
        Self {
            conn: TcpStream::connect(addr).await.unwrap(),
        }
    }

    /// `XADD <prefix>:work:<queue> * queue <queue> from bench [messages n]`.
    async fn announce(&mut self, messages: Option<usize>) {
        let stream = format!("{PREFIX}:work:{QUEUE}");
        let mut args = vec!["XADD", &stream, "*", "queue", QUEUE, "from", "bench"];
        let n = messages.map(|n| n.to_string());
        if let Some(n) = &n {
            args.extend(["messages", n]);
        }
        let mut out = format!("*{}\r\n", args.len());
        for a in args {
            out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        self.conn.write_all(out.as_bytes()).await.unwrap();
        // The answer: the new entry's id, as a bulk string.
        let mut buf = [0u8; 128];
        let n = self.conn.read(&mut buf).await.unwrap();
        assert!(
            buf[..n].starts_with(b"$"),
            "XADD refused: {}",
            String::from_utf8_lossy(&buf[..n])
        );
    }
}

async fn all_idle(env: &Env, replicas: &[Running]) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut busy = 0;
        for r in replicas {
            busy += r.tasks(&env.client).await;
        }
        if busy == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "replicas never went idle");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn started(replicas: &[Running], body: &str) -> Option<u128> {
    replicas.iter().filter_map(|r| r.started(body)).min()
}

pub async fn bus(env: &Env, plan: &Plan) -> BusRun {
    let redis = RedisServer::start();
    let queue = env.fresh_queue(QUEUE).await;
    let setup = Setup::new(0, true)
        .with("EBBFLOW__BUS__KIND", "redis")
        .with("EBBFLOW__BUS__URL", redis.url())
        .with("EBBFLOW__BUS__CHANNEL_PREFIX", PREFIX)
        .with("EBBFLOW__BUS__ROLE", "loadtest")
        .with("BUS__REACH", "one")
        // Every message comes with its own event (one per pickup; the burst's one event stands
        // for all of it, sent before it): a woken task retires after the first receive that
        // leaves it with free slots instead of polling down its back-off curve.
        .with("SCALING__WAKE_ON_PUBLISH", "true")
        .with("IDLE_BACKOFF__MAX", "2s");
    let replicas: Vec<Running> = (0..REPLICAS)
        .map(|i| spawn_named(env, Kind::Ebbflow, QUEUE, &format!("{QUEUE}-r{i}"), &setup))
        .collect();
    for r in &replicas {
        r.wait_ready().await;
    }
    let mut producer = Producer::connect(&redis.url()).await;
    all_idle(env, &replicas).await;

    // Pickups: one message, one event, each time from zero tasks everywhere.
    let (mut pickups_ms, mut receives_per_wake) = (Vec::new(), Vec::new());
    for rep in 0..plan.bus_reps {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = env.proxy.counts_for(QUEUE);
        let body = format!("buswake-{rep}");
        let sent_at = now_us();
        send(&queue, &body).await;
        producer.announce(Some(1)).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        let at = loop {
            if let Some(at) = started(&replicas, &body) {
                break at;
            }
            assert!(Instant::now() < deadline, "{body} never picked up");
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        pickups_ms.push(at.saturating_sub(sent_at) as f64 / 1000.0);
        all_idle(env, &replicas).await;
        let calls = env.proxy.counts_for(QUEUE).since(&before);
        receives_per_wake.push(calls.receive as f64);
    }

    // Idle: nothing sent, nothing announced.
    all_idle(env, &replicas).await;
    let before = env.proxy.counts_for(QUEUE);
    tokio::time::sleep(plan.bus_idle).await;
    let idle_calls = env.proxy.counts_for(QUEUE).since(&before);

    // A burst announced by one event.
    let started_at = Instant::now();
    let sent: BTreeSet<String> = send_burst(&queue, "busburst", plan.bus_burst).await;
    producer.announce(Some(plan.bus_burst)).await;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let records: Vec<_> = replicas.iter().flat_map(|r| r.records()).collect();
        let depth = queue.approximate_depth().await.unwrap_or(u64::MAX);
        if depth == 0 && Tally::of(&sent, &records).lost == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the burst did not drain");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let burst_drain_s = started_at.elapsed().as_secs_f64();
    let mut all = Vec::new();
    let mut burst_per_replica = Vec::new();
    for r in replicas {
        let records: Vec<_> = r
            .stop_and_read()
            .into_iter()
            .filter(|(b, _)| b.starts_with("busburst-"))
            .collect();
        burst_per_replica.push(records.len());
        all.extend(records);
    }
    BusRun {
        pickups_ms,
        receives_per_wake,
        idle_s: plan.bus_idle.as_secs_f64(),
        idle_calls,
        burst_messages: plan.bus_burst,
        burst_per_replica,
        burst_drain_s,
        burst_tally: Tally::of(&sent, &all),
    }
}

/// Prints the table, adds the targets, and returns the JSON of the scenario.
pub fn report(b: &BusRun, targets: &mut Vec<Target>) -> serde_json::Value {
    let (p50, p99) = (
        percentile(&b.pickups_ms, 50.0),
        percentile(&b.pickups_ms, 99.0),
    );
    let per_wake = b.receives_per_wake.iter().sum::<f64>() / b.receives_per_wake.len() as f64;
    let replicas_used = b.burst_per_replica.iter().filter(|n| **n > 0).count();
    println!();
    println!(
        "| bus ({REPLICAS} load-test replicas, min_tasks = 0, Redis, reach = one; events from another process) | measured |"
    );
    println!("|---|---|");
    println!(
        "| pickup after zero tasks, {} times: p50 / p99 / max ms | {p50:.1} / {p99:.1} / {:.1} |",
        b.pickups_ms.len(),
        range(&b.pickups_ms).1
    );
    println!(
        "| receives per wake-up, mean [range] | {per_wake:.2} [{:.0}-{:.0}] |",
        range(&b.receives_per_wake).0,
        range(&b.receives_per_wake).1
    );
    println!(
        "| storage calls in {:.0} s idle (receive / all) | {} / {} |",
        b.idle_s,
        b.idle_calls.receive,
        b.idle_calls.consumer_calls()
    );
    println!(
        "| burst of {} announced by one event: drain s, handled per replica, duplicates / lost | {:.2}, {:?}, {} / {} |",
        b.burst_messages,
        b.burst_drain_s,
        b.burst_per_replica,
        b.burst_tally.duplicates,
        b.burst_tally.lost
    );
    targets.push(at_most("bus pickup from zero tasks, p50 ms", p50, 20.0));
    targets.push(at_most("bus pickup from zero tasks, p99 ms", p99, 100.0));
    targets.push(exactly(
        "bus storage calls while idle",
        b.idle_calls.consumer_calls() as f64,
        0.0,
    ));
    targets.push(at_most(
        "bus receives per wake-up (reach = one)",
        per_wake,
        1.2,
    ));
    targets.push(exactly(
        format!(
            "bus burst of {}: replicas that handled some",
            b.burst_messages
        ),
        replicas_used as f64,
        REPLICAS as f64,
    ));
    serde_json::json!({
        "replicas": REPLICAS,
        "pickups_ms": b.pickups_ms,
        "pickup_p50_ms": p50,
        "pickup_p99_ms": p99,
        "receives_per_wake": b.receives_per_wake,
        "receives_per_wake_mean": per_wake,
        "idle_s": b.idle_s,
        "idle_calls": calls_json(&b.idle_calls),
        "burst": {
            "messages": b.burst_messages,
            "drain_s": b.burst_drain_s,
            "per_replica": b.burst_per_replica,
            "duplicates": b.burst_tally.duplicates,
            "lost": b.burst_tally.lost,
        },
    })
}
