//! The `ebbflow` command line as a user runs it: every command against the test Azurite (the
//! `EBBFLOW_AZURITE_URL` that scripts/test starts), exit codes, help and errors.

mod claim;
#[path = "../../../../tests/common/mod.rs"]
mod common;
mod config_check;
mod deploy;
mod edges;
mod first_hour;
mod queues;
mod top;
mod trigger;
mod usage;

use std::path::{Path, PathBuf};
use std::process::Command;

/// `path` under the repository's top (the root package's `config/`, `deploy/`).
pub(crate) fn root(path: &str) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).join(path)
}

/// What a run of `ebbflow` printed and how it exited.
pub(crate) struct Run {
    pub(crate) code: Option<i32>,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Run {
    pub(crate) fn both(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Runs `ebbflow args` with a clean environment plus `env`.
pub(crate) fn ebbflow(args: &[&str], env: &[(&str, &str)]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_ebbflow"))
        .env_clear()
        .envs(env.iter().copied())
        .args(args)
        .output()
        .unwrap();
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A config folder for the test Azurite with the given queue sections (and anything else).
pub(crate) fn config(body: &str) -> common::TempDir {
    let dir = common::TempDir::new("cli");
    std::fs::write(
        dir.path().join("default.toml"),
        format!(
            "[storage]\nconnection_string = \"{}\"\n\n{body}",
            common::azurite_connection_string()
        ),
    )
    .unwrap();
    dir
}

/// Runs `ebbflow args --config dir`.
pub(crate) fn with(dir: &common::TempDir, args: &[&str]) -> Run {
    let mut all = args.to_vec();
    all.extend(["--config", dir.path().to_str().unwrap()]);
    ebbflow(&all, &[])
}

/// The ids `enqueue` printed (indented lines after "sent").
pub(crate) fn sent_ids(run: &Run) -> Vec<String> {
    run.stdout
        .lines()
        .filter(|l| l.starts_with("  "))
        .map(|l| l.trim().to_string())
        .collect()
}

pub(crate) fn json(run: &Run) -> serde_json::Value {
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", run.both()))
}
