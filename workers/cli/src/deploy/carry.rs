//! What the shell said, carried to the pod: `ebbflow deploy` checks the settings with the
//! shell's `EBBFLOW__...` overrides (and `EBBFLOW_ENV`), so the manifests give the container
//! the same ones. Otherwise the manifests would be planned for settings the pod never sees (a
//! ScaledObject promising scale-to-zero to a worker started without its bus). The image is
//! expected to carry the same config folder (the repository's Dockerfile copies `config/`).

use ebbflow::config::{redact, DEPLOY_SECTION, ENV_VAR, SECRET_KEYS};

use super::load::{invalid, Config};
use super::DeployError;

/// Variables the manifests set themselves (from the plan, or from a secret).
const SET_BY_MANIFESTS: &[&str] = &[
    "EBBFLOW__OBSERVABILITY__BIND",
    "EBBFLOW__STORAGE__CONNECTION_STRING",
    "EBBFLOW__STORAGE__QUEUE_ENDPOINT",
    "EBBFLOW__STORAGE__CREDENTIAL",
    "EBBFLOW__STORAGE__MANAGED_IDENTITY_CLIENT_ID",
    "EBBFLOW__BUS__URL",
];

/// Whether a variable may hold a secret (a token, a key, a password, a SAS signature): such a
/// value is never written into a manifest in plain text. Its name is a secret-bearing key's
/// ([`SECRET_KEYS`]) or says so, or its value holds something the runtime's redaction hides (a
/// URL's password, `sig=`, `AccountKey=`).
fn secret_bearing(name: &str, value: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    SECRET_KEYS
        .iter()
        .any(|key| upper == format!("EBBFLOW__{}", key.replace('.', "__").to_ascii_uppercase()))
        || [
            "TOKEN",
            "PASSWORD",
            "SECRET",
            "KEY",
            "CONNECTION_STRING",
            "URL",
        ]
        .iter()
        .any(|word| upper.contains(word))
        || redact(value) != value
}

/// The environment entries the container gets besides the ones the manifests set: every
/// `EBBFLOW__...` override (but `[deploy]`'s own) and `EBBFLOW_ENV`, as they were when the
/// manifests were checked, sorted by name.
///
/// # Errors
/// [`DeployError::Config`] naming a secret-bearing override (a token, a key, a URL with a
/// password) that no manifest can carry in plain text: put it in a secret, or unset it.
pub fn carried(config: &Config) -> Result<Vec<(String, String)>, DeployError> {
    let deploy_prefix = format!("EBBFLOW__{}__", DEPLOY_SECTION.to_ascii_uppercase());
    let mut carried = Vec::new();
    for (name, value) in &config.overrides {
        let ours = name.starts_with("EBBFLOW__") && !name.starts_with(&deploy_prefix);
        if !(ours || name == ENV_VAR) || SET_BY_MANIFESTS.contains(&name.as_str()) {
            continue;
        }
        if secret_bearing(name, value) {
            return Err(invalid(
                name.clone(),
                "<redacted>",
                "is set in this shell, and the manifests never carry a secret in plain text: \
                 put it in the image's config or a secret the pod mounts, or unset it before \
                 running ebbflow deploy",
            )
            .into());
        }
        carried.push((name.clone(), value.clone()));
    }
    Ok(carried)
}

#[cfg(test)]
mod tests {
    use super::secret_bearing;

    #[test]
    fn secret_keys_and_values_holding_secrets_are_never_carried() {
        for (name, value) in [
            (
                "EBBFLOW__STORAGE__CLAIM_CHECK__BLOB_ENDPOINT",
                "https://h/acct",
            ),
            (
                "EBBFLOW__QUEUES__ORDERS__POISON_QUEUE",
                "ftp://u:S3CRET@h/acct",
            ),
            (
                "EBBFLOW__QUEUES__ORDERS__POISON_QUEUE",
                "https://h/a?sv=1&sig=S3CRET",
            ),
            ("EBBFLOW__BUS__SIGNING_KEY", "x"),
        ] {
            assert!(secret_bearing(name, value), "{name}={value}");
        }
        assert!(!secret_bearing("EBBFLOW__QUEUES__ORDERS__BATCH_SIZE", "16"));
    }
}
