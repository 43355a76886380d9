//! `ebbflow deploy keda|container-apps`: print the manifests that scale replicas of the worker on
//! the configured queues (see `ebbflow_cli::deploy` and docs/src/deploying.md).

use std::path::PathBuf;

use ebbflow_cli::deploy::{render, DeployError, Target};

use crate::{CliError, Context};

/// The engines manifests can be written for.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Kubernetes with KEDA: a Deployment (probes, termination grace over the drain), a
    /// TriggerAuthentication and a ScaledObject with one azure-queue trigger per queue (and a
    /// ServiceAccount for workload identity).
    Keda(Args),
    /// Azure Container Apps: the app's YAML (scale rules, probes, termination grace) for
    /// `az containerapp create|update --yaml`.
    ContainerApps(Args),
}

/// Where the YAML goes.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Write the YAML to this file instead of stdout.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

impl Command {
    /// Renders the manifests from the settings and prints (or writes) them. A setting that
    /// makes them impossible is a config error (exit 2) naming the key.
    pub fn run(self, ctx: &Context) -> Result<(), CliError> {
        let (target, args) = match self {
            Command::Keda(args) => (Target::Keda, args),
            Command::ContainerApps(args) => (Target::ContainerApps, args),
        };
        let mut config = ctx.deploy_config()?;
        // A folder other than the image's ./config rides along with the manifests.
        config.ship_files = !ebbflow_cli::deploy::ship::is_image_folder(&ctx.config_dir());
        if config.deploy.image.is_none() {
            // stderr, so a redirected stdout still holds only the YAML.
            eprintln!(
                "ebbflow deploy: warning: deploy.image is not set; the manifests run the demo \
                 image {}: set [deploy] image (or EBBFLOW__DEPLOY__IMAGE)",
                ebbflow_cli::deploy::DEMO_IMAGE
            );
        }
        let yaml = render(target, &config).map_err(|e| match e {
            DeployError::Yaml(_) => CliError::runtime(e),
            _ => CliError::usage(e),
        })?;
        match args.out {
            Some(path) => std::fs::write(&path, yaml)
                .map_err(|e| CliError::runtime(format!("{}: {e}", path.display())))?,
            None => emit!("{yaml}"),
        }
        Ok(())
    }
}
