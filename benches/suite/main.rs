//! The benchmark suite: ebbflow's load-test worker against the classic fixed listener, both as
//! processes on the same SDK, against an Azurite of the suite's own behind a request-counting
//! proxy; plus ebbflow's runtime against a hand-written loop on the embedded backend.
//!
//! `scripts/bench` runs the full suite (`cargo bench --bench suite`); without `--bench` (as in
//! `cargo test --all-targets`, which CI runs) or with `--smoke` it runs a short smoke version
//! whose figures mean nothing but whose JSON must come out. Options: `--out DIR` (default
//! `target/bench`); `--only a,b` runs only the named scenarios (of `burst`, `idle`, `wake`,
//! `backlog`, `trickle`, `longjob`, `bus`, `embedded`, `claim`); `--set KEY=VALUE` (repeatable) adds a queue
//! setting (`EBBFLOW__QUEUES__<NAME>__KEY`, e.g. `REFILL_THRESHOLD=8`) or, for a key starting
//! with `EBBFLOW__`, any setting, to every ebbflow worker, for trying a change;
//! `--burst-concurrency N` runs the burst at another equal concurrency (default 8). Writes
//! `DIR/results-<mode>.json` (`results-<mode>-partial.json` with any of these options),
//! `DIR/burst-<mode>.svg` and prints the tables.
//!
//! One file per job: `env.rs` (Azurite, proxy, consumer processes, records), one file per
//! scenario, and `report.rs` (tables, targets, JSON).

// A binary has no public surface: its modules' `pub` items are for each other.
#![allow(unreachable_pub)]
// A benchmark reports on stdout.
#![allow(clippy::print_stdout)]

#[path = "../../tests/common/mod.rs"]
mod common;

mod backlog;
mod burst;
mod bus;
mod claim;
mod embedded;
mod env;
mod idle;
mod longjob;
mod report;
mod trickle;
mod wake;

use std::path::{Path, PathBuf};
use std::time::Duration;

use env::{Env, Kind};
use report::Results;

/// The sizes of one run of the suite.
#[derive(Debug, Clone)]
struct Plan {
    full: bool,
    burst_messages: usize,
    burst_runs: usize,
    /// ebbflow's concurrency and the classic listener's loops in the burst.
    burst_concurrency: u32,
    idle_warm_up: Duration,
    idle_window: Duration,
    wake_idle: Duration,
    wake_reps: usize,
    backlog_messages: usize,
    backlog_handler_ms: u64,
    backlog_concurrency: u32,
    trickle_rate: f64,
    trickle_for: Duration,
    /// Batch windows of the trickle runs, ms (None: off).
    trickle_windows: [Option<u64>; 2],
    long_job_reps: usize,
    /// Pause before each short message, ms: spread evenly over [min, max).
    long_job_gap_ms: (u64, u64),
    embedded_messages: usize,
    embedded_runs: usize,
    /// The bus scenario: pickups from zero tasks, the idle window, the burst.
    bus_reps: usize,
    bus_idle: Duration,
    bus_burst: usize,
}

const FULL: Plan = Plan {
    full: true,
    burst_messages: 600,
    burst_runs: 3,
    burst_concurrency: env::CONCURRENCY,
    // The 30 s back-off maximum is reached about 80 s after the last work: warm up past it.
    idle_warm_up: Duration::from_secs(100),
    idle_window: Duration::from_secs(60),
    wake_idle: Duration::from_secs(45),
    wake_reps: 10,
    backlog_messages: 400,
    backlog_handler_ms: 1000,
    backlog_concurrency: 16,
    trickle_rate: 20.0,
    trickle_for: Duration::from_secs(60),
    trickle_windows: [None, Some(250)],
    long_job_reps: 100,
    long_job_gap_ms: (200, 400),
    embedded_messages: 200_000,
    embedded_runs: 3,
    bus_reps: 25,
    bus_idle: Duration::from_secs(30),
    bus_burst: 600,
};

const SMOKE: Plan = Plan {
    full: false,
    burst_messages: 40,
    burst_runs: 1,
    burst_concurrency: env::CONCURRENCY,
    idle_warm_up: Duration::from_secs(2),
    idle_window: Duration::from_secs(3),
    wake_idle: Duration::from_secs(1),
    wake_reps: 2,
    backlog_messages: 40,
    backlog_handler_ms: 200,
    backlog_concurrency: 16,
    trickle_rate: 20.0,
    trickle_for: Duration::from_secs(2),
    trickle_windows: [None, Some(250)],
    long_job_reps: 3,
    long_job_gap_ms: (100, 200),
    embedded_messages: 1_000,
    embedded_runs: 1,
    bus_reps: 3,
    bus_idle: Duration::from_secs(2),
    bus_burst: 40,
};

/// The scenarios, in the order they run.
const SCENARIOS: [&str; 9] = [
    "burst", "idle", "wake", "backlog", "trickle", "longjob", "bus", "embedded", "claim",
];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let full = args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--smoke");
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let out = value("--out")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/bench")));
    let only: Vec<String> = match value("--only") {
        Some(list) => list.split(',').map(str::to_string).collect(),
        None => SCENARIOS.iter().map(|s| s.to_string()).collect(),
    };
    if let Some(unknown) = only.iter().find(|s| !SCENARIOS.contains(&s.as_str())) {
        panic!("--only: no scenario {unknown:?}; they are {SCENARIOS:?}");
    }
    let mut overrides = Vec::new();
    for (i, a) in args.iter().enumerate() {
        if a == "--set" {
            let kv = args.get(i + 1).expect("--set KEY=VALUE");
            let (k, v) = kv.split_once('=').expect("--set KEY=VALUE");
            overrides.push((k.to_uppercase(), v.to_string()));
        }
    }
    let mut plan = if full { FULL } else { SMOKE };
    let burst_concurrency =
        value("--burst-concurrency").map(|n| n.parse().expect("--burst-concurrency N"));
    if let Some(n) = burst_concurrency {
        plan.burst_concurrency = n;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Results of a tried change go to the partial JSON, never mistaken for the standard ones.
    let tried = !overrides.is_empty() || burst_concurrency.is_some();
    runtime.block_on(run(&plan, &only, overrides, tried, &out));
}

async fn run(
    plan: &Plan,
    only: &[String],
    overrides: Vec<(String, String)>,
    tried: bool,
    out: &Path,
) {
    std::fs::create_dir_all(out).unwrap();
    let selected = |name: &str| only.iter().any(|s| s == name);
    let mode = if plan.full { "full" } else { "smoke" };
    let mut r = Results::default();
    // Azurite only when a scenario needs it.
    if !overrides.is_empty() {
        println!("ebbflow workers get, beyond each scenario's settings: {overrides:?}");
    }
    // The claim scenario uses the Azurite of scripts/azurite (queue and blob), not the suite's.
    let env = if only.iter().any(|s| s != "embedded" && s != "claim") {
        let env = Env::start(out.join("records"), overrides).await;
        println!(
            "ebbflow benchmark suite ({mode}), Azurite at {}",
            env.azurite.url()
        );
        Some(env)
    } else {
        println!("ebbflow benchmark suite ({mode}), embedded only");
        None
    };

    if let Some(env) = &env {
        if selected("burst") {
            let (mut ebb, mut classic) = (Vec::new(), Vec::new());
            for run in 0..plan.burst_runs {
                for kind in [Kind::Ebbflow, Kind::Classic] {
                    let b =
                        burst::burst(env, kind, run, plan.burst_messages, plan.burst_concurrency)
                            .await;
                    println!(
                        "burst {} run {}: {:.2} s (sends took {:.2} s), {:.1} msg/s, {:.3} calls/msg, {} duplicates",
                        kind.name(),
                        run + 1,
                        b.drain_s,
                        b.send_s,
                        b.per_s,
                        b.calls_per_message,
                        b.duplicates
                    );
                    match kind {
                        Kind::Ebbflow => ebb.push(b),
                        Kind::Classic => classic.push(b),
                    }
                }
            }
            r.burst = Some((ebb, classic));
        }
        if selected("idle") {
            println!(
                "idle: {:?} warm-up, {:?} window",
                plan.idle_warm_up, plan.idle_window
            );
            r.idle = Some(idle::idle(env, plan).await);
        }
        if selected("wake") {
            println!(
                "wake: {} times after {:?} idle",
                plan.wake_reps, plan.wake_idle
            );
            r.wake = Some(wake::wake(env, plan).await);
        }
        if selected("backlog") {
            let b = backlog::backlog(env, plan).await;
            println!(
                "backlog: {} messages in {:.2} s, {} duplicates, {} lost",
                b.messages, b.drain_s, b.tally.duplicates, b.tally.lost
            );
            r.backlog = Some(b);
        }
        if selected("trickle") {
            for window in plan.trickle_windows {
                let t = trickle::trickle(env, plan, window).await;
                println!(
                    "trickle, {}: {} messages, {:.3} calls/msg, pickup p99 {:.1} ms",
                    t.label(),
                    t.messages,
                    t.calls_per_message,
                    report::percentile(&t.pickups_ms, 99.0)
                );
                r.trickle.push(t);
            }
        }
        if selected("longjob") {
            let l = longjob::long_job(env, plan).await;
            println!(
                "long job: {} pickups, p99 {:.1} ms",
                l.pickups_ms.len(),
                report::percentile(&l.pickups_ms, 99.0)
            );
            r.long_job = Some(l);
        }
        if selected("bus") {
            let b = bus::bus(env, plan).await;
            println!(
                "bus: {} pickups from zero tasks, burst of {} over {} replicas: {:?}",
                b.pickups_ms.len(),
                b.burst_messages,
                bus::REPLICAS,
                b.burst_per_replica
            );
            r.bus = Some(b);
        }
    }
    if selected("claim") {
        // 1 MiB and 16 MiB payloads, 50 each (smoke: two of 1 MiB).
        let (sizes, n): (&[usize], usize) = if plan.full {
            (&[1 << 20, 16 << 20], 50)
        } else {
            (&[1 << 20], 2)
        };
        r.claim = claim::claim(sizes, n, out.join("claim-azurite")).await;
    }
    if selected("embedded") {
        let (mut raw, mut emb) = (Vec::new(), Vec::new());
        for _ in 0..plan.embedded_runs {
            raw.push(embedded::raw_loop(plan.embedded_messages).await);
            emb.push(embedded::ebbflow_embedded(plan.embedded_messages).await);
        }
        // What tracing costs while off (no exporter installed yet): the span sites one
        // message passes, timed alone, against the time a message takes in the runs above.
        // Less the plain `message` log span a message had before traces existed; the
        // smaller of three tries of each (the machine's other work only adds).
        // Long enough that the CPU clock's resolution (a scheduler tick) stays small.
        let sites_n = if plan.full { 2_000_000 } else { 200_000 };
        let sites_ns = (0..3)
            .map(|_| embedded::span_sites_off_ns(sites_n))
            .fold(f64::INFINITY, f64::min);
        let base_ns = (0..3)
            .map(|_| embedded::message_span_ns(sites_n))
            .fold(f64::INFINITY, f64::min);
        let off_ns = (sites_ns - base_ns).max(0.0);
        let off_rate = emb.iter().sum::<f64>() / emb.len().max(1) as f64;
        let per_message_ns = 1e9 / off_rate.max(1.0);
        println!(
            "tracing off: the span sites of one message cost {sites_ns:.1} ns of CPU, of which \
             {base_ns:.1} ns the message log span it always had: {off_ns:.1} ns added, {:.3}% \
             of the {per_message_ns:.0} ns a message takes in the embedded dispatch",
            100.0 * off_ns / per_message_ns
        );
        let mut cost = report::Traces {
            sites_ns,
            base_ns,
            off_site_ns: off_ns,
            per_message_ns,
            exported_per_s: None,
            off_per_s: off_rate,
        };
        // The cost of exported traces: one more run with the OTLP exporter on (pointed at a
        // closed loopback port: spans are made, batched and sent; the sends fail). Last, since
        // the exporter stays installed for the rest of the process. Off (the runs above) each
        // span site is one atomic load, so off costs nothing beside the run-to-run spread.
        let mut traces = ebbflow::config::TracesSettings::default();
        traces.endpoint = Some("http://127.0.0.1:9".into());
        traces.filter = Some("info".into());
        if ebbflow::observability::logging::init_with_traces(
            ebbflow::observability::LogFormat::Text,
            "off",
            &traces,
        )
        .unwrap_or(false)
        {
            let on = embedded::ebbflow_embedded(plan.embedded_messages).await;
            let off = off_rate;
            cost.exported_per_s = Some(on);
            println!(
                "embedded dispatch with traces exported: {on:.0} messages/s; off: {off:.0} \
                 messages/s ({:.1}x)",
                off / on.max(1.0)
            );
        }
        r.embedded = Some((raw, emb));
        r.traces = Some(cost);
    }

    let complete = SCENARIOS.iter().all(|s| selected(s)) && !tried;
    let (lost, duplicates) = report::report(plan, &r, complete, out);
    assert_eq!(lost, 0, "messages were lost");
    // Nothing fails in these runs, so ebbflow handles each message exactly once.
    assert_eq!(duplicates, 0, "ebbflow handled messages more than once");
}
