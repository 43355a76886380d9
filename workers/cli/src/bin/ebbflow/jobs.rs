//! `ebbflow jobs`: running and recent long jobs and their progress, from the bus's job records.

use ebbflow::bus::jobs::JobRecord;
use ebbflow::bus::{now_ms, Bus};

use crate::cell::cell;
use crate::context::block_on;
use crate::{CliError, Context};

/// Lists the jobs whose progress is recorded (queues with `[queues.<name>.heartbeat]`
/// settings, and `JobMonitor`s): running ones, and those ended within `bus.job_retention`,
/// newest start first: id, state, progress count, pulses, elapsed time, instance and the START
/// text (or the end's note). A running job whose record has not changed for three of its pulse
/// intervals (at least 10 s; 10 min without timed pulses) is shown `stale`, its elapsed time
/// frozen at its last change (`JobRecord::seen_at`). Needs `[bus] kind = "redis"`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print a JSON array instead of a table.
    #[arg(long)]
    json: bool,
    /// Only running jobs (not stale ones).
    #[arg(long)]
    running: bool,
}

impl Args {
    /// Reads and prints the job records.
    pub fn run(self, ctx: &Context) -> Result<(), CliError> {
        let settings = ctx.settings()?;
        if !settings.bus.is_shared() {
            return Err(CliError::usage(
                "bus.kind is none: job progress is kept on a shared bus only; set [bus] kind = \
                 \"redis\" and bus.url",
            ));
        }
        let list: Vec<JobRecord> = block_on(async {
            let member = crate::context::cli_member()?;
            let bus = ebbflow::bus::RedisBus::connect_client(&settings.bus, member)
                .await
                .map_err(CliError::runtime)?;
            let list = bus.jobs().await.map_err(CliError::runtime);
            bus.close().await;
            list
        })??;
        // As seen now: a running job whose pulses stopped is `stale`.
        let now = now_ms();
        let mut list: Vec<JobRecord> = list.into_iter().map(|j| j.seen_at(now)).collect();
        if self.running {
            list.retain(|j| j.state == ebbflow::bus::jobs::JobState::Running);
        }
        if self.json {
            let text = serde_json::to_string_pretty(&list).map_err(CliError::runtime)?;
            say!("{text}");
            return Ok(());
        }
        if list.is_empty() {
            say!(
                "no jobs recorded within bus.job_retention (prefix {})",
                settings.bus.channel_prefix
            );
            return Ok(());
        }
        say!(
            "{:<40} {:<10} {:>9} {:>7} {:>9} {:>10}  {:<24} text",
            "job",
            "state",
            "count",
            "pulses",
            "elapsed",
            "updated",
            "instance"
        );
        for j in &list {
            let secs = |ms: u64| format!("{:.1}s", ms as f64 / 1000.0);
            let text = if j.note.is_empty() {
                j.text.clone()
            } else {
                format!("{} | {}", j.text, j.note)
            };
            say!(
                "{:<40} {:<10} {:>9} {:>7} {:>9} {:>10}  {:<24} {}",
                cell(&j.id),
                j.state.as_str(),
                j.count,
                j.timed_pulses + j.count_pulses,
                secs(j.elapsed_ms),
                format!("{} ago", secs(now.saturating_sub(j.updated_at_ms))),
                cell(&j.instance),
                cell(&text)
            );
        }
        Ok(())
    }
}
