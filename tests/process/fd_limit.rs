//! The endpoints' connection caps against the file-descriptor limit, in a real process under
//! `ulimit`: a cap the hard limit cannot hold stops the start with exit 2, naming the key and
//! the limit (instead of running out of descriptors under a flood, when store calls fail with
//! "Too many open files"); a soft limit below what the caps need is raised to the hard one.

use std::process::{Command, Output};

/// The load-test worker under `ulimit_args` (e.g. `-n 1024`) with the trigger endpoint's
/// `max_connections` at `cap`, storage nowhere (the start fails soon after the check).
fn worker_under(ulimit_args: &str, cap: u32) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit {ulimit_args} && exec \"$0\""))
        .arg(env!("CARGO_BIN_EXE_loadtest"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env(
            "EBBFLOW_CONFIG_DIR",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config"),
        )
        .env(
            "AZURE_STORAGE_CONNECTION_STRING",
            "DefaultEndpointsProtocol=http;AccountName=acct;AccountKey=a2V5;\
             QueueEndpoint=http://127.0.0.1:1/acct",
        )
        .env("QUEUE_NAME", "fdlimit")
        .env("EBBFLOW__STORAGE__STARTUP_TIMEOUT", "1s")
        .env("EBBFLOW__TRIGGERS__HTTP__ENABLED", "true")
        .env("EBBFLOW__TRIGGERS__HTTP__BIND", "127.0.0.1:0")
        .env("EBBFLOW__TRIGGERS__HTTP__MAX_CONNECTIONS", cap.to_string())
        .env("RUST_LOG", "info")
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn a_cap_above_the_hard_fd_limit_stops_the_start_naming_the_key() {
    // `ulimit -n` sets the soft and the hard limit: nothing can raise it.
    let out = worker_under("-n 1024", 5_000);
    let text = text(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("triggers.http.max_connections = 5000")
            && text.contains("soft 1024, hard 1024"),
        "{text}"
    );
}

#[test]
fn a_soft_fd_limit_below_the_caps_is_raised_to_the_hard_one() {
    let hard = Command::new("sh")
        .args(["-c", "ulimit -Hn"])
        .output()
        .unwrap();
    let hard: u64 = match String::from_utf8_lossy(&hard.stdout).trim().parse() {
        Ok(n) if n >= 6_000 => n,
        // "unlimited", or a hard limit too low for this case: nothing to show here.
        _ => return,
    };
    let out = worker_under("-Sn 512", 5_000);
    let text = text(&out);
    assert!(
        text.contains(&format!("from 512 to {hard}")),
        "no raise logged: {text}"
    );
    assert!(!text.contains("RLIMIT_NOFILE: soft"), "{text}");
}
