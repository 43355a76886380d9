//! What every command shares: the config folder, loading settings, opening the store, the
//! error type and its exit codes.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use ebbflow::bus::{Bus, Member, Name, Presence};
use ebbflow::codec::Encoding;
use ebbflow::config::QueueSettings;
use ebbflow::store::Blobs;
use ebbflow::store::RetryingStore;
use ebbflow::store::ShardingStore;
use ebbflow::store::{blobs_from_settings, ClaimCheck, QueueFormat};
use ebbflow::store::{BackendKind, LayeredStore, QueueStore, StoreError};
use ebbflow::Settings;

/// A command's failure, with the exit code it maps to.
#[derive(Debug)]
pub enum CliError {
    /// Bad flags or values, a bad setting, an unconfigured queue, a store that cannot serve the
    /// command: exit 2.
    Usage(String),
    /// The service failed or refused, a message was not found, a file could not be written:
    /// exit 1.
    Runtime(String),
}

impl CliError {
    /// 2 for usage and config errors, 1 for runtime errors.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Runtime(_) => 1,
        }
    }

    /// A usage or config error.
    pub fn usage(text: impl fmt::Display) -> Self {
        CliError::Usage(text.to_string())
    }

    /// A runtime error.
    pub fn runtime(text: impl fmt::Display) -> Self {
        CliError::Runtime(text.to_string())
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Usage(text) | CliError::Runtime(text) => f.write_str(text),
        }
    }
}

impl From<StoreError> for CliError {
    /// A store error is a runtime error, except a setup error (a bad connection string or URL),
    /// which is a config error. Store errors carry no secrets (the store redacts them).
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Setup(_) => CliError::usage(e),
            StoreError::QueueNotFound { ref queue } => CliError::runtime(format!(
                "queue {queue} does not exist (a worker creates its queues at start-up while \
                 storage.create_queues is true)"
            )),
            other => CliError::runtime(other),
        }
    }
}

/// The global options every command sees.
#[derive(Debug)]
pub struct Context {
    /// `--config DIR`, when given.
    config_dir: Option<PathBuf>,
}

impl Context {
    /// The context of one run.
    pub fn new(config_dir: Option<PathBuf>) -> Self {
        Self { config_dir }
    }

    /// The config folder this run reads: `--config`, else `EBBFLOW_CONFIG_DIR`, else `config`.
    pub fn config_dir(&self) -> PathBuf {
        self.config_dir
            .clone()
            .or_else(|| std::env::var_os(ebbflow::config::DIR_VAR).map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("config"))
    }

    /// Loads and validates the settings like a worker does; a problem is a config error (exit
    /// 2) naming the key or file.
    pub fn settings(&self) -> Result<Settings, CliError> {
        let dir = self.existing_config_dir()?;
        let env: BTreeMap<String, String> = std::env::vars().collect();
        Settings::load_from(&dir, &env).map_err(CliError::usage)
    }

    /// The worker's settings and the `[deploy]` section (which a worker ignores), both from
    /// the same files and `EBBFLOW__...` variables; a problem is a config error (exit 2).
    pub fn deploy_config(&self) -> Result<ebbflow_cli::deploy::Config, CliError> {
        let dir = self.existing_config_dir()?;
        let env: BTreeMap<String, String> = std::env::vars().collect();
        ebbflow_cli::deploy::Config::load_from(&dir, &env).map_err(CliError::usage)
    }

    /// The config folder; the loader treats missing files as optional, but a folder given by
    /// name (`--config`) must exist.
    fn existing_config_dir(&self) -> Result<PathBuf, CliError> {
        let dir = self.config_dir();
        if self.config_dir.is_some() && !dir.is_dir() {
            return Err(CliError::usage(format!(
                "--config {}: not a folder (give the folder that holds default.toml)",
                dir.display()
            )));
        }
        Ok(dir)
    }

    /// The configured storage with its retry policy and the sharding of sharded queues (a
    /// requeue of a sharded queue's message goes back through its shards); the embedded
    /// backend is refused, since
    /// it lives inside one worker process and a command could never see its queues.
    pub fn store(&self, settings: &Settings) -> Result<Arc<dyn QueueStore>, CliError> {
        // The claim check as a worker has it: large sends go to a blob, references resolve.
        Ok(LayeredStore::wrap(
            self.store_below_claim(settings)?,
            claim_check(settings)?,
        ))
    }

    /// [`Context::store`] without its claim check (retries and shards only): for a command
    /// that puts a layer of its own under the claim check, to see what the service stores.
    pub fn store_below_claim(&self, settings: &Settings) -> Result<Arc<dyn QueueStore>, CliError> {
        let store = ebbflow::store::open(&settings.storage)?;
        if store.kind() == BackendKind::Embedded {
            return Err(CliError::usage(format!(
                "no storage is configured, so the queues are the embedded in-process backend, \
                 which lives inside one worker process and cannot be reached from here: set \
                 storage.connection_string (or storage.queue_endpoint) in {}/default.toml, or \
                 AZURE_STORAGE_CONNECTION_STRING",
                self.config_dir().display()
            )));
        }
        let store = RetryingStore::wrap(store, settings.storage.retry);
        let store = ShardingStore::wrap_sharded(store, settings.shard_counts());
        // The first answer within storage.startup_timeout, as for a worker's start-up.
        let endpoint = ebbflow::store::AzureStore::from_settings(&settings.storage)
            .map(|s| s.endpoint().to_string())
            .unwrap_or_else(|_| "the configured endpoint".to_string());
        Ok(LayeredStore::wrap(
            store,
            crate::first_answer::FirstAnswer::new(settings.storage.startup_timeout, endpoint),
        ))
    }

    /// The claim check's blob container the settings name (none when it is off).
    pub fn blobs(&self, settings: &Settings) -> Result<Option<Blobs>, CliError> {
        Ok(blobs_from_settings(&settings.storage, BackendKind::Azure)?)
    }
}

/// The claim-check layer for `settings`: their blob container and each queue's encoding and
/// compression.
pub fn claim_check(settings: &Settings) -> Result<ClaimCheck, CliError> {
    let blobs = blobs_from_settings(&settings.storage, BackendKind::Azure)?;
    let mut claim = ClaimCheck::new(blobs, &settings.storage.claim_check);
    for (name, q) in &settings.queues {
        let format = QueueFormat {
            encoding: q.encoding,
            compression: q.compression,
        };
        claim = claim.queue(name, format);
    }
    Ok(claim)
}

/// The bus member a command connects as: role `cli`, a generated instance id.
pub fn cli_member() -> Result<Member, CliError> {
    let role = Name::new("cli").map_err(CliError::runtime)?;
    Ok(Member {
        instance: Member::generated_id(&role),
        role,
    })
}

/// The live instances of `role` on `bus`: id to start time (Unix ms; a process that restarted
/// under the same id has a new one).
pub async fn of_role(bus: &Arc<dyn Bus>, role: &Name) -> Result<BTreeMap<String, u64>, CliError> {
    let list: Vec<Presence> = bus.instances().await.map_err(CliError::runtime)?;
    Ok(list
        .into_iter()
        .filter(|p| p.role == role.as_str())
        .map(|p| (p.instance, p.started_at_ms))
        .collect())
}

/// Runs `future` on a fresh tokio runtime.
pub fn block_on<T>(future: impl std::future::Future<Output = T>) -> Result<T, CliError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| CliError::runtime(format!("cannot start the async runtime: {e}")))?;
    Ok(runtime.block_on(future))
}

/// The settings of configured queue `name`, or a config error naming the configured ones.
pub fn configured<'a>(settings: &'a Settings, name: &str) -> Result<&'a QueueSettings, CliError> {
    settings
        .queues
        .get(name)
        .ok_or_else(|| not_configured(settings, name))
}

fn not_configured(settings: &Settings, name: &str) -> CliError {
    let known: Vec<&str> = settings.queues.keys().map(String::as_str).collect();
    let known = if known.is_empty() {
        "none".to_string()
    } else {
        known.join(", ")
    };
    CliError::usage(format!(
        "queue {name} is not configured (no [queues.{name}] section; configured: {known})"
    ))
}
/// A queue `peek` may read and the encoding of its text: a configured queue, or the poison
/// queue of one (poison copies are written in their source queue's encoding).
pub fn readable(settings: &Settings, name: &str) -> Result<Encoding, CliError> {
    if let Some(q) = settings.queues.get(name) {
        return Ok(q.encoding);
    }
    settings
        .queues
        .iter()
        .find(|(source, q)| q.poison_queue_name(source) == name)
        .map(|(_, q)| q.encoding)
        .ok_or_else(|| not_configured(settings, name))
}

/// The encoding to read or write queue `name` in: `found`, what the config says of it, unless
/// it does not know the queue, then `--encoding` (a queue outside the config, for a quick
/// trial). `--encoding` on a queue the config knows must agree with it: text in another
/// encoding is text its workers cannot decode.
pub fn encoding_for(
    found: Result<Encoding, CliError>,
    name: &str,
    flag: Option<Encoding>,
) -> Result<Encoding, CliError> {
    match (found, flag) {
        (Ok(configured), Some(given)) if given != configured => Err(CliError::usage(format!(
            "--encoding {given}: queue {name} is configured with encoding \"{configured}\" \
             (its [queues] section), and its workers decode that; drop --encoding, or change \
             the config"
        ))),
        (Ok(configured), _) => Ok(configured),
        (Err(_), Some(given)) => Ok(given),
        (Err(e), None) => Err(CliError::usage(format!(
            "{e}; for a queue outside the config, say how its text is encoded: --encoding \
             base64 or --encoding none"
        ))),
    }
}

/// `--encoding`'s values, as the config writes them.
pub fn encoding_arg() -> impl clap::builder::TypedValueParser<Value = Encoding> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(["base64", "none"]).map(|v| match v.as_str() {
        "none" => Encoding::None,
        _ => Encoding::Base64,
    })
}

/// Parses a human-readable duration (`30s`, `5m`, `7d`) for a flag.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("{e} (write durations like 30s, 5m, 2h, 7d)"))
}
