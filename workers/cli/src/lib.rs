//! The operator's side of ebbflow, used by the `ebbflow` command line (`src/bin/ebbflow/`).
//!
//! - [`deploy`]: KEDA and Container Apps manifests written from the same settings a worker
//!   reads, plus the `[deploy]` section ([`deploy::DeploySettings`]) that only this crate reads.
//! - [`simulate`]: the runtime's listener and scaling policy run in virtual time against a load
//!   profile (tokio's paused clock, which is why only this crate carries tokio's `test-util`).
//!
//! Everything here uses the runtime crate `ebbflow` through its public API; a crate that
//! depends on `ebbflow` compiles none of it (no clap, YAML or manifest code).

pub mod deploy;
pub mod simulate;
