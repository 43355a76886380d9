//! The `ebbflow` command line.
//!
//! Run with: `cargo run --bin ebbflow -- simulate --profile config/profiles/burst.toml`
//!
//! `simulate` runs the real listener and scaling policy on the embedded backend in virtual
//! time against a load profile, with the scaling rules of one queue from the usual config
//! (`config/` files and `EBBFLOW__...` overrides), and writes `simulation.csv` and
//! `simulation.svg` to `--out` (default `target/simulation`).

// A command-line tool: its report goes to stdout (the lint guards library code).
#![allow(clippy::print_stdout)]

use std::path::PathBuf;
use std::process::ExitCode;

use ebbflow::simulate::{csv, simulate, summary_text, svg, Profile};
use ebbflow::Settings;

const USAGE: &str = "usage: ebbflow simulate --profile FILE [--queue NAME] [--out DIR]";

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ebbflow: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Vec<String>) -> Result<(), String> {
    let mut args = args.into_iter();
    match args.next().as_deref() {
        Some("simulate") => {}
        _ => return Err(USAGE.into()),
    }
    let (mut profile, mut queue, mut out) = (None, None, PathBuf::from("target/simulation"));
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .ok_or_else(|| format!("{flag} needs a value; {USAGE}"))?;
        match flag.as_str() {
            "--profile" => profile = Some(PathBuf::from(value)),
            "--queue" => queue = Some(value),
            "--out" => out = PathBuf::from(value),
            _ => return Err(format!("unknown option {flag}; {USAGE}")),
        }
    }
    let profile_path = profile.ok_or_else(|| format!("--profile is required; {USAGE}"))?;
    let profile = Profile::load(&profile_path)?;
    let settings = Settings::load().map_err(|e| e.to_string())?;
    let (name, queue) = match queue {
        Some(name) => {
            let q = settings
                .queues
                .get(&name)
                .ok_or_else(|| format!("no [queues.{name}] section in config"))?;
            (name, q.clone())
        }
        None => settings
            .queues
            .iter()
            .next()
            .map(|(n, q)| (n.clone(), q.clone()))
            .unwrap_or_else(|| ("defaults".into(), Default::default())),
    };
    let (samples, summary) = simulate(&profile, queue)?;
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let title = format!(
        "ebbflow simulate: {} with queue {name}'s rules",
        profile_path.display()
    );
    for (file, body) in [
        ("simulation.csv", csv(&samples)),
        ("simulation.svg", svg(&samples, &title)),
    ] {
        let path = out.join(file);
        std::fs::write(&path, body).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    print!("{}", summary_text(&summary));
    println!(
        "wrote {0}/simulation.csv and {0}/simulation.svg",
        out.display()
    );
    Ok(())
}
