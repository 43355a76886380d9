//! The dashboard in a real browser: the demo worker on the embedded store with the ops endpoint
//! on a free loopback port, read by headless Chromium (Debian's `chromium`, which `scripts/test`
//! installs when missing). The page's script runs, polls `/dashboard.json` and draws both queues
//! with their task counts, and the browser's console shows no error.

use std::process::{Command, Stdio};
use std::time::Duration;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn chromium() -> String {
    for name in ["chromium", "chromium-browser"] {
        if Command::new(name)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            return name.to_string();
        }
    }
    panic!(
        "headless Chromium is needed for the dashboard test: `apt-get install -y chromium` \
         (scripts/test installs it when missing)"
    );
}

/// Loads `url` in headless Chromium, lets the page run `budget_ms` of (virtual) time, and
/// returns the DOM it then has and what the browser logged.
fn dump_dom(url: &str, budget_ms: u32) -> (String, String) {
    let profile = std::env::temp_dir().join(format!("ebbflow-chromium-{}", std::process::id()));
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--enable-logging=stderr",
            "--v=0",
            &format!("--user-data-dir={}", profile.display()),
            &format!("--virtual-time-budget={budget_ms}"),
            "--dump-dom",
            url,
        ])
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&profile);
    assert!(out.status.success(), "chromium failed: {out:?}");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_dashboard_draws_both_queues_in_headless_chromium_without_console_errors() {
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_demo"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env(
            "EBBFLOW_CONFIG_DIR",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config"),
        )
        .env("EBBFLOW__OBSERVABILITY__BIND", format!("127.0.0.1:{port}"))
        .env("DEMO_RATE", "50")
        .env("DEMO_HANDLER_MS", "20")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let mut up = false;
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            up = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(up, "the demo's ops endpoint never listened");

    let (dom, log) = dump_dom(&format!("{base}/dashboard"), 4000);
    let _ = child.kill();
    let _ = child.wait();

    for queue in ["orders", "emails"] {
        assert!(
            dom.contains(&format!("id=\"q-{queue}\"")),
            "no {queue} card:\n{dom}"
        );
    }
    // The cards carry the JSON's figures: "<n> tasks · <m> running", and six charts each.
    assert!(dom.contains(" tasks · "), "{dom}");
    assert_eq!(dom.matches("data-chart=\"tasks\"").count(), 2, "{dom}");
    assert!(dom.contains("live · 2 queues"), "{dom}");
    // Console messages are logged as "CONSOLE(...)" / "Uncaught" lines.
    for line in log.lines() {
        let lower = line.to_ascii_lowercase();
        assert!(
            !(lower.contains("uncaught") || (lower.contains("console") && lower.contains("error"))),
            "browser console error: {line}\n{log}"
        );
    }
}
