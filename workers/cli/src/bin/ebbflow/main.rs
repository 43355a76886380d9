//! The `ebbflow` command line: drive and inspect the queues a worker listens on.
//!
//! Run with: `cargo ebbflow --help` (an alias for
//! `cargo run -p ebbflow-cli --bin ebbflow -- --help`), or `ebbflow --help` after
//! `cargo install --path workers/cli`.
//!
//! Every command reads the usual config (`config/` files, or the folder `--config DIR` names,
//! plus `EBBFLOW__...` overrides) and works on the storage it configures. Exit codes: 0 on
//! success, 1 on a runtime error (the service failed or refused, a message was not found), 2 on
//! a usage or config error (bad flags, a bad setting, an unconfigured queue).
//!
//! Adding a command: a new file with a `clap::Args` (or `Subcommand`) type and a
//! `run(self, &Context) -> Result<(), CliError>`, one variant in [`Command`] and one arm in
//! [`Command::run`].

/// `println!` that never panics: when stdout is closed (`ebbflow stats | head -1`) the rest of
/// the report is dropped, and the command still finishes its work and exits with its own code.
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::write_out(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` that never panics (see [`say!`]).
macro_rules! emit {
    ($($arg:tt)*) => {
        $crate::write_out(format_args!($($arg)*))
    };
}

mod blobs;
mod bus;
mod cell;
mod completions;
mod context;
mod deploy;
mod drain;
mod enqueue;
mod first_answer;
mod instances;
mod jobs;
mod notify;
mod peek;
mod poison;
mod progress;
mod push;
mod queue;
mod reload;
mod settings;
mod simulate;
mod stats;
mod top;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use context::{CliError, Context};

/// Drive and inspect the Azure Storage queues an ebbflow worker listens on.
#[derive(Debug, Parser)]
#[command(name = "ebbflow", version, propagate_version = true)]
pub struct Cli {
    /// The config folder (`default.toml`, `{EBBFLOW_ENV}.toml`); for this run it replaces
    /// EBBFLOW_CONFIG_DIR (default `config`).
    #[arg(long, global = true, value_name = "DIR")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

/// The commands, one file each.
#[derive(Debug, Subcommand)]
enum Command {
    /// Send test messages to a configured queue, in its encoding, then send the push trigger
    /// the config declares so an idle worker wakes up.
    Enqueue(enqueue::Args),
    /// Show up to 32 visible messages of a queue without receiving them.
    Peek(peek::Args),
    /// Create, purge or delete a queue (any name; purge and delete need --yes).
    #[command(subcommand)]
    Queue(queue::Command),
    /// Approximate depth of each configured queue and its poison queue.
    Stats(stats::Args),
    /// A live view of one worker's queues: depth, tasks, rates (its ops endpoint's JSON).
    Top(top::Args),
    /// List, show and requeue poison messages.
    #[command(subcommand)]
    Poison(poison::Command),
    /// The claim check's payload blobs: find and remove orphans.
    #[command(subcommand)]
    Blobs(blobs::Command),
    /// Run the listener and scaling policy in virtual time against a load profile.
    Simulate(simulate::Args),
    /// Check the config.
    #[command(subcommand)]
    Config(settings::Command),
    /// Print KEDA or Container Apps manifests that scale replicas on the configured queues.
    #[command(subcommand)]
    Deploy(deploy::Command),
    /// Announce work on a queue (bus work notice, HTTP trigger) without sending a message.
    Notify(notify::Args),
    /// List the live worker instances on the bus and their last presence pulse.
    Instances(instances::Args),
    /// Drain every instance of a role (all at once or one at a time): each stops taking work,
    /// finishes what it holds and exits 0.
    Drain(drain::Args),
    /// Make every live instance of a role reload its scaling rules from its config files (as
    /// SIGHUP does), and show what each applied.
    Reload(reload::Args),
    /// List running and recent long jobs (heartbeat progress records) on the bus.
    Jobs(jobs::Args),
    /// The bus's own administration: `bus poison list|show|requeue`.
    #[command(subcommand)]
    Bus(bus::Command),
    /// Print a shell completion script.
    Completions(completions::Args),
}

impl Command {
    fn run(self, ctx: &Context) -> Result<(), CliError> {
        match self {
            Command::Enqueue(args) => args.run(ctx),
            Command::Peek(args) => args.run(ctx),
            Command::Queue(command) => command.run(ctx),
            Command::Stats(args) => args.run(ctx),
            Command::Top(args) => args.run(ctx),
            Command::Poison(command) => command.run(ctx),
            Command::Blobs(command) => command.run(ctx),
            Command::Simulate(args) => args.run(ctx),
            Command::Config(command) => command.run(ctx),
            Command::Deploy(command) => command.run(ctx),
            Command::Notify(args) => args.run(ctx),
            Command::Instances(args) => args.run(ctx),
            Command::Jobs(args) => args.run(ctx),
            Command::Drain(args) => args.run(ctx),
            Command::Reload(args) => args.run(ctx),
            Command::Bus(command) => command.run(ctx),
            Command::Completions(args) => args.run(),
        }
    }
}

fn main() -> ExitCode {
    // Usage errors exit 2, `--help` and `--version` 0 (clap's codes).
    let cli = Cli::parse();
    let ctx = Context::new(cli.config);
    let ran = init_logs(&ctx).and_then(|()| cli.command.run(&ctx));
    // Spans still buffered for the trace exporter (`enqueue`'s sends) go before the exit.
    ebbflow::observability::traces::flush();
    match ran {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            use std::io::Write;
            let _ = writeln!(std::io::stderr().lock(), "ebbflow: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Writes to stdout, ignoring a closed pipe or any other write error.
pub fn write_out(text: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_fmt(text);
}

/// The library's log setup (one for every binary): warnings (a retried call, say) to stderr in
/// `[log] format` or `EBBFLOW_LOG_FORMAT`, filtered by `RUST_LOG`; stdout stays the report. A
/// config that does not load leaves the format text; the command then reports the config error.
fn init_logs(ctx: &Context) -> Result<(), CliError> {
    use ebbflow::observability::logging;
    let configured = ctx.settings().map(|s| s.log.format).unwrap_or_default();
    let format = logging::format_from_env(configured).map_err(CliError::usage)?;
    let traces = ctx
        .settings()
        .map(|s| s.observability.traces.clone())
        .unwrap_or_default();
    logging::init_with_traces(format, "warn", &traces).map_err(CliError::usage)?;
    Ok(())
}
