//! How a worker's run ended: the drain report, and the run report with its exit code.

use std::process::{ExitCode, Termination};

use crate::listener::QueueSnapshot;
use crate::store::StoreError;

use super::WorkerError;

/// How a drain ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainReport {
    /// Every handler finished before the deadline.
    pub clean: bool,
    /// The queues' counters at the end.
    pub queues: Vec<QueueSnapshot>,
    /// Why the worker stopped on its own, if it did: an error no retry can fix (credentials
    /// refused, queue deleted).
    pub fatal: Option<StoreError>,
    /// Messages still held when the report was made: their release did not finish within
    /// [`super::RELEASE_GRACE`] after the drain deadline (the store hung). They become visible again
    /// when their visibility timeout ends.
    pub unreleased: u64,
}

impl DrainReport {
    /// The process exit code: 3 when a fatal error stopped the worker, else 0 on a clean
    /// drain and 1 when handlers were aborted.
    pub fn exit_code(&self) -> i32 {
        match (&self.fatal, self.clean) {
            (Some(_), _) => 3,
            (None, true) => 0,
            (None, false) => 1,
        }
    }
}

/// What to do about a fatal store error, for the log.
pub(super) fn explain(e: &StoreError) -> &'static str {
    match e {
        StoreError::Unauthorized { .. } => {
            "the service refused our credentials, several times in a row (expired SAS, rotated key, missing role assignment); fix storage settings and restart"
        }
        StoreError::QueueNotFound { .. } => {
            "the queue was deleted while the worker ran; recreate it and restart"
        }
        StoreError::AccountNotFound { .. } => {
            "the storage account or endpoint no longer answers for this queue; check the storage settings and restart"
        }
        StoreError::Unconsumable { .. } => {
            "its dequeue tasks kept failing right after each restart (see the errors before this one); fix the cause and restart"
        }
        _ => "no retry can fix this error",
    }
}

/// How [`super::Worker::run`] ended: it never started (exit 2), or it ran and drained.
/// A worker's `main` can return it (it is a [`Termination`]) or its [`RunReport::exit_code`].
#[derive(Debug)]
pub enum RunReport {
    /// The worker could not start (nothing ran); the error was logged.
    NotStarted(WorkerError),
    /// The worker ran, then stopped on a signal or a fatal error, and drained.
    Stopped(DrainReport),
}

impl RunReport {
    /// The process exit code: 2 when the worker could not start, else
    /// [`DrainReport::exit_code`] (0 clean drain, 1 handlers aborted at the deadline, 3 a
    /// fatal error stopped it).
    pub fn code(&self) -> u8 {
        match self {
            Self::NotStarted(_) => 2,
            Self::Stopped(report) => u8::try_from(report.exit_code()).unwrap_or(1),
        }
    }

    /// [`RunReport::code`] as an [`ExitCode`], for `main`'s return.
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(self.code())
    }

    /// The drain report, when the worker ran.
    pub fn drain(&self) -> Option<&DrainReport> {
        match self {
            Self::NotStarted(_) => None,
            Self::Stopped(report) => Some(report),
        }
    }
}

impl Termination for RunReport {
    fn report(self) -> ExitCode {
        self.exit_code()
    }
}
