//! ebbflow: auto-scaling queue listener workers for Azure Storage Queues.
//!
//! A message's way through the crate:
//!
//! 1. [`config`] loads typed settings (files, then environment) and validates every value.
//! 2. [`store`] opens the backend: Azure / Azurite through `azure_storage_queue`, or the
//!    embedded in-process store with the same semantics. Wrappers are layers on one
//!    forwarding base ([`store::LayeredStore`]) that override only what they change: its retrying
//!    layer retries service faults with jittered back-off and decides, per operation, what a
//!    retry after an unanswered try means (a delete done, an update in doubt, a send maybe
//!    stored twice). The service's limits (batch 32, visibility 7 days, 64 KiB, time to live)
//!    and rules (queue names, message text, secrets kept out of logs) are in the `service`
//!    leaf every room takes them from; [`checks`] names the key of a setting out of range.
//! 3. [`worker`] starts one [`listener`] per configured queue; its dequeue tasks receive
//!    batches of up to 32 messages and sleep on the idle back-off curve
//!    ([`config::IdleBackoffSettings`]) while the queue is empty. The listener's supervisor
//!    asks the scaling policy ([`config::ScalingSettings`]) how many tasks to run: more when
//!    work shows up, fewer as idle tasks reach the back-off maximum and retire. A push trigger
//!    ([`config::TriggerSettings`]: an in-process publish, or an HTTP / Event Grid /
//!    CloudEvents delivery) wakes sleeping tasks at once and starts one when the queue is at
//!    zero.
//!    A task takes free concurrency slots before it receives and asks for no more messages
//!    than it holds, so a received message never waits; it receives again as soon as slots
//!    free up, never waiting for the slowest message of its last batch.
//! 4. Each message runs in its own task: its text is decoded by [`codec`] (base64 or none),
//!    then into the handler's payload type, and run by the user's [`handler::Handler`] with a
//!    [`handler::Context`], while its lease (counted from the receive) renews beside it.
//! 5. Success deletes it; a retryable error makes it visible again after a delay; a release
//!    ("not now", or an interruption by shutdown) makes it visible again without a failure; a
//!    message over its dequeue limit, undecodable, or rejected is copied to `<queue>-poison`
//!    and only then deleted.
//! 6. On SIGTERM the worker stops receiving, signals handlers, waits for them until the drain
//!    deadline, releases what was interrupted, and reports how it ended, within the deadline
//!    plus a short grace even if the store hangs. [`Worker::run`] does all of it for `main`.
//!
//! Throughout, every listener keeps counters ([`listener::QueueSnapshot`]) and histograms,
//! and a metering store layer times every call; [`observability`] serves them on the ops
//! endpoint (`GET /metrics`), beside `/healthz` and `/readyz` (named readiness checks that turn
//! unready the moment a drain begins), and sets up the logs (text or JSON lines).
//!
//! Past one machine, the `ebbflow` command line (the `ebbflow-cli` crate in `workers/cli`)
//! writes the container engine's side (KEDA or Container Apps manifests) from the same
//! settings, so replicas scale where one replica's tasks stop; it also holds the simulator and
//! the queue and poison-queue commands. This crate carries none of it (no clap, YAML or
//! manifest code), and ignores the config's `[deploy]` section, which only the CLI reads.

mod backoff;
pub mod bus;
pub mod checks;
pub mod codec;
pub mod config;
mod endpoint;
pub mod handler;
#[cfg(test)]
mod layering;
pub mod listener;
pub mod observability;
#[cfg(test)]
mod reference;
mod scaling;
mod secret;
mod service;
pub mod store;
pub mod testing;
mod throttle;
mod trigger;
pub mod worker;

pub use config::Settings;
pub use handler::{Context, Handler, HandlerError, Json, Publisher, Signal};
pub use observability::setup;
pub use worker::{shutdown_signal, RunReport, Worker};

/// The README's Rust examples, compiled by `cargo test --doc` so they cannot drift.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// The architecture notes (`ARCHITECTURE.md`, also a chapter of the book).
#[cfg(doctest)]
#[doc = include_str!("../ARCHITECTURE.md")]
pub struct ArchitectureDoctests;

/// The book's chapters (`docs/src/`), one doctest item each, so every Rust example in the book
/// is compiled by `cargo test --doc`. `scripts/doclinks` checks that every chapter is listed here.
#[cfg(doctest)]
pub mod book {
    #[doc = include_str!("../docs/src/introduction.md")]
    pub struct IntroductionDoctests;
    #[doc = include_str!("../docs/src/getting-started.md")]
    pub struct GettingStartedDoctests;
    #[doc = include_str!("../docs/src/handlers.md")]
    pub struct HandlersDoctests;
    #[doc = include_str!("../docs/src/middleware.md")]
    pub struct MiddlewareDoctests;
    #[doc = include_str!("../docs/src/testing-handlers.md")]
    pub struct TestingHandlersDoctests;
    #[doc = include_str!("../docs/src/outputs.md")]
    pub struct OutputsDoctests;
    #[doc = include_str!("../docs/src/configuration.md")]
    pub struct ConfigurationDoctests;
    #[doc = include_str!("../docs/src/message-life.md")]
    pub struct MessageLifeDoctests;
    #[doc = include_str!("../docs/src/guarantees.md")]
    pub struct GuaranteesDoctests;
    #[doc = include_str!("../docs/src/claim-check.md")]
    pub struct ClaimCheckDoctests;
    #[doc = include_str!("../docs/src/scaling.md")]
    pub struct ScalingDoctests;
    #[doc = include_str!("../docs/src/bus.md")]
    pub struct BusDoctests;
    #[doc = include_str!("../docs/src/heartbeats.md")]
    pub struct HeartbeatsDoctests;
    #[doc = include_str!("../docs/src/operating.md")]
    pub struct OperatingDoctests;
    #[doc = include_str!("../docs/src/tracing.md")]
    pub struct TracingDoctests;
    #[doc = include_str!("../docs/src/dashboard.md")]
    pub struct DashboardDoctests;
    #[doc = include_str!("../docs/src/cli.md")]
    pub struct CliDoctests;
    #[doc = include_str!("../docs/src/deploying.md")]
    pub struct DeployingDoctests;
    #[doc = include_str!("../docs/src/security.md")]
    pub struct SecurityDoctests;
    #[doc = include_str!("../docs/src/troubleshooting.md")]
    pub struct TroubleshootingDoctests;
    #[doc = include_str!("../docs/src/performance.md")]
    pub struct PerformanceDoctests;
    #[doc = include_str!("../docs/src/testing.md")]
    pub struct TestingDoctests;
}
