//! Deployment manifests generated from the settings: what `ebbflow deploy keda` and
//! `ebbflow deploy container-apps` print.
//!
//! The worker's own scaling (dequeue tasks per queue, inside one replica) and the engine's
//! (replicas, KEDA on Kubernetes or Container Apps) share the work: a replica adds tasks until its
//! rules are at their top, and only past that does the engine add a replica. So each queue's
//! `queueLength` is one replica's real capacity under that queue's rules: the messages it holds
//! in flight (`concurrency`, which KEDA's default strategy counts as queue length) plus the
//! backlog at which its task scaling is at `max_tasks` ([`capacity::queue_length`]).
//!
//! Scale-in does not hurt: SIGTERM starts the worker's drain (stop receiving, finish or release
//! what runs), and the manifests give it `terminationGracePeriodSeconds` longer than
//! `worker.drain_timeout` plus the release grace, and (on KEDA) an HPA scale-down pace that
//! removes at most half the replicas per drain period.
//!
//! Files: [`settings`] (the `[deploy]` section), `load` (reading it from the worker's config
//! sources, [`Config`]), [`capacity`] (one replica's capacity per queue, also for the
//! simulator), `plan` (the numbers), `auth` (secret or identity, and the cloud), `keda` and
//! `container_apps` (the documents), [`ship`] (a config folder the image lacks, in a ConfigMap),
//! `yaml` (the writer).

mod auth;
pub mod capacity;
mod carry;
mod container_apps;
mod keda;
mod load;
pub mod plan;
pub mod settings;
pub mod ship;
mod yaml;

pub use carry::carried;
pub use load::Config;
pub use settings::{DeployAuth, DeploySettings, ImageRef, ReplicaLimit, ResourceName, DEMO_IMAGE};

/// The ops endpoint's port in the image and the manifests (`/healthz`, `/readyz`, `/metrics`):
/// the Dockerfile exposes it and sets `EBBFLOW__OBSERVABILITY__BIND=0.0.0.0:9464`.
pub const OPS_PORT: u16 = 9464;

/// The worker container's name in the generated manifests.
pub const CONTAINER_NAME: &str = "worker";

/// Where the ops endpoint listens inside a container: every interface, so the kubelet's probes
/// reach it.
pub fn ops_bind() -> String {
    format!("0.0.0.0:{OPS_PORT}")
}

/// Which engine to write manifests for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Kubernetes with KEDA: ServiceAccount (workload identity), Deployment,
    /// TriggerAuthentication, ScaledObject.
    Keda,
    /// Azure Container Apps: the app's YAML for `az containerapp create|update --yaml`.
    ContainerApps,
}

/// Manifests could not be generated.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// A setting makes the manifests impossible (the error names it).
    #[error("{0}")]
    Config(#[from] ebbflow::config::ConfigError),
    /// Nothing to scale on.
    #[error("no queues configured: add a [queues.<name>] section")]
    NoQueues,
    /// The YAML writer failed.
    #[error("writing YAML: {0}")]
    Yaml(String),
}

/// The YAML `ebbflow deploy <target>` prints for these settings: a comment header saying what to
/// create first, then the documents.
pub fn render(target: Target, config: &Config) -> Result<String, DeployError> {
    let plan = plan::plan(config)?;
    // Refuses a secret the shell set that no manifest can carry, before writing anything.
    carried(config)?;
    // And a secret in a file the manifests would ship.
    let shipped = ship::shipped_files(config)?;
    let name = config.deploy.name.as_str();
    let storage_secret = ship::secret_source(
        config,
        "storage.connection_string",
        &[
            "EBBFLOW__STORAGE__CONNECTION_STRING",
            "AZURE_STORAGE_CONNECTION_STRING",
        ],
        "AZURE_STORAGE_CONNECTION_STRING",
    );
    let bus_secret = ship::secret_source(
        config,
        "bus.url",
        &["EBBFLOW__BUS__URL"],
        "EBBFLOW__BUS__URL",
    );
    let (command, docs, needs) = match target {
        Target::Keda => (
            "keda",
            keda::documents(config, &plan),
            match &plan.auth {
                plan::AuthPlan::Secret => format!(
                    "# Needs KEDA, and the connection string in a secret:\n#   kubectl create \
                     secret generic {} --from-literal={}={storage_secret}\n",
                    keda::secret_name(config),
                    keda::SECRET_KEY
                ),
                plan::AuthPlan::Identity { .. } => format!(
                    "# Needs KEDA with workload identity: a federated credential for the \
                     service account {name} with Storage Queue Data Contributor\n# on the \
                     account, and KEDA's operator identity with Storage Queue Data Reader.\n"
                ),
            },
        ),
        Target::ContainerApps => (
            "container-apps",
            {
                if config.ship_files {
                    return Err(ship::not_in_image(config).into());
                }
                container_apps::check_name(config)?;
                container_apps::check_identity(config, &plan)?;
                vec![container_apps::document(config, &plan)]
            },
            match &plan.auth {
                plan::AuthPlan::Secret => format!(
                    "# Needs the app secret {0}:\n#   az containerapp create -n {name} -g GROUP \
                     --environment ENV --image IMAGE --secrets {0}={storage_secret}\n\
                     #   az containerapp update -n {name} -g GROUP --yaml THIS_FILE\n",
                    container_apps::SECRET_NAME
                ),
                plan::AuthPlan::Identity { .. } => format!(
                    "# Needs the app's identity to hold Storage Queue Data Contributor on the \
                     account:\n#   az containerapp create -n {name} -g GROUP --environment \
                     ENV --yaml THIS_FILE\n"
                ),
            },
        ),
    };
    let bus = match (config.settings.bus.is_shared(), target) {
        (false, _) => String::new(),
        (true, Target::Keda) => format!(
            "# and the bus's Redis URL in a secret:\n#   kubectl create secret generic {} \
             --from-literal={}={bus_secret}\n",
            keda::bus_secret_name(config),
            keda::BUS_SECRET_KEY
        ),
        (true, Target::ContainerApps) => format!(
            "# and the app secret {} with the bus's Redis URL (--secrets {}={bus_secret}).\n",
            container_apps::BUS_SECRET_NAME,
            container_apps::BUS_SECRET_NAME
        ),
    };
    let folder = if !config.ship_files {
        String::new()
    } else {
        format!(
            "# The config folder {} is not in the image: its files ride in the ConfigMap {} \
             (mounted at {}, EBBFLOW_CONFIG_DIR).\n",
            config.dir.display(),
            ship::config_map_name(config),
            ship::MOUNT_DIR
        )
    };
    let mut docs = docs;
    if config.ship_files && target == Target::Keda {
        docs.insert(0, keda::config_map(config, &shipped));
    }
    let body = yaml::to_yaml(&docs).map_err(DeployError::Yaml)?;
    let image = match &config.deploy.image {
        Some(_) => String::new(),
        None => format!(
            "# WARNING: deploy.image is not set, so this runs the demo image {DEMO_IMAGE}; set \
             [deploy] image = \"registry/worker:tag\" (or EBBFLOW__DEPLOY__IMAGE)\n"
        ),
    };
    Ok(format!(
        "{image}# Generated by `ebbflow deploy {command}` from the ebbflow config; regenerate after \
         changing it.\n{needs}{bus}{folder}{body}"
    ))
}
