//! The worker's metrics on `prometheus-client`, in the OpenMetrics text format.
//!
//! Counters and gauges are read from the listeners' snapshots at scrape time (one
//! [`Collector`] walks every queue), so the hot path only bumps the atomics it always had;
//! histograms are observed where their events happen and read the same way. Names follow
//! Prometheus: prefix `ebbflow_`, base units, `_total` on counters, `_seconds` on times, the
//! label `queue` on everything per queue. A depth never probed is not exported (not 0).

use std::fmt;
use std::sync::{Arc, OnceLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::listener::{Histograms, QueueListener, QueueSnapshot};
use crate::store::metered::Metering;
use crate::store::{QueueStore, UnknownOutcomes};
use crate::trigger::TriggerSource;

/// A running worker's metrics, rendered on each scrape.
pub struct Metrics {
    registry: Registry,
    /// The bus's metrics, once the bus is open.
    bus: Later,
    /// Refused connections and requests of the trigger and ops endpoints.
    refusals: crate::endpoint::Refusals,
    /// What the dashboard reads, once the worker set it.
    dashboard: OnceLock<super::dashboard::Dashboard>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Metrics of the listeners `listeners` will hold once they run (none before), of
    /// `store`'s unknown outcomes, and of the store calls `metering` timed.
    pub(crate) fn new(
        listeners: Arc<OnceLock<Vec<QueueListener>>>,
        store: Arc<dyn QueueStore>,
        metering: Metering,
    ) -> Self {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Queues { listeners, store }));
        let bus = Later::default();
        registry.register_collector(Box::new(bus.clone()));
        // `register` adds the help's final period itself.
        registry.register(
            "ebbflow_storage_call_duration_seconds",
            "Store calls by queue and op (receive, delete, update, send, peek, properties, create), as the listener sees them: retries included",
            metering.call_seconds().clone(),
        );
        // The same series under the messaging conventions' name (labels `queue` and `op`).
        registry.register(
            "messaging_client_operation_duration_seconds",
            "messaging.client.operation.duration: store calls by queue and op (as ebbflow_storage_call_duration_seconds)",
            metering.call_seconds().clone(),
        );
        let refusals = crate::endpoint::Refusals::default();
        registry.register(
            "ebbflow_http_refused",
            "Connections and requests the trigger and ops endpoints refused, by endpoint (trigger, ops) and reason (max_connections, max_connections_per_peer, header_timeout, unauthorized, busy, timeout)",
            refusals.family(),
        );
        Self {
            registry,
            bus,
            refusals,
            dashboard: OnceLock::new(),
        }
    }

    /// The refusal counters the endpoints share with these metrics.
    pub fn refusals(&self) -> &crate::endpoint::Refusals {
        &self.refusals
    }

    /// Serves the dashboard's data from `dashboard`; later calls are ignored.
    pub(crate) fn set_dashboard(&self, dashboard: super::dashboard::Dashboard) {
        let _ = self.dashboard.set(dashboard);
    }

    /// The dashboard's data source, when the worker set one.
    pub(crate) fn dashboard(&self) -> Option<&super::dashboard::Dashboard> {
        self.dashboard.get()
    }

    /// Adds the bus's metrics (`ebbflow_bus_*`), once it is open; later calls are ignored.
    pub(crate) fn set_bus(&self, collector: Box<dyn Collector>) {
        let _ = self.bus.0.set(collector);
    }

    /// The OpenMetrics text exposition (ends with `# EOF`); its content type is
    /// [`CONTENT_TYPE`](super::CONTENT_TYPE).
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; an encoder error would be a bug in a collector,
        // and a scrape is better served a partial text than a panic.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "metrics encoding failed");
        }
        out
    }
}

/// A collector that another room supplies once it runs (none before: nothing is exported).
#[derive(Debug, Default, Clone)]
struct Later(Arc<OnceLock<Box<dyn Collector>>>);

impl Collector for Later {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        match self.0.get() {
            Some(c) => c.encode(encoder),
            None => Ok(()),
        }
    }
}

/// A counter or gauge read from a snapshot.
type Read = fn(&QueueSnapshot) -> u64;

/// Gauges: name, help.
const GAUGES: [(&str, &str, Read); 4] = [
    ("active_tasks", "Dequeue tasks running now.", |q| {
        q.active_tasks
    }),
    ("peak_tasks", "Most dequeue tasks that ran at once.", |q| {
        q.peak_tasks
    }),
    ("in_flight", "Handlers running now.", |q| q.in_flight),
    (
        "held",
        "Messages received and not yet settled (handlers running, or settles in progress).",
        |q| q.held,
    ),
];

/// Counters: name without `_total`, help.
const COUNTERS: [(&str, &str, Read); 16] = [
    (
        "receive_calls",
        "Receive calls made (each one billable).",
        |q| q.receive_calls,
    ),
    (
        "empty_receives",
        "Receive calls that returned nothing.",
        |q| q.empty_receives,
    ),
    (
        "probe_calls",
        "Depth probes made (properties and peek calls, each billable).",
        |q| q.probe_calls,
    ),
    ("received", "Messages received.", |q| q.received),
    ("handled", "Messages handled successfully and deleted.", |q| {
        q.handled
    }),
    ("retried", "Failed tries left for a retry.", |q| q.retried),
    (
        "poisoned",
        "Messages copied to the poison queue and deleted.",
        |q| q.poisoned,
    ),
    (
        "released",
        "Messages made visible again without a failure (shutdown, drain deadline, the handler's release).",
        |q| q.released,
    ),
    (
        "lost_ownership",
        "Deletes or updates refused because the message was received again meanwhile.",
        |q| q.lost_ownership,
    ),
    ("store_errors", "Failed store calls (after retries).", |q| {
        q.store_errors
    }),
    ("panics", "Handlers that panicked (each retried).", |q| {
        q.panics
    }),
    (
        "timeouts",
        "Handlers stopped by handler_timeout (each retried).",
        |q| q.timeouts,
    ),
    (
        "renewals",
        "Visibility renewals of messages whose handlers ran long.",
        |q| q.renewals,
    ),
    (
        "heartbeat_pulses",
        "Heartbeat pulses of long jobs (timed and count).",
        |q| q.pulses,
    ),
    (
        "task_restarts",
        "Dequeue tasks that ended unexpectedly and were replaced.",
        |q| q.task_restarts,
    ),
    (
        "batches",
        "Batch handler calls (batch queues only).",
        |q| q.batches,
    ),
];

/// A listener's histogram.
type ReadHistogram = fn(&Histograms) -> &prometheus_client::metrics::histogram::Histogram;

/// Histograms: full name, help.
const HISTOGRAMS: [(&str, &str, ReadHistogram); 4] = [
    (
        "ebbflow_handler_duration_seconds",
        "How long handlers ran, from start to result.",
        |h| &h.handler_seconds,
    ),
    (
        "ebbflow_pickup_latency_seconds",
        "Receive time minus insertion time, first deliveries only (the service stamps insertion to the second).",
        |h| &h.pickup_seconds,
    ),
    (
        "ebbflow_messages_per_receive",
        "Messages per receive call, empty receives included.",
        |h| &h.messages_per_receive,
    ),
    (
        "ebbflow_batch_size",
        "Messages per batch handler call (batch queues only).",
        |h| &h.batch_size,
    ),
];

/// Unknown outcomes (see "Unknown outcomes" in docs/src/message-life.md): name without `_total`, help.
type ReadOutcome = fn(&UnknownOutcomes) -> u64;
const OUTCOMES: [(&str, &str, ReadOutcome); 4] = [
    (
        "unanswered_receives",
        "Receive tries that went unanswered (their messages come back after the visibility timeout).",
        |o| o.receives,
    ),
    (
        "unanswered_sends",
        "Send tries that went unanswered (the message may be stored twice).",
        |o| o.sends,
    ),
    (
        "deletes_confirmed",
        "Deletes that went unanswered, then found the message gone: done.",
        |o| o.deletes_confirmed,
    ),
    (
        "updates_in_doubt",
        "Updates that went unanswered, then found the pop receipt stale: in doubt.",
        |o| o.updates_in_doubt,
    ),
];

/// The conventions' labels of one queue's series.
fn conventions<'a>(queue: &'a str, operation: &'a str) -> [(&'static str, &'a str); 3] {
    [
        ("messaging_system", crate::codec::spans::SYSTEM),
        ("messaging_destination_name", queue),
        ("messaging_operation_name", operation),
    ]
}

/// Reads every queue at scrape time.
struct Queues {
    listeners: Arc<OnceLock<Vec<QueueListener>>>,
    store: Arc<dyn QueueStore>,
}

impl fmt::Debug for Queues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queues").finish_non_exhaustive()
    }
}

impl Collector for Queues {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let listeners: &[QueueListener] = self.listeners.get().map_or(&[], Vec::as_slice);
        let snapshots: Vec<QueueSnapshot> = listeners.iter().map(QueueListener::snapshot).collect();
        for (name, help, read) in GAUGES {
            let full = format!("ebbflow_{name}");
            let mut metric = encoder.encode_descriptor(&full, help, None, MetricType::Gauge)?;
            for q in &snapshots {
                ConstGauge::new(read(q))
                    .encode(metric.encode_family(&[("queue", q.queue.as_str())])?)?;
            }
        }
        let mut depth = encoder.encode_descriptor(
            "ebbflow_depth",
            "The last probed approximate depth (absent until a probe ran).",
            None,
            MetricType::Gauge,
        )?;
        for q in &snapshots {
            if let Some(d) = q.depth {
                ConstGauge::new(d).encode(depth.encode_family(&[("queue", q.queue.as_str())])?)?;
            }
        }
        for (name, help, read) in COUNTERS {
            let full = format!("ebbflow_{name}");
            let mut metric = encoder.encode_descriptor(&full, help, None, MetricType::Counter)?;
            for q in &snapshots {
                ConstCounter::new(read(q))
                    .encode(metric.encode_family(&[("queue", q.queue.as_str())])?)?;
            }
        }
        let mut triggers = encoder.encode_descriptor(
            "ebbflow_triggers",
            "Push triggers received, by source: publish (in process), http, bus.",
            None,
            MetricType::Counter,
        )?;
        for q in &snapshots {
            for source in TriggerSource::ALL {
                let labels = [("queue", q.queue.as_str()), ("source", source.as_str())];
                ConstCounter::new(q.triggers_by_source[source.index()])
                    .encode(triggers.encode_family(&labels)?)?;
            }
        }
        let histograms: Vec<(&str, Histograms)> = listeners
            .iter()
            .map(|l| (l.queue(), l.histograms()))
            .collect();
        for (name, help, read) in HISTOGRAMS {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
            for (queue, h) in &histograms {
                read(h).encode(metric.encode_family(&[("queue", *queue)])?)?;
            }
        }
        // The OpenTelemetry messaging conventions' names (and attributes as labels), beside
        // ebbflow's own, which stay for one release as aliases.
        let mut process = encoder.encode_descriptor(
            "messaging_process_duration_seconds",
            "messaging.process.duration: how long handlers ran (as ebbflow_handler_duration_seconds).",
            None,
            MetricType::Histogram,
        )?;
        for (queue, h) in &histograms {
            h.handler_seconds
                .encode(process.encode_family(&conventions(queue, "process"))?)?;
        }
        let mut consumed = encoder.encode_descriptor(
            "messaging_client_consumed_messages",
            "messaging.client.consumed.messages: messages received (as ebbflow_received_total).",
            None,
            MetricType::Counter,
        )?;
        for q in &snapshots {
            ConstCounter::new(q.received)
                .encode(consumed.encode_family(&conventions(&q.queue, "receive"))?)?;
        }
        let outcomes: Vec<(&str, UnknownOutcomes)> = snapshots
            .iter()
            .map(|q| (q.queue.as_str(), self.store.unknown_outcomes(&q.queue)))
            .collect();
        for (name, help, read) in OUTCOMES {
            let full = format!("ebbflow_{name}");
            let mut metric = encoder.encode_descriptor(&full, help, None, MetricType::Counter)?;
            for (queue, o) in &outcomes {
                ConstCounter::new(read(o)).encode(metric.encode_family(&[("queue", *queue)])?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    /// Every family has one `# HELP` and one `# TYPE` line, and its help reads as one sentence:
    /// `prometheus-client` adds the final period to what `Registry::register` is given, so a
    /// help text that brings its own showed `..` to every scraper.
    #[test]
    fn every_family_has_help_and_type_and_each_help_ends_in_one_period() {
        let metering = Metering::default();
        // The call histogram's family shows once it holds a series.
        metering
            .call_seconds()
            .get_or_create(&vec![("queue", "orders".into()), ("op", "receive".into())])
            .observe(0.01);
        let metrics = Metrics::new(
            Arc::new(OnceLock::new()),
            Arc::new(MemoryStore::new()),
            metering,
        );
        let text = metrics.render();
        assert!(text.ends_with("# EOF\n"), "{text}");
        let helps: Vec<(&str, &str)> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# HELP "))
            .map(|rest| rest.split_once(' ').expect("HELP name text"))
            .collect();
        let types: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|rest| rest.split_once(' ').expect("TYPE name kind").0)
            .collect();
        assert_eq!(helps.len(), types.len(), "{text}");
        assert!(helps.len() >= 29, "{text}");
        for (name, help) in helps {
            // ebbflow's own, or the OpenTelemetry messaging conventions' names.
            assert!(
                name.starts_with("ebbflow_") || name.starts_with("messaging_"),
                "{name}"
            );
            assert!(types.contains(&name), "{name} has no TYPE line");
            assert!(
                help.ends_with('.') && !help.ends_with(".."),
                "{name}: {help:?}"
            );
        }
    }
}
