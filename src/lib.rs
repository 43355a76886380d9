//! ebbflow: auto-scaling queue listener workers for Azure Storage Queues.
pub mod backoff;
pub mod codec;
pub mod config;
pub mod handler;
pub mod store;
