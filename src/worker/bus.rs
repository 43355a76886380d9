//! The worker's side of the bus: work notices wake a queue's listener like a local trigger;
//! listeners tell the bus when their queue looked drained (for the publish modes) and when
//! they hold more than they can take (the notice is passed on to another replica); long jobs'
//! pulses and this instance's presence are published; an outage is seen in `/readyz`
//! (degraded), logs and metrics, covered by probes of queues at zero tasks, and every listener
//! receives once when the bus is back.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::tasks::Tasks;
use crate::bus::events::{
    DrainRequested, InstanceLeft, InstancePulse, JobPulse, PulseKind, WorkPassed,
};
use crate::bus::{
    now_ms, Address, Announcer, BusHandle, Filter, Health, Presence, PublishMode, QueueBusSettings,
    Reach, WorkNotice,
};
use crate::config::QueueSettings;
use crate::listener::{ListenerHooks, QueueListener};
use crate::observability::Readiness;
use crate::store::Queue;
use crate::trigger::{Hub, TriggerSource};

/// Bus counters of this worker, for metrics.
#[derive(Debug, Default)]
pub struct BusCounters {
    /// Work notices received (each woke a listener).
    pub notices_received: AtomicU64,
    /// Work notices passed on by listeners that held more than they could take.
    pub passed_on: AtomicU64,
    /// Depth probes made by listeners at zero tasks while the bus was down.
    pub outage_probes: AtomicU64,
    /// Times every listener was woken because the bus came back.
    pub reconnect_wakes: AtomicU64,
}

/// One queue's link to the bus.
pub(crate) struct QueueLink {
    queue: String,
    settings: QueueBusSettings,
    bus: BusHandle,
    announcer: Announcer,
    /// The bus reaches other instances.
    shared: bool,
    /// The last "drained" was told to the bus and no work was found since.
    drained_told: AtomicBool,
    /// Hops and sender of the work notice that last woke this queue, until a pass-on uses it.
    woke_by: Mutex<Option<(u32, Option<String>)>>,
    /// Live instances at the last pulse (at least 1).
    live: Arc<AtomicU64>,
    /// The live instances as the last pulse listed them (pass-ons pick one of them).
    peers: Arc<Mutex<Vec<Presence>>>,
    counters: Arc<BusCounters>,
    /// Runs the bus calls the hooks start, supervised.
    tasks: Tasks,
}

impl ListenerHooks for QueueLink {
    fn drained(&self) {
        // Only the `first` and `depth` modes read it; one call per idle spell.
        if !self.shared
            || self.settings.publish == PublishMode::Every
            || self.drained_told.swap(true, Ordering::Relaxed)
        {
            return;
        }
        let (bus, queue) = (self.bus.transport(), self.queue.clone());
        self.tasks
            .call("bus drained mark", &self.queue, async move {
                if let Err(e) = bus.drained(&queue).await {
                    debug!(queue, error = %e, "cannot record the queue as drained");
                }
            });
    }

    fn found(&self) {
        self.drained_told.store(false, Ordering::Relaxed);
    }

    fn overflow(&self) {
        if !self.shared || self.settings.reach != Reach::One {
            return;
        }
        // Each notice is passed on at most once, and never more often than there are other
        // instances: a burst spreads over the replicas, a trickle wakes one.
        let Some((hops, woken_by)) = self.woke_by.lock().ok().and_then(|mut w| w.take()) else {
            return;
        };
        let live = self.live.load(Ordering::Relaxed).max(2);
        if u64::from(hops) + 1 >= live {
            return;
        }
        self.counters.passed_on.fetch_add(1, Ordering::Relaxed);
        // Sent to one chosen replica (the least busy by the last pulses, never this one nor the
        // one that passed it here): a notice put back on the work stream could be read back by
        // this replica and wait for a take-over sweep, leaving the burst here.
        let me = self.bus.member().instance.to_string();
        let target = self.peers.lock().ok().and_then(|peers| {
            crate::bus::pass_on_target(&peers, &me, &self.queue, woken_by.as_deref())
        });
        let (announcer, bus, queue) =
            (self.announcer.clone(), self.bus.clone(), self.queue.clone());
        debug!(queue = %self.queue, hops = hops + 1, to = ?target, "more work than this replica can take; passing the notice on");
        self.tasks.call("bus pass-on", &self.queue, async move {
            let passed = WorkPassed {
                queue,
                hops: hops + 1,
            };
            match target {
                Some(to) => {
                    if let Err(e) = bus.publish(&passed, Address::Instance(to)).await {
                        debug!(queue = %passed.queue, error = %e, "work notice not passed on");
                    }
                }
                // No other replica known yet: the work stream, read by whichever comes first.
                None => {
                    announcer.announce(0, hops + 1).await;
                }
            }
        });
    }

    fn job_pulse(&self, message_id: &str, kind: PulseKind, count: u64, elapsed_ms: u64) {
        let pulse = JobPulse {
            queue: self.queue.clone(),
            message_id: message_id.to_string(),
            kind,
            count,
            elapsed_ms,
        };
        let bus = self.bus.clone();
        self.tasks.call("bus job pulse", &self.queue, async move {
            if let Err(e) = bus.publish_at_most_once(&pulse, Address::All).await {
                debug!(error = %e, "job pulse not published");
            }
        });
    }
}

/// The worker's bus wiring, built during start.
pub(crate) struct Wiring {
    bus: BusHandle,
    hub: Hub,
    shared: bool,
    links: BTreeMap<String, Arc<QueueLink>>,
    min_tasks: BTreeMap<String, u32>,
    pulse_interval: Duration,
    live: Arc<AtomicU64>,
    peers: Arc<Mutex<Vec<Presence>>>,
    counters: Arc<BusCounters>,
    started_at_ms: u64,
    tasks: Tasks,
    /// Fired by a drain command on the bus (`ebbflow drain`): the worker drains as on SIGTERM.
    drain: CancellationToken,
}

impl Wiring {
    pub(crate) fn new(bus: BusHandle, hub: Hub, settings: &crate::Settings, tasks: Tasks) -> Self {
        Self {
            tasks,
            shared: settings.bus.is_shared(),
            bus,
            hub,
            links: BTreeMap::new(),
            min_tasks: BTreeMap::new(),
            pulse_interval: settings.bus.pulse_interval.get(),
            live: Arc::new(AtomicU64::new(1)),
            peers: Arc::default(),
            counters: Arc::default(),
            started_at_ms: now_ms(),
            drain: CancellationToken::new(),
        }
    }

    /// Fired when a drain command (`ebbflow.drain`) reaches this instance.
    pub(crate) fn drain_requested(&self) -> CancellationToken {
        self.drain.clone()
    }

    /// The link of queue `name`: its listener's hooks, and its publishers' announcer.
    pub(crate) fn link(&mut self, name: &str, settings: &QueueSettings) -> Arc<QueueLink> {
        let link = Arc::new(QueueLink {
            queue: name.to_string(),
            settings: settings.bus,
            announcer: Announcer::new(self.bus.transport(), name, settings.bus),
            bus: self.bus.clone(),
            shared: self.shared,
            drained_told: AtomicBool::new(false),
            woke_by: Mutex::new(None),
            live: self.live.clone(),
            peers: self.peers.clone(),
            counters: self.counters.clone(),
            tasks: self.tasks.clone(),
        });
        self.links.insert(name.to_string(), link.clone());
        self.min_tasks
            .insert(name.to_string(), settings.scaling.min_tasks.get());
        link
    }

    /// Announces sends of a publisher of `name` on a shared bus (none on the embedded bus:
    /// the local trigger is all there is).
    pub(crate) fn announcer(&self, name: &str) -> Option<Announcer> {
        self.shared
            .then(|| self.links.get(name).map(|l| l.announcer.clone()))
            .flatten()
    }

    pub(crate) fn counters(&self) -> Arc<BusCounters> {
        self.counters.clone()
    }

    /// The bus's metrics collector, read at scrape time.
    pub(crate) fn metrics(&self) -> Box<dyn prometheus_client::collector::Collector> {
        let (bus, counters) = (self.bus.transport(), self.counters.clone());
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Box::new(crate::bus::metrics::BusMetrics(Arc::new(move || {
            crate::bus::BusFigures {
                up: *bus.health().borrow() == Health::Up,
                transport: bus.counters(),
                notices_received: read(&counters.notices_received),
                passed_on: read(&counters.passed_on),
                outage_probes: read(&counters.outage_probes),
            }
        })))
    }

    /// Starts receiving the queues' work notices (each wakes the queue's listener, then is
    /// acknowledged). Fails when the bus refuses (start-up stops).
    pub(crate) async fn listen(&self) -> Result<(), crate::bus::BusError> {
        if !self.shared {
            return Ok(());
        }
        let transport = self.bus.transport();
        let (hub, links) = (self.hub.clone(), self.links.clone());
        let counters = self.counters.clone();
        let ack_with = transport.clone();
        let tasks = self.tasks.clone();
        let sink: Arc<dyn Fn(WorkNotice, Option<crate::bus::Receipt>) + Send + Sync> =
            Arc::new(move |notice, receipt| {
                if let Some(link) = links.get(&notice.queue) {
                    if let Ok(mut w) = link.woke_by.lock() {
                        *w = Some((notice.hops, notice.from.clone()));
                    }
                    counters.notices_received.fetch_add(1, Ordering::Relaxed);
                    hub.notify_from(&notice.queue, TriggerSource::Bus);
                }
                if let Some(r) = receipt {
                    let bus = ack_with.clone();
                    tasks.call("bus notice ack", &notice.queue, async move {
                        let _ = bus.ack(&r).await;
                    });
                }
            });
        self.bus.set_work_sink(sink.clone());
        // Notices passed on to this replica by another one that had more than it could take.
        // Detached: it runs until the bus closes.
        drop(
            self.bus
                .observe::<WorkPassed, _, _>(Filter::new(), move |passed| {
                    let notice = WorkNotice {
                        queue: passed.body.queue,
                        from: Some(passed.from),
                        messages: None,
                        hops: passed.body.hops,
                    };
                    sink(notice, None);
                    async { Ok(()) }
                }),
        );
        // Role-wide commands: a drain stops this instance as SIGTERM would (exit 0).
        let drain = self.drain.clone();
        drop(
            self.bus
                .observe::<DrainRequested, _, _>(Filter::new(), move |cmd| {
                    info!(from = %cmd.from, reason = %cmd.body.reason, "drain requested on the bus; stopping");
                    drain.cancel();
                    async { Ok(()) }
                }),
        );
        for (name, link) in &self.links {
            transport.listen_work(name, link.settings.reach).await?;
        }
        Ok(())
    }

    /// Runs presence pulses, the outage watch and its probes until `stop`.
    pub(crate) fn run(
        self,
        listeners: Vec<QueueListener>,
        queues: BTreeMap<String, Arc<dyn Queue>>,
        readiness: &Readiness,
        stop: CancellationToken,
    ) {
        let tasks = self.tasks.clone();
        let this = Arc::new(self);
        let listeners = Arc::new(listeners);
        let (w, l, s) = (this.clone(), listeners.clone(), stop.clone());
        tasks.service("bus presence".into(), move || {
            presence(w.clone(), l.clone(), s.clone())
        });
        if !this.shared {
            return;
        }
        let check = readiness.register("bus");
        let (w, s) = (this.clone(), stop.clone());
        tasks.service("bus health watch".into(), move || {
            watch_health(w.clone(), check.clone(), s.clone())
        });
        for (name, link) in &this.links {
            let Some(every) = link.settings.outage_probe_interval.map(|b| b.get()) else {
                continue;
            };
            let Some(queue) = queues.get(name).cloned() else {
                continue;
            };
            let (w, l, s) = (this.clone(), listeners.clone(), stop.clone());
            tasks.service(format!("bus outage probe {name}"), move || {
                probe_while_down(w.clone(), l.clone(), queue.clone(), every, s.clone())
            });
        }
    }
}

/// Announces this instance every `pulse_interval` (valid for three), with what it is doing.
async fn presence(
    wiring: Arc<Wiring>,
    listeners: Arc<Vec<QueueListener>>,
    stop: CancellationToken,
) {
    let bus = wiring.bus.clone();
    let transport = bus.transport();
    let member = transport.member().clone();
    let mut tick = tokio::time::interval(wiring.pulse_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let snapshots: Vec<_> = listeners.iter().map(QueueListener::snapshot).collect();
        let presence = Presence {
            instance: member.instance.to_string(),
            role: member.role.to_string(),
            queues: snapshots.iter().map(|q| q.queue.clone()).collect(),
            active_tasks: snapshots.iter().map(|q| q.active_tasks).sum(),
            in_flight: snapshots.iter().map(|q| q.in_flight).sum(),
            handled: snapshots.iter().map(|q| q.handled).sum(),
            receive_calls: snapshots.iter().map(|q| q.receive_calls).sum(),
            started_at_ms: wiring.started_at_ms,
            pulse_at_ms: now_ms(),
        };
        if let Err(e) = transport.pulse(&presence, wiring.pulse_interval * 3).await {
            debug!(error = %e, "presence pulse failed");
            continue;
        }
        if wiring.shared {
            let _ = bus
                .publish_at_most_once(&InstancePulse(presence), Address::All)
                .await;
            if let Ok(list) = transport.instances().await {
                wiring
                    .live
                    .store((list.len() as u64).max(1), Ordering::Relaxed);
                if let Ok(mut peers) = wiring.peers.lock() {
                    *peers = list;
                }
            }
        }
    }
    if wiring.shared {
        let left = InstanceLeft {
            instance: member.instance.to_string(),
            role: member.role.to_string(),
        };
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            bus.publish_at_most_once(&left, Address::All),
        )
        .await;
    }
}

/// `/readyz` shows the bus degraded while it is down; when it is back, every listener
/// receives once (work may have been announced while this replica could not hear it).
async fn watch_health(
    wiring: Arc<Wiring>,
    check: crate::observability::ReadinessCheck,
    stop: CancellationToken,
) {
    let mut health = wiring.bus.transport().health();
    check.ready();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = health.changed() => if changed.is_err() { return },
        }
        let now = *health.borrow_and_update();
        match now {
            Health::Down => {
                check.degraded("bus unreachable: reconnecting; work notices may be missed, queues at zero tasks are probed");
            }
            Health::Up => {
                check.ready();
                wiring
                    .counters
                    .reconnect_wakes
                    .fetch_add(1, Ordering::Relaxed);
                info!(
                    queues = wiring.links.len(),
                    "bus back: every listener receives once"
                );
                for name in wiring.links.keys() {
                    wiring.hub.notify_from(name, TriggerSource::Bus);
                }
            }
        }
    }
}

/// While the bus is down, a listener at zero tasks would hear of no work: probe its queue's
/// depth every `every` and wake it when there is some.
async fn probe_while_down(
    wiring: Arc<Wiring>,
    listeners: Arc<Vec<QueueListener>>,
    queue: Arc<dyn Queue>,
    every: Duration,
    stop: CancellationToken,
) {
    let name = queue.name().to_string();
    let mut health = wiring.bus.transport().health();
    loop {
        // Wait for an outage.
        while *health.borrow_and_update() == Health::Up {
            tokio::select! {
                _ = stop.cancelled() => return,
                changed = health.changed() => if changed.is_err() { return },
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        if *health.borrow() == Health::Up {
            continue;
        }
        let idle = listeners
            .iter()
            .find(|l| l.queue() == name)
            .is_some_and(|l| l.snapshot().active_tasks == 0);
        if !idle {
            continue;
        }
        wiring
            .counters
            .outage_probes
            .fetch_add(1, Ordering::Relaxed);
        match queue.approximate_depth().await {
            Ok(depth) if depth > 0 => {
                info!(queue = %name, depth, "bus down: the probe found work; waking the listener");
                wiring.hub.notify_from(&name, TriggerSource::Bus);
            }
            Ok(_) => {}
            Err(e) => warn!(queue = %name, error = %e, "outage probe failed"),
        }
    }
}
