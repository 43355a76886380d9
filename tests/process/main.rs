//! Whole processes: the worker binaries of this package, spawned through `CARGO_BIN_EXE_*`,
//! against Azurite (and Redis for the bus), killed and signalled as an operator would.
//!
//! The integration tests are grouped into one binary per kind of need (embedded, azurite, redis,
//! process), so the suite links a handful of binaries; each module below is one topic.

// A binary has no public surface: its modules' `pub` items are for each other.
#![allow(unreachable_pub)]

#[macro_use]
#[path = "../common/mod.rs"]
mod common;
#[path = "../common/redis_admin.rs"]
mod redis_admin;

mod billing;
mod bus_connect;
mod bus_drain;
mod bus_jobs;
mod bus_poison;
mod bus_reload;
mod bus_replicas;
mod dashboard_browser;
mod dashboard_cdp;
mod faults;
mod fd_limit;
mod json_logs;
mod ops_process;
mod process;
mod secrets_everywhere;
