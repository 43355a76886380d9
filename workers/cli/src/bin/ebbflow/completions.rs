//! `ebbflow completions <shell>`: a shell completion script on stdout.

use clap::CommandFactory;

use crate::{Cli, CliError};

/// Prints a completion script, e.g. `ebbflow completions bash > ~/.local/share/bash-completion/completions/ebbflow`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The shell to complete for.
    shell: clap_complete::Shell,
}

impl Args {
    /// Writes the script to stdout.
    pub fn run(self) -> Result<(), CliError> {
        let mut command = Cli::command();
        let mut script = Vec::new();
        clap_complete::generate(self.shell, &mut command, "ebbflow", &mut script);
        emit!("{}", String::from_utf8_lossy(&script));
        Ok(())
    }
}
