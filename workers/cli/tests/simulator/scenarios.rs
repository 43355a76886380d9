//! Scaling scenarios: each file in `tests/simulator/scenarios/` pairs a load profile with a queue's
//! rules and the ranges its summary must fall in; all run through the simulator (the real
//! listener and policy, embedded backend, paused clock).

use std::path::Path;

use ebbflow::config::QueueSettings;
use ebbflow_cli::simulate::{simulate, summary_text, Profile};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Scenario {
    description: String,
    profile: Profile,
    #[serde(default)]
    queue: QueueSettings,
    expect: Expect,
}

/// Inclusive ranges; a missing one is not checked. Every scenario also requires that every
/// message sent was handled.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    peak_tasks: Option<[f64; 2]>,
    receive_calls: Option<[f64; 2]>,
    calls_per_message: Option<[f64; 2]>,
    pickup_p50_ms: Option<[f64; 2]>,
    pickup_p99_ms: Option<[f64; 2]>,
}

fn load(path: &Path) -> Scenario {
    config::Config::builder()
        .add_source(config::File::from(path))
        .build()
        .and_then(|c| c.try_deserialize())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn every_scenario_stays_in_its_ranges() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/simulator/scenarios");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 5,
        "scenario files missing from {}",
        dir.display()
    );
    let mut failures = Vec::new();
    for file in &files {
        let scenario = load(file);
        let (_, s) = simulate(&scenario.profile, scenario.queue).unwrap();
        let name = file.file_name().unwrap().to_string_lossy();
        eprintln!("{name}: {}\n{}", scenario.description, summary_text(&s));
        let e = &scenario.expect;
        let checks = [
            ("peak_tasks", e.peak_tasks, s.peak_tasks as f64),
            ("receive_calls", e.receive_calls, s.receive_calls as f64),
            (
                "calls_per_message",
                e.calls_per_message,
                s.calls_per_message,
            ),
            ("pickup_p50_ms", e.pickup_p50_ms, s.pickup_p50_ms),
            ("pickup_p99_ms", e.pickup_p99_ms, s.pickup_p99_ms),
        ];
        for (what, range, got) in checks {
            if let Some([low, high]) = range {
                if !(low..=high).contains(&got) {
                    failures.push(format!("{name}: {what} = {got}, expected {low}..={high}"));
                }
            }
        }
        if s.handled != s.sent {
            failures.push(format!("{name}: handled {} of {} sent", s.handled, s.sent));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
