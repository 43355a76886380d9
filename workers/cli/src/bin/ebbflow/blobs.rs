//! `ebbflow blobs gc`: the claim check's orphaned payload blobs.

use std::time::Duration;

use ebbflow::store::sweep;

use crate::context::{block_on, parse_duration};
use crate::{CliError, Context};

/// The claim check's payload blobs.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Find orphaned payload blobs (a dry run unless --delete): those whose message expired
    /// more than an hour ago (their `ebbflow_expires_at` metadata), and those with ebbflow's
    /// metadata but no expiry that are older than --older-than. Blobs without ebbflow's
    /// metadata are never touched, nor are blobs of poisoned messages (their expiry follows
    /// the poison copy's).
    Gc {
        /// Delete the orphans found (default: only list them).
        #[arg(long)]
        delete: bool,
        /// The age past which a blob without an expiry counts as an orphan (default: the
        /// longest time to live a message can have, the service's 7d unless a queue's
        /// poison_ttl is longer).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        older_than: Option<Duration>,
    },
}

impl Command {
    /// Runs the command against the configured blob container.
    pub fn run(self, ctx: &Context) -> Result<(), CliError> {
        let Command::Gc { delete, older_than } = self;
        let settings = ctx.settings()?;
        let blobs = ctx.blobs(&settings)?.ok_or_else(|| {
            CliError::usage(
                "the claim check is off: no blob endpoint is known (set \
                 storage.claim_check.blob_endpoint, or a storage.connection_string naming the \
                 account)",
            )
        })?;
        // The longest life a message can have: the service's default time to live, or a
        // longer finite poison_ttl.
        let longest = settings
            .queues
            .values()
            .filter_map(|q| q.poison_ttl.duration())
            .fold(ebbflow::store::DEFAULT_TIME_TO_LIVE, Duration::max);
        let older_than = older_than.unwrap_or(longest);
        let found = block_on(sweep(&blobs, older_than, !delete))?
            .map_err(|e| CliError::runtime(format!("blobs gc: {e}")))?;
        let verb = if delete { "deleted" } else { "would delete" };
        say!(
            "{} orphan(s) in container {} ({verb}; {} kept){}",
            found.orphans.len(),
            blobs.container(),
            found.kept,
            if delete {
                ""
            } else {
                "; pass --delete to delete them"
            }
        );
        for b in &found.orphans {
            let expires = b
                .metadata
                .get(ebbflow::store::META_EXPIRES)
                .map_or("no expiry", String::as_str);
            say!("  {}  {} bytes  expires={expires}", b.name, b.size);
        }
        Ok(())
    }
}
