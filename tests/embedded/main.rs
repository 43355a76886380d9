//! In-process tests that need no service: the embedded store and broker under tokio's
//! paused clock, the trigger and ops endpoints on loopback, and file checks.
//!
//! The integration tests are grouped into one binary per kind of need (embedded, azurite, redis,
//! process), so the suite links a handful of binaries; each module below is one topic.

// A binary has no public surface: its modules' `pub` items are for each other.
#![allow(unreachable_pub)]

#[macro_use]
#[path = "../common/mod.rs"]
mod common;

mod calls;
mod claim_limits;
mod dashboard;
mod depth_probe;
mod dequeue_limit;
mod dockerfile;
mod first_hour;
mod flood;
mod fuzz;
mod guarantees;
mod handler_api;
mod job_end;
mod listener_hooks;
mod message_run;
mod ops;
mod outputs;
mod pulse_shaping;
mod reload;
mod restarts;
mod test_kit;
