//! The bus's metrics, read at scrape time: `ebbflow_bus_up`, and counters of outages,
//! reconnects, entries taken over, work notices received and passed on, and outage probes.

use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use super::BusFigures;

/// Reads the figures at each scrape.
pub(crate) struct BusMetrics(pub(crate) Arc<dyn Fn() -> BusFigures + Send + Sync>);

impl fmt::Debug for BusMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BusMetrics").finish_non_exhaustive()
    }
}

type Read = fn(&BusFigures) -> u64;

const COUNTERS: [(&str, &str, Read); 10] = [
    (
        "ebbflow_bus_outages",
        "Times the bus connection was lost.",
        |b| b.transport.outages,
    ),
    (
        "ebbflow_bus_reconnects",
        "Times the bus connection came back (every listener then receives once).",
        |b| b.transport.reconnects,
    ),
    (
        "ebbflow_bus_reclaimed",
        "Competing-consumer entries taken over after the claim timeout.",
        |b| b.transport.reclaimed,
    ),
    (
        "ebbflow_bus_refused",
        "Envelopes and presence records refused: unsigned or wrongly signed (bus.signing_key set).",
        |b| b.transport.refused,
    ),
    (
        "ebbflow_bus_poisoned",
        "Bus stream entries moved to the bus poison stream (too large, undecodable, over bus.max_deliveries).",
        |b| b.transport.poisoned,
    ),
    (
        "ebbflow_bus_expired",
        "Events dropped unhandled because their time to live had passed.",
        |b| b.transport.expired,
    ),
    (
        "ebbflow_bus_duplicates",
        "Fan-out events received again (same event id) and dropped.",
        |b| b.transport.duplicates,
    ),
    (
        "ebbflow_bus_notices_received",
        "Work notices received from the bus (each woke a listener).",
        |b| b.notices_received,
    ),
    (
        "ebbflow_bus_notices_passed_on",
        "Work notices passed on by listeners that held more than they could take.",
        |b| b.passed_on,
    ),
    (
        "ebbflow_bus_outage_probes",
        "Depth probes of idle queues while the bus was down (each billable).",
        |b| b.outage_probes,
    ),
];

impl Collector for BusMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let figures = (self.0)();
        let up = encoder.encode_descriptor(
            "ebbflow_bus_up",
            "1 while the bus is connected, 0 while it is down (degraded: queues are probed).",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(i64::from(figures.up)).encode(up)?;
        for (name, help, read) in COUNTERS {
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(read(&figures)).encode(metric)?;
        }
        Ok(())
    }
}
