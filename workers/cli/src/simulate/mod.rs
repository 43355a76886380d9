//! The scaling simulator: runs the real worker, listener and scaling policy on the embedded
//! store against a load profile, in virtual time (tokio's paused clock), so an hour of traffic
//! takes seconds. With a `[replicas]` section it runs a fleet of replicas (each a real worker
//! on the one shared store) under a KEDA-like controller ([`keda`]); the simulated service
//! answers 503 ServerBusy beyond its scalability targets ([`service`]). It samples depth,
//! tasks, replicas, receive and throttled calls and pickup latency every virtual second and
//! summarizes cost and latency.
//!
//! A profile is a TOML file:
//!
//! ```toml
//! duration = "10m"      # how long to simulate
//! handler_ms = 20       # simulated work per message
//! trigger = false       # whether the producer publishes through this process (push trigger;
//!                       # one replica only)
//! queues = 1            # queues the load is spread over, each with the chosen queue's rules
//! [[phases]]            # from `at` until the next phase: `rate` messages/s over all queues,
//! at = "0s"             # after an optional one-off `burst`
//! rate = 0
//! [[phases]]
//! at = "60s"
//! burst = 2000
//! [replicas]            # optional: a KEDA-like controller over replicas (see `keda`)
//! min = 0
//! max = 10
//! queue_length = 100
//! [service]             # optional: the targets the simulated service enforces
//! queue_messages_per_second = 2000
//! account_requests_per_second = 20000
//! accounts = 1
//! ```
//!
//! Files: `mod.rs` the run, `profile.rs` the profile, [`keda`] the controller, `fleet.rs` the
//! replicas, [`service`] the targets, `report.rs` the CSV, chart and tables, `tests.rs` the
//! unit tests.

mod fleet;
pub mod keda;
mod profile;
mod report;
pub mod service;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ebbflow::codec::Encoding;
use ebbflow::config::{QueueSettings, Settings};
use ebbflow::handler::{Context, Handler, HandlerError, Publisher};
use ebbflow::store::MemoryStore;
use ebbflow::store::QueueStore;
use ebbflow::store::RetryingStore;
use ebbflow::store::ShardingStore;
use ebbflow::store::{CallCounts, CountingStore};
pub use keda::{Keda, ReplicaSettings};
pub use profile::{Phase, Profile, MAX_RATE};
pub use report::{comparison_table, csv, summary_text, svg};
pub use service::{ServiceLimits, ServiceSettings};

/// One virtual second.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Seconds since the start.
    pub t: u64,
    /// Messages on the queues (visible or not) at the end of the second.
    pub depth: u64,
    /// Dequeue tasks running, over all replicas.
    pub tasks: u64,
    /// Receive calls made during the second.
    pub receive_calls: u64,
    /// Messages handled during the second.
    pub handled: u64,
    /// Median pickup latency (send to handler start) of the messages started this second.
    pub pickup_p50_ms: Option<f64>,
    /// Replicas that exist (starting, running or draining).
    pub replicas: u64,
    /// Calls the service refused with 503 during the second.
    pub throttled_calls: u64,
}

/// The totals of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Simulated seconds.
    pub seconds: u64,
    /// Messages sent by the profile.
    pub sent: u64,
    /// Messages handled (deleted after their handler succeeded).
    pub handled: u64,
    /// Worker storage calls (receive, delete, update, peek, properties), refused ones included.
    pub storage_calls: u64,
    /// Receive calls.
    pub receive_calls: u64,
    /// Storage calls per handled message.
    pub calls_per_message: f64,
    /// Worker storage calls per hour in seconds with nothing to do (empty queue, nothing
    /// handled), or 0 when there were none.
    pub idle_calls_per_hour: f64,
    /// Median pickup latency.
    pub pickup_p50_ms: f64,
    /// 99th percentile pickup latency.
    pub pickup_p99_ms: f64,
    /// Most tasks at once (over all replicas).
    pub peak_tasks: u64,
    /// Most replicas at once.
    pub peak_replicas: u64,
    /// Replicas alive, summed over the run's seconds, in minutes (what a per-replica bill
    /// counts).
    pub replica_minutes: f64,
    /// Depth reads by the replica controller (KEDA's calls).
    pub scaler_calls: u64,
    /// Calls refused because a queue was over its message rate.
    pub throttled_queue: u64,
    /// Calls refused because an account was over its request rate.
    pub throttled_account: u64,
    /// Messages still on the queues after the replicas drained at the profile's end.
    pub left: u64,
}

/// Both sides of a comparison on one profile.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    /// Single-task replicas (one task, concurrency 1, batch 1) scaled by KEDA alone.
    pub keda_only: Summary,
    /// The configured rules (tasks scaled in-process) under the same KEDA settings.
    pub ebbflow: Summary,
}

/// Records pickup latency and sleeps the simulated work.
#[derive(Clone)]
struct Simulated {
    work: Duration,
    pickups: Arc<Mutex<Vec<Duration>>>,
    runs: Arc<AtomicU64>,
}

impl Handler for Simulated {
    type Message = Vec<u8>;

    async fn handle(&self, _body: Vec<u8>, ctx: Context) -> Result<(), HandlerError> {
        if let Some(sent) = ctx.inserted_at() {
            let waited = (ebbflow::store::now_utc() - sent).unsigned_abs();
            self.pickups.lock().expect("pickups mutex").push(waited);
        }
        tokio::time::sleep(self.work).await;
        self.runs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

/// Runs `profile` against queues with `queue` settings on the clock of the current runtime
/// (paused for a simulation, real for a comparison).
pub async fn run(
    profile: &Profile,
    queue: QueueSettings,
) -> Result<(Vec<Sample>, Summary), String> {
    profile.validate()?;
    let names = profile.queue_names();
    let mut settings = Settings::default();
    settings.storage.create_queues = true;
    let mut queue = queue;
    queue.encoding = Encoding::None;
    for name in &names {
        settings.queues.insert(name.clone(), queue.clone());
    }
    settings.validate().map_err(|e| e.to_string())?;
    // Queue i (its shards and poison queue) lives on account i % accounts.
    let mut placement = HashMap::new();
    for (i, name) in names.iter().enumerate() {
        let physical = queue
            .shard_names(name)
            .into_iter()
            .chain([queue.poison_queue_name(name)]);
        for p in physical {
            placement.insert(p, i);
        }
    }
    let memory = MemoryStore::new();
    let limits = ServiceLimits::new(profile.service.clone(), placement);
    let throttled = limits.throttled();
    let service = limits.on(Arc::new(memory.clone()));
    let counting = CountingStore::new(service.clone());
    let counts: Arc<CallCounts> = counting.counts();
    let counting: Arc<dyn QueueStore> = Arc::new(counting);
    let shards = settings.shard_counts();
    // What the simulator itself reads (the chart's depth): the queues as they are, for free.
    let observed = ShardingStore::wrap_sharded(Arc::new(memory.clone()), shards.clone());
    let observed: Vec<_> = names
        .iter()
        .map(|n| observed.queue(n))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    // What KEDA reads: the service, throttled like everyone, counted apart.
    let scaler_store = CountingStore::new(service);
    let scaler_counts = scaler_store.counts();
    let scaler = ShardingStore::wrap_sharded(Arc::new(scaler_store), shards.clone());
    let scaler: Vec<_> = names
        .iter()
        .map(|n| scaler.queue(n))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;

    let pickups = Arc::new(Mutex::new(Vec::new()));
    let handler = Simulated {
        work: Duration::from_millis(profile.handler_ms),
        pickups: pickups.clone(),
        runs: Arc::default(),
    };
    let replica_settings = profile.replicas.clone();
    let mut keda = replica_settings.clone().map(Keda::new);
    let startup = replica_settings
        .as_ref()
        .map_or(Duration::ZERO, |r| r.startup_delay);
    let mut fleet = fleet::Fleet::new(settings.clone(), counting.clone(), handler.clone(), startup);
    // Replicas already running when the profile starts: KEDA's minimum, or the one replica.
    fleet.scale_to(keda.as_ref().map_or(1, Keda::replicas), true);
    let publishers: Vec<Publisher> = if profile.trigger {
        // One replica, started at once: wait for it, then publish through it.
        fleet.started(1).await;
        if let Some(e) = fleet.failure() {
            return Err(e);
        }
        let found = fleet.with_first(|w| {
            names
                .iter()
                .map(|n| w.publisher(n).expect("configured"))
                .collect::<Vec<_>>()
        });
        found.ok_or("the replica did not start")?
    } else {
        // Another process, through the same service: its 503s are retried, then sent again.
        let store = RetryingStore::wrap(counting.clone(), settings.storage.retry);
        let store = ShardingStore::wrap_sharded(store, shards.clone());
        names
            .iter()
            .map(|n| store.queue(n).map(|q| Publisher::new(q, Encoding::None)))
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?
    };
    // The queues exist before the producer starts (a replica may still be starting).
    for q in &observed {
        q.create_if_missing().await.map_err(|e| e.to_string())?;
    }
    let producer = tokio::spawn(produce(profile.clone(), publishers));

    let start = tokio::time::Instant::now();
    let mut samples = Vec::new();
    let (mut last_receives, mut last_runs, mut last_pickups, mut last_throttled) = (0, 0, 0, 0);
    let (mut idle_seconds, mut idle_calls, mut last_calls) = (0u64, 0u64, 0u64);
    let (mut peak_tasks, mut peak_replicas, mut replica_seconds) = (0u64, 0u64, 0u64);
    let seconds = profile.duration.as_secs();
    for t in 1..=seconds {
        tokio::time::sleep_until(start + Duration::from_secs(t)).await;
        if let Some(e) = fleet.failure() {
            return Err(e);
        }
        if let (Some(k), Some(r)) = (keda.as_mut(), replica_settings.as_ref()) {
            let poll = t % r.polling_interval.as_secs().max(1) == 0;
            let sync = t % r.hpa_sync_period.as_secs().max(1) == 0;
            if poll || sync {
                // A depth the service refused leaves this evaluation out, as KEDA would.
                if let Some(depths) = depths_of(&scaler).await {
                    let now = Duration::from_secs(t);
                    if poll {
                        k.poll(now, &depths);
                    }
                    if sync {
                        k.sync(now, &depths);
                    }
                    fleet.scale_to(k.replicas(), false);
                }
            }
        }
        let snaps = fleet.snapshots();
        let depth = depths_of(&observed).await.unwrap_or_default().iter().sum();
        let tasks: u64 = snaps.iter().flatten().map(|q| q.active_tasks).sum();
        let in_flight: u64 = snaps.iter().flatten().map(|q| q.in_flight).sum();
        let worker_peak = snaps
            .iter()
            .map(|qs| qs.iter().map(|q| q.peak_tasks).sum::<u64>())
            .max()
            .unwrap_or(0);
        peak_tasks = peak_tasks.max(tasks).max(worker_peak);
        let replicas = fleet.existing();
        peak_replicas = peak_replicas.max(replicas);
        replica_seconds += replicas;
        let receives = CallCounts::get(&counts.receive);
        let calls = counts.worker_calls();
        let runs = handler.runs.load(Ordering::Relaxed);
        let throttled_now = throttled.total();
        let mut second: Vec<Duration> = {
            let all = pickups.lock().expect("pickups mutex");
            all[last_pickups..].to_vec()
        };
        last_pickups += second.len();
        second.sort();
        let handled = runs - last_runs;
        if depth == 0 && handled == 0 && in_flight == 0 {
            idle_seconds += 1;
            idle_calls += calls - last_calls;
        }
        samples.push(Sample {
            t,
            depth,
            tasks,
            receive_calls: receives - last_receives,
            handled,
            pickup_p50_ms: (!second.is_empty()).then(|| percentile(&second, 50.0)),
            replicas,
            throttled_calls: throttled_now - last_throttled,
        });
        (last_receives, last_runs, last_calls, last_throttled) =
            (receives, runs, calls, throttled_now);
    }
    let sent = producer.await.map_err(|e| e.to_string())??;
    let handled = fleet.shutdown().await;
    // After the drain: what no replica took (or gave back).
    let left = depths_of(&observed).await.unwrap_or_default().iter().sum();
    let mut all = std::mem::take(&mut *pickups.lock().expect("pickups mutex"));
    all.sort();
    let storage_calls = counts.worker_calls();
    let summary = Summary {
        seconds,
        sent,
        handled,
        storage_calls,
        receive_calls: CallCounts::get(&counts.receive),
        calls_per_message: storage_calls as f64 / handled.max(1) as f64,
        idle_calls_per_hour: if idle_seconds == 0 {
            0.0
        } else {
            idle_calls as f64 * 3600.0 / idle_seconds as f64
        },
        pickup_p50_ms: percentile(&all, 50.0),
        pickup_p99_ms: percentile(&all, 99.0),
        peak_tasks,
        peak_replicas,
        replica_minutes: replica_seconds as f64 / 60.0,
        scaler_calls: scaler_counts.worker_calls(),
        throttled_queue: throttled.queue.load(Ordering::Relaxed),
        throttled_account: throttled.account.load(Ordering::Relaxed),
        left,
    };
    Ok((samples, summary))
}

/// Each queue's approximate depth, or `None` when a read failed.
async fn depths_of(queues: &[Arc<dyn ebbflow::store::Queue>]) -> Option<Vec<u64>> {
    let mut depths = Vec::with_capacity(queues.len());
    for q in queues {
        depths.push(q.approximate_depth().await.ok()?);
    }
    Some(depths)
}

/// How often the producer sends what it owes: often enough that a message waits at most this
/// long behind its intended send time, seldom enough that 20,000 messages/s do not take 20,000
/// timer wake-ups a second.
const PRODUCER_TICK: Duration = Duration::from_millis(10);

/// Sends the profile's messages on the current clock, spread round-robin over `publishers`;
/// returns how many were sent. A send the service keeps refusing is tried again (a producer
/// backs up; it does not drop messages) until the profile ends: sends still owed then are not
/// made, so `sent` falls short of the profile's rate when the service throttled the producer.
async fn produce(profile: Profile, publishers: Vec<Publisher>) -> Result<u64, String> {
    let start = tokio::time::Instant::now();
    let end = start + profile.duration;
    let mut sent = 0u64;
    let send = |k: u64| {
        let publisher = &publishers[(k % publishers.len() as u64) as usize];
        async move {
            loop {
                // The profile is over: what was not sent by now is not sent.
                if tokio::time::Instant::now() >= end {
                    return Ok(false);
                }
                match publisher.send_bytes(b"x", Default::default()).await {
                    Ok(_) => return Ok(true),
                    Err(ebbflow::handler::PublishError::Store(e)) if e.is_transient() => {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Err(e) => return Err(e.to_string()),
                }
            }
        }
    };
    for (i, phase) in profile.phases.iter().enumerate() {
        if phase.at >= profile.duration {
            // It starts after the profile: nothing more to send, and no reason to wait.
            break;
        }
        let phase_end = profile
            .phases
            .get(i + 1)
            .map_or(profile.duration, |next| next.at)
            .min(profile.duration);
        let phase_start = start + phase.at;
        tokio::time::sleep_until(phase_start).await;
        for _ in 0..phase.burst {
            if !send(sent).await? {
                return Ok(sent);
            }
            sent += 1;
        }
        if phase.rate > 0.0 {
            // Below 100 messages/s one wake-up per message; above, one per tick.
            let tick = Duration::from_secs_f64(1.0 / phase.rate).max(PRODUCER_TICK);
            let mut owed_from = 0u64;
            let mut next = phase_start;
            while next < start + phase_end {
                tokio::time::sleep_until(next).await;
                let elapsed = (tokio::time::Instant::now() - phase_start).as_secs_f64();
                // Every message whose send time falls before the next tick.
                let due = ((elapsed + tick.as_secs_f64()) * phase.rate - 1e-9).ceil() as u64;
                let due =
                    due.min(((phase_end - phase.at).as_secs_f64() * phase.rate).ceil() as u64);
                while owed_from < due {
                    if !send(sent).await? {
                        return Ok(sent);
                    }
                    sent += 1;
                    owed_from += 1;
                }
                next += tick;
            }
        }
    }
    Ok(sent)
}

/// Runs `profile` in virtual time on a fresh paused runtime. The simulated replicas log
/// nothing: a throttled fleet would write a warning per retried call, and the summary says
/// what they add up to.
pub fn simulate(profile: &Profile, queue: QueueSettings) -> Result<(Vec<Sample>, Summary), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .map_err(|e| e.to_string())?;
    // A current-thread runtime runs everything on this thread, so this covers every task.
    tracing::subscriber::with_default(tracing::subscriber::NoSubscriber::default(), || {
        runtime.block_on(run(profile, queue))
    })
}

/// Runs `profile` twice in virtual time under its `[replicas]` controller: with replicas of one
/// task handling one message at a time (KEDA alone scales), and with `queue`'s rules (ebbflow's
/// tasks scale inside each replica).
pub fn compare(profile: &Profile, queue: QueueSettings) -> Result<Comparison, String> {
    if profile.replicas.is_none() {
        return Err("compare needs a profile with a [replicas] section".into());
    }
    let mut single = queue.clone();
    single.concurrency = ebbflow::config::Concurrency::of::<1>();
    single.batch_size = ebbflow::config::BatchSize::of::<1>();
    single.refill_threshold = None;
    single.scaling.min_tasks = ebbflow::config::MinTasks::One;
    single.scaling.max_tasks = ebbflow::config::MaxTasks::of::<1>();
    single.scaling.depth_rules.clear();
    let (_, keda_only) = simulate(profile, single)?;
    let (_, ebbflow) = simulate(profile, queue)?;
    Ok(Comparison { keda_only, ebbflow })
}

#[cfg(test)]
mod tests;
