//! The binaries of the workspace's other package, for tests that spawn them: the runtime's tests
//! spawn the `ebbflow` command line (package `ebbflow-cli`), and the command line's tests spawn
//! the load-test worker (package `ebbflow`). Cargo sets `CARGO_BIN_EXE_<name>` only for the
//! tested package's own binaries, so these are found beside the test binary (`cargo test
//! --workspace` and `cargo nextest run --workspace` build every binary before any test runs),
//! or else built once with `cargo build`.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The `ebbflow` command line (package `ebbflow-cli`).
pub fn ebbflow_cli() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| locate("ebbflow-cli", "ebbflow"))
        .clone()
}

/// The load-test worker (package `ebbflow`).
pub fn loadtest() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| locate("ebbflow", "loadtest")).clone()
}

/// `bin` of `package`: in the profile folder this test binary was built into (its parent is
/// `deps/`), else built now.
fn locate(package: &str, bin: &str) -> PathBuf {
    let file = format!("{bin}{}", std::env::consts::EXE_SUFFIX);
    let exe = std::env::current_exe().expect("the test binary's path");
    if let Some(beside) = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join(&file))
        .filter(|path| path.is_file())
    {
        return beside;
    }
    build(package, bin)
}

/// Builds `bin` of `package` and returns the executable cargo reports.
fn build(package: &str, bin: &str) -> PathBuf {
    let out = Command::new(env!("CARGO"))
        .args([
            "build",
            "-p",
            package,
            "--bin",
            bin,
            "--message-format=json",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap_or_else(|e| panic!("cargo build -p {package} --bin {bin}: {e}"));
    assert!(
        out.status.success(),
        "cargo build -p {package} --bin {bin} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == bin)
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .unwrap_or_else(|| panic!("cargo build -p {package} --bin {bin} reported no executable"))
}
