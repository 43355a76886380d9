//! `ebbflow poison list|show|requeue`: a configured queue's poison queue.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::PathBuf;

use ebbflow::config::QueueSettings;
use ebbflow::listener::poison::{PoisonQueue, PoisonRecord, Selection};
use ebbflow::Settings;

use crate::context::{block_on, configured};
use crate::push::{self, WorkDetected};
use crate::{CliError, Context};

/// The poison commands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List the poison messages of a queue, oldest first: id, when and why poisoned, tries,
    /// origin, last error.
    List {
        /// The configured queue whose poison queue to read.
        #[arg(long, value_name = "NAME")]
        queue: String,
        /// At most this many, 1 or more.
        #[arg(long, value_name = "N", default_value_t = 100,
              value_parser = clap::value_parser!(u64).range(1..))]
        limit: u64,
    },
    /// Show one poison message: its envelope (failure details) and a preview of its payload
    /// (a claim-check reference resolved): text with control characters escaped, cut at 2,000
    /// characters, or for bytes that are not UTF-8 a hex dump of the first 256; always with the
    /// full size. --out or --raw give the payload's exact bytes.
    Show {
        /// The configured queue whose poison queue to read.
        #[arg(long, value_name = "NAME")]
        queue: String,
        /// The poison message's id (as `poison list` prints it).
        #[arg(long, value_name = "ID")]
        id: String,
        /// Write the payload's exact bytes to FILE (created or replaced), and show the rest.
        #[arg(long, value_name = "FILE", conflicts_with = "raw")]
        out: Option<PathBuf>,
        /// Write only the payload's exact bytes to stdout, nothing else (for a pipe: `... --raw
        /// > payload.bin`).
        #[arg(long)]
        raw: bool,
    },
    /// Send poison messages back to their source queue with their original text, then delete
    /// the poison copies, then send the push trigger the config declares for each source queue
    /// (as `enqueue` does), so a worker idling at zero tasks wakes for them.
    Requeue {
        /// The configured queue whose poison queue to read.
        #[arg(long, value_name = "NAME")]
        queue: String,
        /// A poison message id (repeat for several).
        #[arg(long, value_name = "ID", conflicts_with = "all")]
        id: Vec<String>,
        /// Every poison message of the queue (on a poison queue shared with other queues:
        /// those whose envelope names this queue).
        #[arg(long)]
        all: bool,
        /// Send no push trigger after requeueing.
        #[arg(long)]
        no_trigger: bool,
    },
}

impl Command {
    /// Runs the command against the configured storage.
    pub fn run(self, ctx: &Context) -> Result<(), CliError> {
        let queue = match &self {
            Command::List { queue, .. }
            | Command::Show { queue, .. }
            | Command::Requeue { queue, .. } => queue.clone(),
        };
        if let Command::Requeue { id, all: false, .. } = &self {
            if id.is_empty() {
                return Err(CliError::usage(
                    "requeue needs either --all or --id (see ebbflow poison requeue --help)",
                ));
            }
        }
        let settings = ctx.settings()?;
        let queue_settings = configured(&settings, &queue)?.clone();
        let store = ctx.store(&settings)?;
        let account = store.account();
        let poison = PoisonQueue::new(store, &queue, &queue_settings)?;
        // Other configured queues whose poison copies land in the same poison queue.
        let sharing: Vec<String> = settings
            .queues
            .iter()
            .filter(|(name, q)| **name != queue && q.poison_queue_name(name) == poison.name())
            .map(|(name, _)| name.clone())
            .collect();
        let claim = crate::context::claim_check(&settings)?;
        block_on(self.run_on(
            &settings,
            account,
            &poison,
            &queue_settings,
            &sharing,
            &claim,
        ))?
    }

    async fn run_on(
        self,
        config: &Settings,
        account: Option<String>,
        poison: &PoisonQueue,
        settings: &QueueSettings,
        sharing: &[String],
        claim: &ebbflow::store::ClaimCheck,
    ) -> Result<(), CliError> {
        // Where a copy without an envelope goes back to on a requeue: the queue given.
        let source = match &self {
            Command::List { queue, .. }
            | Command::Show { queue, .. }
            | Command::Requeue { queue, .. } => queue.clone(),
        };
        match self {
            Command::List { limit, .. } => {
                let records = poison
                    .list(usize::try_from(limit).unwrap_or(usize::MAX))
                    .await?;
                say!("{} message(s) on {}", records.len(), poison.name());
                for r in &records {
                    say!("{}", summary_line(r));
                }
                // Said once under the list, not on every such line.
                if records.iter().any(|r| r.envelope.is_err()) {
                    say!("{}", bare_copies_note(&source));
                }
                Ok(())
            }
            Command::Show { id, out, raw, .. } => {
                let record = poison.inspect(&id).await?.ok_or_else(|| {
                    CliError::runtime(format!("no message {id} on {}", poison.name()))
                })?;
                // The payload, and where it came from (or why it cannot be had).
                let text = match &record.envelope {
                    Ok(e) => e.body.as_str(),
                    Err(_) => record.text.as_str(),
                };
                let payload: Result<(Vec<u8>, &str, &str), String> = match claim.open(text).await {
                    Ok(Some(bytes)) => Ok((bytes, "payload", ", from the claim check's blob")),
                    Ok(None) => settings
                        .encoding
                        .decode(text)
                        .map(|bytes| (bytes, "decoded body", ""))
                        .map_err(|e| format!("the body does not decode: {e}")),
                    Err(why) => Err(format!("payload unavailable: {why}")),
                };
                if raw {
                    let (bytes, _, _) = payload.map_err(CliError::runtime)?;
                    return write_raw(&bytes);
                }
                match &record.envelope {
                    Ok(e) => {
                        let json = serde_json::to_string_pretty(e).map_err(CliError::runtime)?;
                        say!("{json}");
                    }
                    Err(_) => {
                        say!("{}  {BARE_COPY}", record.id);
                        say!("text: {}", escaped(&record.text, PREVIEW_CHARS).0);
                    }
                }
                match (&payload, &out) {
                    (Ok((bytes, what, from)), Some(path)) => {
                        std::fs::write(path, bytes).map_err(|e| {
                            CliError::runtime(format!("--out {}: {e}", path.display()))
                        })?;
                        say!(
                            "{what} ({} bytes{from}) written to {}",
                            bytes.len(),
                            path.display()
                        );
                    }
                    (Ok((bytes, what, from)), None) => {
                        say!("{what} ({} bytes{from}): {}", bytes.len(), preview(bytes));
                    }
                    (Err(why), _) => say!("{why}"),
                }
                if let Err(why) = &record.envelope {
                    say!("{}", bare_copies_note(&source));
                    say!("(not read as an envelope: {why})");
                }
                match (payload, out) {
                    (Err(why), Some(path)) => Err(CliError::runtime(format!(
                        "--out {}: nothing written: {why}",
                        path.display()
                    ))),
                    _ => Ok(()),
                }
            }
            Command::Requeue {
                id,
                all,
                queue,
                no_trigger,
            } => {
                let selection = if all && !sharing.is_empty() {
                    // A shared poison queue: --all means this queue's messages, the ones whose
                    // envelope names it.
                    let records = poison.list(usize::MAX).await?;
                    let (ours, theirs): (Vec<_>, Vec<_>) = records
                        .iter()
                        .partition(|r| r.envelope.as_ref().is_ok_and(|e| e.queue == queue));
                    if !theirs.is_empty() {
                        say!(
                            "left {} poison message(s) on {} whose envelope does not name \
                             {queue} (the poison queue is shared with {}): requeue them with {} \
                             (or by --id)",
                            theirs.len(),
                            poison.name(),
                            sharing.join(", "),
                            sharing
                                .iter()
                                .map(|q| format!("--queue {q}"))
                                .collect::<Vec<_>>()
                                .join(" or ")
                        );
                    }
                    Selection::Ids(ours.iter().map(|r| r.id.clone()).collect())
                } else if all {
                    Selection::All
                } else {
                    Selection::Ids(id.into_iter().collect::<BTreeSet<_>>())
                };
                let report = poison.requeue(&selection).await?;
                for (id, queue, new_id) in &report.requeued {
                    say!("requeued {id} to {queue} as {new_id}");
                }
                for (id, why) in &report.skipped {
                    say!("skipped {id}: {why}");
                }
                for id in &report.missing {
                    say!("not found: {id}");
                }
                // Requeued messages are new work: wake the workers of each source queue, as a
                // producer's send would (a covered queue at zero tasks waits for exactly this).
                let mut per_queue: BTreeMap<&str, u64> = BTreeMap::new();
                for (_, source, _) in &report.requeued {
                    *per_queue.entry(source.as_str()).or_default() += 1;
                }
                let target = push::Target {
                    off: no_trigger,
                    http_url: None,
                };
                let mut trigger_failure = None;
                for (source, count) in per_queue {
                    let event = WorkDetected {
                        account: account.clone(),
                        queue: source.to_string(),
                        payload_size: count,
                    };
                    let outcomes = push::announce(config, &target, &event).await;
                    if let Err(e) = push::report(&outcomes, no_trigger, config, source) {
                        trigger_failure.get_or_insert(e);
                    }
                }
                if report.skipped.is_empty() && report.missing.is_empty() {
                    trigger_failure.map_or(Ok(()), Err)
                } else {
                    Err(CliError::runtime(format!(
                        "{} requeued, {} skipped, {} not found",
                        report.requeued.len(),
                        report.skipped.len(),
                        report.missing.len()
                    )))
                }
            }
        }
    }
}

/// The label of a poison copy without an envelope (its original text only).
const BARE_COPY: &str = "original text only, no failure details (too large to wrap in a poison \
                         envelope, or not put there by ebbflow)";

/// What a copy labelled [`BARE_COPY`] is, and what to do with it.
fn bare_copies_note(source: &str) -> String {
    format!(
        "\"original text only\": the message was too large to wrap in a poison envelope (its \
         reason and error are in the worker's 'message moved to poison queue' log line), or \
         something other than ebbflow put it there. `ebbflow poison show --queue {source} --id \
         <ID>` prints it; `ebbflow poison requeue --queue {source} --id <ID>` sends it back to \
         {source} unchanged."
    )
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
        Err(_) => format!("{}  {BARE_COPY}", r.id),
    }
}

/// The characters of a text payload `poison show` prints.
const PREVIEW_CHARS: usize = 2000;
/// The bytes of a binary payload `poison show` prints, in hex.
const PREVIEW_BYTES: usize = 256;

/// A payload for the terminal: UTF-8 text with its control characters escaped (line breaks and
/// tabs kept), cut at [`PREVIEW_CHARS`]; other bytes as a hex dump of the first
/// [`PREVIEW_BYTES`]. What was left out is said, with how to get all of it.
fn preview(bytes: &[u8]) -> String {
    let whole = "--out FILE or --raw give the exact bytes";
    match std::str::from_utf8(bytes) {
        Ok(text) => match escaped(text, PREVIEW_CHARS) {
            (shown, false) => shown,
            (shown, true) => format!(
                "{shown}\n... (cut at {PREVIEW_CHARS} characters of {} bytes; {whole})",
                bytes.len()
            ),
        },
        Err(_) => {
            let mut out = format!(
                "not UTF-8 text; the first {} bytes in hex:",
                bytes.len().min(PREVIEW_BYTES)
            );
            for (i, row) in bytes.chunks(16).take(PREVIEW_BYTES / 16).enumerate() {
                let hex: Vec<String> = row.iter().map(|b| format!("{b:02x}")).collect();
                let ascii: String = row
                    .iter()
                    .map(|&b| {
                        if b.is_ascii_graphic() || b == b' ' {
                            b as char
                        } else {
                            '.'
                        }
                    })
                    .collect();
                out.push_str(&format!(
                    "\n  {:08x}  {:<47}  |{ascii}|",
                    i * 16,
                    hex.join(" ")
                ));
            }
            if bytes.len() > PREVIEW_BYTES {
                out.push_str(&format!("\n  ... ({} bytes in all; {whole})", bytes.len()));
            }
            out
        }
    }
}

/// `text` with control characters escaped but line breaks and tabs, cut at `max` characters;
/// and whether it was cut.
fn escaped(text: &str, max: usize) -> (String, bool) {
    let mut out = String::with_capacity(text.len().min(max * 2));
    for (i, c) in text.chars().enumerate() {
        if i == max {
            return (out, true);
        }
        if c.is_control() && c != '\n' && c != '\t' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    (out, false)
}

/// Writes `bytes` to stdout as they are (`poison show --raw`).
fn write_raw(bytes: &[u8]) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(bytes)
        .and_then(|()| stdout.flush())
        .map_err(|e| CliError::runtime(format!("--raw: cannot write to stdout: {e}")))
}
