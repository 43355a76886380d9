//! `ebbflow reload --role R`: every live instance of a role reads its config files again and
//! applies the scaling rules that changed, without a restart; each instance's answer is shown.

use std::sync::Arc;
use std::time::Duration;

use ebbflow::bus::events::ReloadRequested;
use ebbflow::bus::{Address, Bus, BusHandle, Name};

use crate::context::{block_on, of_role};
use crate::{CliError, Context};

/// Asks each live instance of a role (`ebbflow.reload`, a request with a reply) to read its
/// config folder again, as SIGHUP does. Reloadable without a restart: `[queues.<q>.scaling]`
/// (but `wake_on_publish`) and `[queues.<q>.idle_backoff]`; each instance answers with the
/// values it applied (old and new) and the changed keys that need a restart (not applied), or
/// with the error that made it keep its old rules (an invalid file, naming the key). Each
/// instance reads its own files: update them first (a ConfigMap, a mounted volume). Exit code 1
/// when no instance of the role is live (nothing reloaded), or when an instance rejected the
/// reload or did not answer within `--timeout`. Needs `[bus] kind = "redis"`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The role whose instances reload (`bus.role` of their config).
    #[arg(long)]
    role: String,
    /// How long to wait for each instance's answer, seconds.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
    /// Why, for the instances' logs.
    #[arg(long, default_value = "ebbflow reload")]
    reason: String,
}

impl Args {
    /// Sends the reload request to each live instance of the role and shows the answers.
    pub fn run(self, ctx: &Context) -> Result<(), CliError> {
        let settings = ctx.settings()?;
        if !settings.bus.is_shared() {
            return Err(CliError::usage(
                "bus.kind is none: a reload command travels on a shared bus; set [bus] kind = \
                 \"redis\" and bus.url",
            ));
        }
        let role = Name::new(&self.role)
            .map_err(|e| CliError::usage(format!("--role {:?}: {e}", self.role)))?;
        block_on(async {
            let member = crate::context::cli_member()?;
            // A listening connection: the replies come back to this instance.
            let transport = ebbflow::bus::RedisBus::connect(&settings.bus, member)
                .await
                .map_err(CliError::runtime)?;
            let transport: Arc<dyn Bus> = Arc::new(transport);
            let bus = BusHandle::new(transport.clone());
            bus.start();
            let result = self.ask_each(&transport, &bus, &role).await;
            bus.close().await;
            result
        })?
    }

    async fn ask_each(
        &self,
        transport: &Arc<dyn Bus>,
        bus: &BusHandle,
        role: &Name,
    ) -> Result<(), CliError> {
        let live = of_role(transport, role).await?;
        if live.is_empty() {
            return Err(CliError::runtime(format!(
                "no live instance of role {role}: nothing was reloaded; check the role's name \
                 (ebbflow instances lists the live instances and their roles)"
            )));
        }
        let command = ReloadRequested {
            reason: self.reason.clone(),
        };
        let wait = Duration::from_secs(self.timeout);
        let mut failed = Vec::new();
        for id in live.keys() {
            match bus
                .request(&command, Address::instance(id.as_str()), wait)
                .await
            {
                Ok(done) => {
                    if done.applied.is_empty() && done.needs_restart.is_empty() {
                        say!("{id}: reloaded, nothing changed");
                    } else {
                        say!("{id}: reloaded");
                    }
                    for change in &done.applied {
                        say!("  applied {change}");
                    }
                    for key in &done.needs_restart {
                        say!("  needs a restart (not applied): {key}");
                    }
                }
                Err(e) => {
                    say!("{id}: not reloaded, the old rules stay: {e}");
                    failed.push(id.clone());
                }
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(CliError::runtime(format!(
                "{} of {} instance(s) of role {role} did not reload: {}",
                failed.len(),
                live.len(),
                failed.join(", ")
            )))
        }
    }
}
