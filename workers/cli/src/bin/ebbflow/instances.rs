//! `ebbflow instances`: the live worker instances on the bus and their last pulse.

use ebbflow::bus::{now_ms, Bus, Presence};

use crate::cell::cell;
use crate::context::block_on;
use crate::{CliError, Context};

/// Lists the instances whose presence pulse is still valid (within three `bus.pulse_interval`
/// of the last one): id, role, queues, dequeue tasks, handlers running, messages handled, and
/// how long ago the last pulse was. Needs `[bus] kind = "redis"`. The fields come from Redis,
/// where anyone with access may write them: the table escapes their control characters.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print a JSON array instead of a table.
    #[arg(long)]
    json: bool,
}

impl Args {
    /// Reads and prints the live instances.
    pub fn run(self, ctx: &Context) -> Result<(), CliError> {
        let settings = ctx.settings()?;
        if !settings.bus.is_shared() {
            return Err(CliError::usage(
                "bus.kind is none: instances announce themselves on a shared bus only; set \
                 [bus] kind = \"redis\" and bus.url",
            ));
        }
        let list: Vec<Presence> = block_on(async {
            let member = crate::context::cli_member()?;
            let bus = ebbflow::bus::RedisBus::connect_client(&settings.bus, member)
                .await
                .map_err(CliError::runtime)?;
            let list = bus.instances().await.map_err(CliError::runtime);
            bus.close().await;
            list
        })??;
        if self.json {
            let text = serde_json::to_string_pretty(&list).map_err(CliError::runtime)?;
            say!("{text}");
            return Ok(());
        }
        if list.is_empty() {
            say!("no live instances (prefix {})", settings.bus.channel_prefix);
            return Ok(());
        }
        say!(
            "{:<28} {:<14} {:>6} {:>9} {:>9} {:>9}  {:<10} queues",
            "instance",
            "role",
            "tasks",
            "in_flight",
            "handled",
            "receives",
            "last pulse"
        );
        let now = now_ms();
        for p in &list {
            let ago = now.saturating_sub(p.pulse_at_ms);
            say!(
                "{:<28} {:<14} {:>6} {:>9} {:>9} {:>9}  {:<10} {}",
                cell(&p.instance),
                cell(&p.role),
                p.active_tasks,
                p.in_flight,
                p.handled,
                p.receive_calls,
                format!("{:.1}s ago", ago as f64 / 1000.0),
                cell(&p.queues.join(","))
            );
        }
        Ok(())
    }
}
