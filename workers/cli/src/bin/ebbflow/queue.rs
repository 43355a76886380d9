//! `ebbflow queue create|purge|delete <name>`: a queue's life, for quick trials (any queue
//! name, configured or not).

use crate::context::block_on;
use crate::{CliError, Context};

/// The queue commands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Create a queue if it does not exist (any valid name: 3-63 lowercase letters, digits
    /// and single hyphens).
    Create {
        /// The queue's name.
        name: String,
    },
    /// Delete every message on a queue, visible or not (received ones included); the queue
    /// stays. Cannot be undone: needs --yes.
    Purge {
        /// The queue's name.
        name: String,
        /// Yes, delete every message.
        #[arg(long)]
        yes: bool,
    },
    /// Delete a queue and every message on it. Cannot be undone: needs --yes. The service
    /// keeps the name taken for about 30 seconds: creating it again sooner fails.
    Delete {
        /// The queue's name.
        name: String,
        /// Yes, delete the queue.
        #[arg(long)]
        yes: bool,
    },
}

impl Command {
    /// Runs the command against the configured storage.
    pub fn run(self, ctx: &Context) -> Result<(), CliError> {
        let (name, confirmed) = match &self {
            Command::Create { name } => (name.clone(), true),
            Command::Purge { name, yes } | Command::Delete { name, yes } => (name.clone(), *yes),
        };
        if !confirmed {
            let what = match self {
                Command::Purge { .. } => "purge deletes every message on",
                _ => "delete removes, with every message on it,",
            };
            let verb = if matches!(self, Command::Purge { .. }) {
                "purge"
            } else {
                "delete"
            };
            return Err(CliError::usage(format!(
                "{what} queue {name}, and cannot be undone: run `ebbflow queue {verb} {name} \
                 --yes` to go ahead"
            )));
        }
        let settings = ctx.settings()?;
        let store = ctx.store(&settings)?;
        let queue = store.queue(&name).map_err(CliError::usage)?;
        // A worker listening on the queue stops when it is deleted (exit 3): say so.
        let listened = settings.queues.contains_key(&name)
            || settings
                .queues
                .iter()
                .any(|(source, q)| q.poison_queue_name(source) == name);
        match self {
            Command::Create { .. } => {
                block_on(queue.create_if_missing())??;
                say!("queue {name} is there (created now if it was missing)");
            }
            Command::Purge { .. } => {
                let depth = block_on(async {
                    let depth = queue.approximate_depth().await?;
                    queue.clear().await.map(|()| depth)
                })?
                .map_err(|e| nothing_there(e, &name))?;
                say!("purged queue {name}: about {depth} message(s) deleted; the queue stays");
            }
            Command::Delete { .. } => {
                block_on(queue.delete_queue())?.map_err(|e| nothing_there(e, &name))?;
                say!(
                    "deleted queue {name}; its name stays taken for about 30 s{}",
                    if listened {
                        " (it is in the config: a worker listening on it stops with exit 3 \
                         until it is created again)"
                    } else {
                        ""
                    }
                );
            }
        }
        Ok(())
    }
}

/// A missing queue on purge or delete: nothing to do there, said plainly (exit 1: the queue
/// the user meant is not where they thought).
fn nothing_there(e: ebbflow::store::StoreError, name: &str) -> CliError {
    match e {
        ebbflow::store::StoreError::QueueNotFound { .. } => CliError::runtime(format!(
            "queue {name} does not exist, so there is nothing to remove (check the name, and \
             that the storage settings point at the account you meant)"
        )),
        other => other.into(),
    }
}
