//! The simulator against reality: the sample profile `config/profiles/compare.toml` run in
//! virtual time and in real time on the embedded backend must agree within the tolerances
//! stated here.

use std::path::Path;

use ebbflow::config::QueueSettings;
use ebbflow::simulate::{run, simulate, summary_text, Profile};

/// The real-time comparison needs the machine to itself: the CLI test (a CPU-heavy simulation
/// in a child process) waits for it instead of running beside it.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn queue() -> QueueSettings {
    let mut q = QueueSettings::default();
    q.scaling.max_tasks = 6;
    q.scaling.messages_per_task = 50;
    q
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn virtual_time_predicts_real_time_within_tolerance() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let profile = Profile::load(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/profiles/compare.toml"
    )))
    .unwrap();
    let predicted = {
        let (profile, q) = (profile.clone(), queue());
        tokio::task::spawn_blocking(move || simulate(&profile, q).unwrap().1)
            .await
            .unwrap()
    };
    let (_, real) = run(&profile, queue()).await.unwrap();
    eprintln!(
        "virtual:\n{}real:\n{}",
        summary_text(&predicted),
        summary_text(&real)
    );
    // Exact: what was sent and handled.
    assert_eq!(predicted.sent, real.sent);
    assert_eq!(predicted.handled, predicted.sent);
    assert_eq!(real.handled, real.sent);
    // Within 25%: storage calls per message (real-time scheduling changes batch sizes a bit).
    let ratio = real.calls_per_message / predicted.calls_per_message;
    assert!(
        (0.75..=1.25).contains(&ratio),
        "calls/message ratio {ratio:.2}"
    );
    // Within one task: the peak.
    assert!(predicted.peak_tasks.abs_diff(real.peak_tasks) <= 1);
    // Within 100 ms: median pickup (a push trigger wakes the tasks in both).
    assert!(
        (predicted.pickup_p50_ms - real.pickup_p50_ms).abs() <= 100.0,
        "p50 {} vs {}",
        predicted.pickup_p50_ms,
        real.pickup_p50_ms
    );
}

#[test]
fn the_cli_writes_csv_and_svg_and_prints_a_summary() {
    let _alone = ONE_AT_A_TIME.blocking_lock();
    let out = std::env::temp_dir().join(format!("ebbflow-sim-{}", std::process::id()));
    let _cleanup = RemoveOnDrop(out.clone());
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_ebbflow"))
        .args([
            "simulate",
            "--profile",
            "config/profiles/burst.toml",
            "--queue",
            "orders",
            "--out",
        ])
        .arg(&out)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env(
            "EBBFLOW_CONFIG_DIR",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config"),
        )
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(text.contains("handled          4400"), "{text}");
    let csv = std::fs::read_to_string(out.join("simulation.csv")).unwrap();
    assert_eq!(csv.lines().count(), 601);
    let svg = std::fs::read_to_string(out.join("simulation.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("dequeue tasks"));
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_ebbflow"))
        .args(["simulate", "--profile", "nope.toml"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("profile nope.toml"));
}

/// Removes a folder when dropped, so a failing test leaves nothing behind either.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
