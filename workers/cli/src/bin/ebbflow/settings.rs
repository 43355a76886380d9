//! `ebbflow config check`: load and validate the config like a worker does (plus the `[deploy]`
//! section, which only this command line reads), and print the effective settings with secrets
//! redacted.

use ebbflow::Settings;
use ebbflow_cli::deploy::DeploySettings;
use serde::Serialize;

use crate::{CliError, Context};

/// What `config check` prints: the worker's settings and the `[deploy]` section, one document.
#[derive(Serialize)]
struct Effective<'a> {
    #[serde(flatten)]
    settings: &'a Settings,
    deploy: &'a DeploySettings,
}

/// The config commands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Load and validate the config like a worker does (files, EBBFLOW__... overrides,
    /// AZURE_STORAGE_CONNECTION_STRING), plus the [deploy] section `ebbflow deploy` reads, and
    /// print the effective settings, secrets redacted; exit 2 naming the key when a value is
    /// wrong.
    Check {
        /// Print JSON instead of TOML.
        #[arg(long)]
        json: bool,
    },
}

impl Command {
    /// Loads, validates and prints.
    pub fn run(self, ctx: &Context) -> Result<(), CliError> {
        let Command::Check { json } = self;
        let config = ctx.deploy_config()?;
        let settings = &config.settings;
        // Opening the store parses the connection string or endpoint (no network call), so a
        // malformed one is reported here rather than at a worker's start.
        ebbflow::store::open(&settings.storage)?;
        // A worker refuses to start without queues; so does the check (a config folder that
        // is misnamed or missing loads as nothing but defaults).
        if settings.queues.is_empty() {
            let dir = ctx.config_dir();
            return Err(CliError::usage(format!(
                "config: queues: no queues configured in {}{}: a worker needs at least one \
                 [queues.<name>] section (or EBBFLOW__QUEUES__<NAME>__... overrides)",
                dir.join("default.toml").display(),
                if dir.is_dir() {
                    ""
                } else {
                    " (that folder does not exist)"
                }
            )));
        }
        // The settings types serialize secrets redacted (`ebbflow::config::redact`).
        let effective = Effective {
            settings,
            deploy: &config.deploy,
        };
        let text = if json {
            serde_json::to_string_pretty(&effective).map_err(CliError::runtime)? + "\n"
        } else {
            let body = toml::to_string(&effective).map_err(CliError::runtime)?;
            format!(
                "# ebbflow config check: {} is valid. Effective settings, secrets redacted:\n\n{body}",
                ctx.config_dir().display()
            )
        };
        emit!("{text}");
        Ok(())
    }
}
