//! Tests that need the Azurite that `scripts/test` starts (`EBBFLOW_AZURITE_URL`); most run
//! each check on the embedded store too (`on_both_backends!`), and some put a fault proxy in
//! between.
//!
//! The integration tests are grouped into one binary per kind of need (embedded, azurite, redis,
//! process), so the suite links a handful of binaries; each module below is one topic.

// A binary has no public surface: its modules' `pub` items are for each other.
#![allow(unreachable_pub)]

#[macro_use]
#[path = "../common/mod.rs"]
mod common;

mod azure_auth;
mod claim_check;
mod conformance;
mod credentials;
mod extremes;
mod flow;
mod flow_lifecycle;
mod lifetimes;
mod outage;
mod poison;
mod reliability;
mod scaling;
mod secrets;
mod sharding;
mod trigger_http;
mod unknown_outcomes;
mod worker;
