//! The `ebbflow` command line.
//!
//! Run with: `cargo run --bin ebbflow -- simulate --profile config/profiles/burst.toml`
//!
//! `simulate` runs the real listener and scaling policy on the embedded backend in virtual
//! time against a load profile, with the scaling rules of one queue from the usual config
//! (`config/` files and `EBBFLOW__...` overrides), and writes `simulation.csv` and
//! `simulation.svg` to `--out` (default `target/simulation`).
//!
//! `poison list|show|requeue` works on a configured queue's poison queue, with the storage
//! settings of the usual config:
//!
//! ```text
//! ebbflow poison list --queue orders [--limit 100]
//! ebbflow poison show --queue orders --id <poison message id>
//! ebbflow poison requeue --queue orders (--id <id> ... | --all)
//! ```

// A command-line tool: its report goes to stdout (the lint guards library code).
#![allow(clippy::print_stdout)]

use std::path::PathBuf;
use std::process::ExitCode;

use std::collections::BTreeSet;

use ebbflow::listener::poison::{PoisonQueue, PoisonRecord, Selection};
use ebbflow::simulate::{csv, simulate, summary_text, svg, Profile};
use ebbflow::store::retrying::RetryingStore;
use ebbflow::store::sharding::ShardingStore;
use ebbflow::Settings;

const USAGE: &str = "usage: ebbflow simulate --profile FILE [--queue NAME] [--out DIR]
       ebbflow poison list --queue NAME [--limit N]
       ebbflow poison show --queue NAME --id ID
       ebbflow poison requeue --queue NAME (--id ID ... | --all)";

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
        Some("poison") => return poison(args.collect()),
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

fn poison(args: Vec<String>) -> Result<(), String> {
    let mut args = args.into_iter();
    let command = args.next().unwrap_or_default();
    let (mut queue, mut limit, mut ids, mut all) = (None, 100usize, BTreeSet::new(), false);
    while let Some(flag) = args.next() {
        if flag == "--all" {
            all = true;
            continue;
        }
        let value = args
            .next()
            .ok_or_else(|| format!("{flag} needs a value; {USAGE}"))?;
        match flag.as_str() {
            "--queue" => queue = Some(value),
            "--id" => {
                ids.insert(value);
            }
            "--limit" => {
                limit = value
                    .parse()
                    .map_err(|_| format!("--limit {value}: not a number"))?
            }
            _ => return Err(format!("unknown option {flag}; {USAGE}")),
        }
    }
    let name = queue.ok_or_else(|| format!("--queue is required; {USAGE}"))?;
    let settings = Settings::load().map_err(|e| e.to_string())?;
    let queue_settings = settings
        .queues
        .get(&name)
        .ok_or_else(|| format!("no [queues.{name}] section in config"))?;
    let store = ebbflow::store::open(&settings.storage).map_err(|e| e.to_string())?;
    if store.kind() == ebbflow::store::BackendKind::Embedded {
        return Err(
            "storage is the embedded in-process backend, which has no poison queue \
                    outside a running worker: set storage.connection_string or \
                    AZURE_STORAGE_CONNECTION_STRING"
                .into(),
        );
    }
    let store = RetryingStore::wrap(store, settings.storage.retry);
    // A requeue of a sharded queue's message goes back through its shards.
    let store = ShardingStore::wrap(store, ShardingStore::of_settings(&settings));
    let poison = PoisonQueue::new(store, &name, queue_settings).map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    runtime.block_on(async {
        match command.as_str() {
            "list" => {
                let records = poison.list(limit).await.map_err(|e| e.to_string())?;
                println!("{} message(s) on {}", records.len(), poison.name());
                for r in &records {
                    println!("{}", summary_line(r));
                }
                Ok(())
            }
            "show" => {
                let id = ids
                    .first()
                    .ok_or_else(|| format!("show needs --id; {USAGE}"))?;
                let record = poison
                    .inspect(id)
                    .await
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| format!("no message {id} on {}", poison.name()))?;
                match &record.envelope {
                    Ok(e) => {
                        let json = serde_json::to_string_pretty(e).map_err(|e| e.to_string())?;
                        println!("{json}");
                        if let Ok(bytes) = queue_settings.encoding.decode(&e.body) {
                            println!("decoded body: {}", String::from_utf8_lossy(&bytes));
                        }
                    }
                    Err(why) => println!("{}: no envelope, original text ({why})", record.id),
                }
                Ok(())
            }
            "requeue" => {
                let selection = match (all, ids.is_empty()) {
                    (true, true) => Selection::All,
                    (false, false) => Selection::Ids(ids),
                    _ => return Err(format!("requeue needs either --all or --id; {USAGE}")),
                };
                let report = poison
                    .requeue(&selection)
                    .await
                    .map_err(|e| e.to_string())?;
                for (id, queue, new_id) in &report.requeued {
                    println!("requeued {id} to {queue} as {new_id}");
                }
                for (id, why) in &report.skipped {
                    println!("skipped {id}: {why}");
                }
                for id in &report.missing {
                    println!("not found: {id}");
                }
                if report.skipped.is_empty() && report.missing.is_empty() {
                    Ok(())
                } else {
                    Err(format!(
                        "{} requeued, {} skipped, {} not found",
                        report.requeued.len(),
                        report.skipped.len(),
                        report.missing.len()
                    ))
                }
            }
            other => Err(format!("unknown poison command {other:?}; {USAGE}")),
        }
    })
}

fn summary_line(r: &PoisonRecord) -> String {
    match &r.envelope {
        Ok(e) => {
            let mut error = e.error.clone().unwrap_or_default();
            if error.len() > 80 {
                let cut = (0..=77)
                    .rev()
                    .find(|i| error.is_char_boundary(*i))
                    .unwrap_or(0);
                error.truncate(cut);
                error.push_str("...");
            }
            let when = e
                .poisoned_at
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default();
            format!(
                "{}  {}  {}  tries={}  from={}/{}  {}",
                r.id,
                when,
                e.reason.as_str(),
                e.dequeue_count,
                e.queue,
                e.message_id,
                error
            )
        }
        Err(why) => format!("{}  (no envelope, original text: {why})", r.id),
    }
}
