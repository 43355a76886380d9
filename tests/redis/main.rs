//! Tests that need the redis-server that `scripts/test` starts (`EBBFLOW_REDIS_URL`): the bus
//! on a real Redis (and on the embedded broker for comparison) and workers in process on it.
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

mod bus;
mod bus_jobs;
mod bus_requests;
mod bus_signing;
mod bus_worker;
mod connect;
mod dedup;
mod delivery;
mod durable;
mod fleet;
mod pulse_hook;
