//! `ebbflow simulate`: the real listener and scaling policy on the embedded backend, in
//! virtual time, against a load profile; with `--compare`, KEDA alone against ebbflow's tasks
//! under KEDA on the same profile.

use std::path::PathBuf;

use ebbflow_cli::simulate::{compare, comparison_table, csv, simulate, summary_text, svg, Profile};

use crate::{CliError, Context};

/// Runs one queue's scaling rules (from the usual config) against a load profile in virtual
/// time, prints a summary and writes `simulation.csv` and `simulation.svg`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The load profile (TOML), e.g. config/profiles/burst.toml.
    #[arg(long, value_name = "FILE")]
    profile: PathBuf,
    /// The configured queue whose rules to use (default: the first configured queue, else the
    /// built-in defaults).
    #[arg(long, value_name = "NAME")]
    queue: Option<String>,
    /// Where to write simulation.csv and simulation.svg.
    #[arg(long, value_name = "DIR", default_value = "target/simulation")]
    out: PathBuf,
    /// Run the profile (it needs a [replicas] section) twice, with single-task replicas scaled
    /// by KEDA alone and with the queue's rules under KEDA, and print a Markdown table of
    /// replica-minutes, calls per message and pickup latency (no files are written).
    #[arg(long)]
    compare: bool,
}

impl Args {
    /// Simulates, then writes the files and prints the summary.
    pub fn run(self, ctx: &Context) -> Result<(), CliError> {
        let profile = Profile::load(&self.profile).map_err(CliError::usage)?;
        let settings = ctx.settings()?;
        let (name, queue) = match self.queue {
            Some(name) => {
                let q = crate::context::configured(&settings, &name)?;
                (name, q.clone())
            }
            None => settings
                .queues
                .iter()
                .next()
                .map(|(n, q)| (n.clone(), q.clone()))
                .unwrap_or_else(|| ("defaults".into(), Default::default())),
        };
        if self.compare {
            if profile.replicas.is_none() {
                return Err(CliError::usage(format!(
                    "--compare: profile {} has no [replicas] section",
                    self.profile.display()
                )));
            }
            let table = compare(&profile, queue).map_err(CliError::runtime)?;
            emit!("{}", comparison_table(&table));
            return Ok(());
        }
        let (samples, summary) = simulate(&profile, queue).map_err(CliError::runtime)?;
        let out = &self.out;
        std::fs::create_dir_all(out)
            .map_err(|e| CliError::runtime(format!("--out {}: {e}", out.display())))?;
        let title = format!(
            "ebbflow simulate: {} with queue {name}'s rules",
            self.profile.display()
        );
        for (file, body) in [
            ("simulation.csv", csv(&samples)),
            ("simulation.svg", svg(&samples, &title)),
        ] {
            let path = out.join(file);
            std::fs::write(&path, body)
                .map_err(|e| CliError::runtime(format!("{}: {e}", path.display())))?;
        }
        emit!("{}", summary_text(&summary));
        say!(
            "wrote {0}/simulation.csv and {0}/simulation.svg",
            out.display()
        );
        Ok(())
    }
}
