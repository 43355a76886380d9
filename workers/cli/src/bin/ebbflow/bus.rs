//! `ebbflow bus poison list|show|requeue`: the bus poison stream, where competing-consumer
//! events go after `bus.max_deliveries` failed deliveries, and stream entries that could not be
//! delivered (over `bus.max_envelope_size`, not an envelope, wrongly signed).

use ebbflow::bus::RedisBus;
use ebbflow::bus::{Bus, BusError, PoisonEntry};

use crate::cell::cell;
use crate::context::block_on;
use crate::{CliError, Context};

/// Commands on the bus.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List, show and requeue the bus poison stream's entries.
    #[command(subcommand)]
    Poison(Poison),
}

/// The bus poison stream.
#[derive(Debug, clap::Subcommand)]
pub enum Poison {
    /// The newest entries, newest first: id, source stream, deliveries, size, reason.
    List {
        /// At most this many (default 50).
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One entry in full (JSON), its envelope included when it was kept.
    Show {
        /// The entry's id (from `list`).
        id: String,
    },
    /// Puts an entry's envelope back on the competing stream it came from (delivered afresh)
    /// and removes it from the poison stream.
    Requeue {
        /// The entry's id (from `list`).
        id: String,
    },
}

impl Command {
    /// Runs the command against the configured Redis.
    pub fn run(self, ctx: &Context) -> Result<(), CliError> {
        let Command::Poison(poison) = self;
        let settings = ctx.settings()?;
        if !settings.bus.is_shared() {
            return Err(CliError::usage(
                "bus.kind is none: the bus poison stream lives in Redis; set [bus] kind = \
                 \"redis\" and bus.url",
            ));
        }
        block_on(async {
            let member = crate::context::cli_member()?;
            let bus = RedisBus::connect_client(&settings.bus, member)
                .await
                .map_err(CliError::runtime)?;
            let done = poison.run(&bus).await;
            bus.close().await;
            done
        })?
    }
}

fn failed(e: BusError) -> CliError {
    CliError::runtime(e)
}

impl Poison {
    async fn run(self, bus: &RedisBus) -> Result<(), CliError> {
        match self {
            Poison::List { limit, json } => {
                let list = bus.poison_list(limit).await.map_err(failed)?;
                if json {
                    let text = serde_json::to_string_pretty(&list).map_err(CliError::runtime)?;
                    say!("{text}");
                } else if list.is_empty() {
                    say!("the bus poison stream is empty");
                } else {
                    say!(
                        "{:<17} {:<28} {:>10} {:>9}  reason",
                        "id",
                        "stream",
                        "deliveries",
                        "bytes"
                    );
                    for e in &list {
                        say!(
                            "{:<17} {:<28} {:>10} {:>9}  {}",
                            cell(&e.id),
                            cell(&e.stream),
                            e.deliveries,
                            e.size,
                            one_line(e)
                        );
                    }
                }
            }
            Poison::Show { id } => {
                let entry = bus.poison_show(&id).await.map_err(failed)?;
                let text = serde_json::to_string_pretty(&entry).map_err(CliError::runtime)?;
                say!("{text}");
            }
            Poison::Requeue { id } => {
                bus.poison_requeue(&id).await.map_err(failed)?;
                say!("requeued {id}");
            }
        }
        Ok(())
    }
}

/// The reason on one line, control characters escaped (it may hold a handler's error text).
fn one_line(e: &PoisonEntry) -> String {
    cell(&e.reason)
}
