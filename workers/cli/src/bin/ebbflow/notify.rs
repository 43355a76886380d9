//! `ebbflow notify QUEUE`: announce work on a queue without sending a message.

use crate::context::{block_on, configured};
use crate::push::{self, WorkDetected};
use crate::{CliError, Context};

/// Sends the push triggers the config declares for a configured queue (the bus's work notice
/// with `[bus] kind = "redis"`, a POST to the HTTP trigger endpoint when `[triggers.http]` is
/// on), as a producer that put messages there by other means would. No message is sent and no
/// storage call is made. Exit 1 when a trigger failed, 2 when none is configured.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A queue configured under [queues.<name>].
    queue: String,
    /// How many messages the notice stands for (informational).
    #[arg(long, default_value_t = 1)]
    messages: u64,
    /// Post the HTTP trigger to this endpoint instead of the configured one.
    #[arg(long, value_name = "URL")]
    trigger_url: Option<String>,
}

impl Args {
    /// Announces the work.
    pub fn run(self, ctx: &Context) -> Result<(), CliError> {
        let settings = ctx.settings()?;
        configured(&settings, &self.queue)?;
        if let Some(url) = &self.trigger_url {
            push::check_url(url).map_err(CliError::usage)?;
        }
        if !settings.bus.is_shared()
            && !settings.triggers.http.enabled
            && self.trigger_url.is_none()
        {
            return Err(CliError::usage(
                "no push trigger is configured: set [bus] kind = \"redis\" and bus.url, or \
                 enable [triggers.http] (or pass --trigger-url)",
            ));
        }
        let target = push::Target {
            off: false,
            http_url: self.trigger_url.clone(),
        };
        let event = WorkDetected {
            account: None,
            queue: self.queue.clone(),
            payload_size: self.messages,
        };
        let outcomes = block_on(push::announce(&settings, &target, &event))?;
        let mut failed = Vec::new();
        for o in &outcomes {
            match &o.result {
                Ok(answer) => say!("notified {} ({}: {answer})", self.queue, o.channel),
                Err(why) => {
                    say!("FAILED ({})", o.channel);
                    failed.push(format!("{}: {why}", o.channel));
                }
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(CliError::runtime(failed.join("; ")))
        }
    }
}
