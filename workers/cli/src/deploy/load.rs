//! What manifests are written from: the worker's settings, loaded by the runtime exactly as a
//! worker loads them, and the `[deploy]` section, which the runtime ignores and this crate reads
//! from the same sources (`default.toml`, `{EBBFLOW_ENV}.toml`, `EBBFLOW__DEPLOY__...`).

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use ebbflow::checks::InvalidSetting;
use ebbflow::config::{ConfigError, DEPLOY_SECTION, ENV_VAR};
use ebbflow::Settings;
use serde::Deserialize;

use super::DeploySettings;

/// The inputs of `ebbflow deploy`: a worker's settings and the `[deploy]` section.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// The worker's settings (queues, storage, bus, drain timeout), as a worker loads them.
    pub settings: Settings,
    /// The `[deploy]` section: names, image, replica bounds, authentication.
    pub deploy: DeploySettings,
    /// The environment variables the settings were checked with (`EBBFLOW__...` and
    /// `EBBFLOW_ENV`): the manifests carry them to the pod ([`super::carried`]).
    pub overrides: std::collections::BTreeMap<String, String>,
    /// The config files the settings were read from, in load order (`default.toml`, then the
    /// `{EBBFLOW_ENV}.toml` when it exists), as `(file name, text)`.
    pub files: Vec<(String, String)>,
    /// The folder they were read from (named in the manifests' header).
    pub dir: std::path::PathBuf,
    /// Whether the image lacks this folder, so the manifests ship [`Config::files`] to the
    /// pod (Kubernetes: a ConfigMap mounted at [`super::ship::MOUNT_DIR`]; Container Apps
    /// refuses). `false` from [`Config::load_from`]: the command sets it when the folder is
    /// not the `config/` the image carries.
    pub ship_files: bool,
    /// The secret-holding variables outside `EBBFLOW__` that were set, not empty
    /// (`AZURE_STORAGE_CONNECTION_STRING`): names only, for the header.
    pub secret_vars: std::collections::BTreeSet<String>,
}

impl Config {
    /// Loads and validates both from the config folder `dir` and the environment `env` (a map,
    /// so tests need not touch the process environment): the worker's settings through
    /// [`Settings::load_from`], then `[deploy]` from the same files and variables.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the key (or file) at fault, from either part.
    pub fn load_from(dir: &Path, env: &BTreeMap<String, String>) -> Result<Self, ConfigError> {
        let settings = Settings::load_from(dir, env)?;
        let deploy = load_deploy(dir, env)?;
        let overrides = env
            .iter()
            .filter(|(k, _)| k.starts_with("EBBFLOW__") || *k == ENV_VAR)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut names = vec!["default.toml".to_string()];
        if let Some(name) = env.get(ENV_VAR).filter(|n| !n.is_empty()) {
            names.push(format!("{name}.toml"));
        }
        let mut files = Vec::new();
        for name in names {
            let path = dir.join(&name);
            if path.is_file() {
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| ConfigError::Load(format!("{}: {e}", path.display())))?;
                files.push((name, text));
            }
        }
        Ok(Self {
            settings,
            deploy,
            overrides,
            files,
            dir: dir.to_path_buf(),
            ship_files: false,
            secret_vars: env
                .iter()
                .filter(|(k, v)| *k == "AZURE_STORAGE_CONNECTION_STRING" && !v.trim().is_empty())
                .map(|(k, _)| k.clone())
                .collect(),
        })
    }
}

/// The whole config, read only for its `[deploy]` section (the runtime checks the rest).
#[derive(Deserialize)]
struct Sections {
    #[serde(default)]
    deploy: DeploySettings,
}

/// `[deploy]` from the layers a worker reads, lowest first: `default.toml`, the optional
/// `{EBBFLOW_ENV}.toml`, then `EBBFLOW__DEPLOY__<KEY>` variables; validated.
fn load_deploy(dir: &Path, env: &BTreeMap<String, String>) -> Result<DeploySettings, ConfigError> {
    let mut builder = config::Config::builder()
        .add_source(config::File::from(dir.join("default.toml")).required(false));
    if let Some(name) = env.get(ENV_VAR).filter(|n| !n.is_empty()) {
        builder = builder
            .add_source(config::File::from(dir.join(format!("{name}.toml"))).required(false));
    }
    let prefix = format!("EBBFLOW__{}__", DEPLOY_SECTION.to_ascii_uppercase());
    let overrides: config::Map<String, String> = env
        .iter()
        .filter(|(k, _)| k.starts_with(&prefix))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    builder = builder.add_source(
        config::Environment::with_prefix("EBBFLOW")
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .source(Some(overrides)),
    );
    let load_error = |e: config::ConfigError| ConfigError::Load(explain(&e.to_string()));
    let sections: Sections = builder
        .build()
        .map_err(load_error)?
        .try_deserialize()
        .map_err(load_error)?;
    sections.deploy.validate()?;
    Ok(sections.deploy)
}

/// The loader's message, secrets redacted, with the fix for an unknown choice: the `config`
/// crate says "enum DeployAuth does not have variant constructor key for key `deploy.auth`".
fn explain(message: &str) -> String {
    let message = ebbflow::config::redact(message);
    if let Some(rest) = message
        .split("enum DeployAuth does not have variant constructor ")
        .nth(1)
    {
        let given = rest.split(" for key").next().unwrap_or(rest);
        return format!(
            "deploy.auth = \"{given}\": must be one of `secret` (a connection string in a \
             secret) or `identity` (Entra ID: workload or managed identity)"
        );
    }
    message
}

/// `key` holds `value`, which breaks `rule`: the runtime's error, so a `[deploy]` value is
/// reported like any other setting.
pub(crate) fn invalid(
    key: impl Into<String>,
    value: impl fmt::Display,
    rule: impl Into<String>,
) -> ConfigError {
    InvalidSetting::new(key, value, rule).into()
}
