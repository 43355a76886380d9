//! `ebbflow drain --role R`: every instance of a role stops taking work, drains and exits 0 (so
//! the orchestrator replaces it), all at once or one at a time.

use std::sync::Arc;
use std::time::Duration;

use ebbflow::bus::events::DrainRequested;
use ebbflow::bus::{Address, Bus, BusHandle, Name};

use crate::context::{block_on, of_role};
use crate::{CliError, Context};

/// Sends a drain command (`ebbflow.drain`) on the bus: each instance it reaches stops receiving,
/// finishes its in-flight messages within `worker.drain_timeout` and exits 0, as on SIGTERM.
/// All at once (default: one multicast to the role, kept for an instance away for less than
/// `bus.retention`), or `--one-at-a-time`: each live instance in turn, waiting until it left and
/// the role has as many live instances as before (its replacement) before the next. Needs
/// `[bus] kind = "redis"`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The role whose instances drain (`bus.role` of their config).
    #[arg(long)]
    role: String,
    /// One instance at a time, each after the previous one was replaced.
    #[arg(long)]
    one_at_a_time: bool,
    /// With `--one-at-a-time`: how long to wait for each instance to leave and be replaced,
    /// seconds (default 300); past it the command stops with exit code 1, the rest undrained.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Why, for the instances' logs.
    #[arg(long, default_value = "ebbflow drain")]
    reason: String,
}

impl Args {
    /// Sends the drain command(s).
    pub fn run(self, ctx: &Context) -> Result<(), CliError> {
        let settings = ctx.settings()?;
        if !settings.bus.is_shared() {
            return Err(CliError::usage(
                "bus.kind is none: a drain command travels on a shared bus; set [bus] kind = \
                 \"redis\" and bus.url",
            ));
        }
        let role = Name::new(&self.role)
            .map_err(|e| CliError::usage(format!("--role {:?}: {e}", self.role)))?;
        block_on(async {
            let member = crate::context::cli_member()?;
            let transport = ebbflow::bus::RedisBus::connect_client(&settings.bus, member)
                .await
                .map_err(CliError::runtime)?;
            let transport: Arc<dyn Bus> = Arc::new(transport);
            let bus = BusHandle::new(transport.clone());
            let command = DrainRequested {
                reason: self.reason.clone(),
            };
            let result = match of_role(&transport, &role).await {
                Ok(live) if live.is_empty() => Err(CliError::runtime(format!(
                    "no live instance of role {role}: nothing was sent; check the role's name \
                     (ebbflow instances lists the live instances and their roles)"
                ))),
                Ok(_) if self.one_at_a_time => {
                    self.one_by_one(&transport, &bus, &command, &role).await
                }
                Ok(live) => match bus.publish(&command, Address::role(role.as_str())).await {
                    Ok(_) => {
                        say!(
                            "drain sent to role {role} ({} live instance(s): {})",
                            live.len(),
                            live.keys().cloned().collect::<Vec<_>>().join(", ")
                        );
                        Ok(())
                    }
                    Err(e) => Err(CliError::runtime(e)),
                },
                Err(e) => Err(e),
            };
            transport.close().await;
            result
        })?
    }

    async fn one_by_one(
        &self,
        transport: &Arc<dyn Bus>,
        bus: &BusHandle,
        command: &DrainRequested,
        role: &Name,
    ) -> Result<(), CliError> {
        let before = of_role(transport, role).await?;
        let wanted = before.len();
        let limit = Duration::from_secs(self.timeout);
        for (n, (id, started)) in before.iter().enumerate() {
            bus.publish(command, Address::instance(id.as_str()))
                .await
                .map_err(CliError::runtime)?;
            say!("[{}/{wanted}] drain sent to {id}", n + 1);
            let deadline = tokio::time::Instant::now() + limit;
            loop {
                let now = of_role(transport, role).await?;
                // Gone, or back under the same id (a kept instance id) with a new start time.
                let replaced = now.get(id).is_some_and(|s| s != started);
                if (replaced || !now.contains_key(id)) && now.len() >= wanted {
                    let how = if replaced {
                        "was replaced (same id)"
                    } else {
                        "left"
                    };
                    say!(
                        "[{}/{wanted}] {id} {how}; role {role} has {} live instance(s) again",
                        n + 1,
                        now.len()
                    );
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    let why = if now.get(id) == Some(started) {
                        format!("{id} did not leave")
                    } else {
                        format!(
                            "{id} left but role {role} has {} live instance(s), not {wanted} \
                             (no replacement)",
                            now.len()
                        )
                    };
                    return Err(CliError::runtime(format!(
                        "{why} within {}s; stopping here: the rest of the role was not drained",
                        self.timeout
                    )));
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        Ok(())
    }
}
