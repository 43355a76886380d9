//! A config folder the image does not carry, shipped with the manifests: `ebbflow deploy
//! --config DIR` plans from DIR's files, so the pod must load the same files, not the image's
//! `/app/config`. On Kubernetes they go into a ConfigMap mounted at [`MOUNT_DIR`], with
//! `EBBFLOW_CONFIG_DIR` pointing there. A ConfigMap is not for secrets: the storage connection
//! string and the bus URL are taken out of the shipped files (the manifests give the pod those
//! from secrets the header names), and any other secret in a file makes `deploy` refuse,
//! naming the file and the key.
//!
//! Also: where a secret the header asks for was set (a variable, or a file), so the header's
//! command says where its value comes from without printing it.

use std::path::Path;

use ebbflow::config::{redact, SECRET_KEYS};

use super::load::{invalid, Config};
use super::DeployError;

/// Where the pod finds the shipped config files.
pub const MOUNT_DIR: &str = "/etc/ebbflow";

/// The manifests' secrets (from the platform's secret store), removed from shipped files.
const FROM_SECRETS: &[&str] = &["storage.connection_string", "bus.url"];

/// The ConfigMap holding the shipped files.
pub fn config_map_name(config: &Config) -> String {
    format!("{}-config", config.deploy.name)
}

/// Whether the folder is the `config/` the image carries (the Dockerfile copies the repository's
/// `config/` to `/app/config`): `dir` is `./config` of the directory `ebbflow deploy` runs in.
pub fn is_image_folder(dir: &Path) -> bool {
    let (Ok(dir), Ok(here)) = (dir.canonicalize(), Path::new("config").canonicalize()) else {
        return false;
    };
    dir == here
}

/// The files the pod gets, as `(file name, text)`: [`Config::files`] without the values the
/// manifests give from secrets. Empty unless [`Config::ship_files`].
///
/// # Errors
/// [`DeployError::Config`] naming a file and key that hold a secret the manifests cannot give
/// the pod (a token, a signing key, a SAS): move it out of the file into a secret.
pub fn shipped_files(config: &Config) -> Result<Vec<(String, String)>, DeployError> {
    if !config.ship_files {
        return Ok(Vec::new());
    }
    let mut shipped = Vec::new();
    for (name, text) in &config.files {
        let path = config.dir.join(name);
        let mut table: toml::Table = text.parse().map_err(|_| {
            invalid(
                path.display().to_string(),
                "(file)",
                "does not parse as TOML",
            )
        })?;
        let mut removed = Vec::new();
        for key in SECRET_KEYS {
            let Some(value) = take(&mut table, key) else {
                continue;
            };
            if FROM_SECRETS.contains(key) {
                removed.push(*key);
                continue;
            }
            let plain = value.as_str().is_some_and(|v| redact(v) == v);
            if key.ends_with("_endpoint") && plain {
                // An endpoint without a SAS is no secret: it stays.
                put(&mut table, key, value);
                continue;
            }
            return Err(secret_in_file(&path, key).into());
        }
        let out = if removed.is_empty() {
            text.clone()
        } else {
            let body = toml::to_string(&table).map_err(|e| DeployError::Yaml(e.to_string()))?;
            format!(
                "# {name} from {}, without {} (the pod gets it from a secret)\n{body}",
                config.dir.display(),
                removed.join(", ")
            )
        };
        if redact(&out) != out {
            // A secret in some other value (an AccountKey, a URL's password, a sig=).
            return Err(secret_in_file(&path, "a value").into());
        }
        shipped.push((name.clone(), out));
    }
    Ok(shipped)
}

/// Container Apps has no ConfigMap to ship a folder in.
pub fn not_in_image(config: &Config) -> ebbflow::config::ConfigError {
    invalid(
        "--config",
        config.dir.display(),
        "is not the config/ folder the image carries, and Container Apps has no ConfigMap to \
         ship it in, so the app would run the image's config instead of the one checked: copy \
         the folder into the image (COPY DIR /app/config) and run `ebbflow deploy \
         container-apps` where it is ./config, or generate Kubernetes manifests (deploy keda)",
    )
}

fn secret_in_file(path: &Path, key: &str) -> ebbflow::config::ConfigError {
    invalid(
        format!("{} ({key})", path.display()),
        "<redacted>",
        format!(
            "holds a secret, and this folder is not in the image, so the manifests ship its \
             files in a ConfigMap, which never carries a secret: move {key} into a secret the \
             pod reads (an EBBFLOW__... variable from a secretKeyRef), or bake the folder into \
             the image and run ebbflow deploy from the folder that holds it as ./config"
        ),
    )
}

/// Removes `a.b.c` from the table, returning its value.
fn take(table: &mut toml::Table, key: &str) -> Option<toml::Value> {
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop()?;
    let mut here = table;
    for part in parts {
        here = here.get_mut(part)?.as_table_mut()?;
    }
    here.remove(last)
}

fn put(table: &mut toml::Table, key: &str, value: toml::Value) {
    let mut parts: Vec<&str> = key.split('.').collect();
    let Some(last) = parts.pop() else { return };
    let mut here = table;
    for part in parts {
        let Some(next) = here.get_mut(part).and_then(toml::Value::as_table_mut) else {
            return;
        };
        here = next;
    }
    here.insert(last.to_string(), value);
}

/// Where the value of the secret `key` comes from, for the header's command: `"$VAR"` when one
/// of `vars` (in precedence order) is set in the shell that ran `deploy`, else the file (last
/// layer first) that sets it, else `"$` + `fallback` + `"`. Never the value.
pub fn secret_source(config: &Config, key: &str, vars: &[&str], fallback: &str) -> String {
    let set = |var: &str| {
        config
            .overrides
            .get(var)
            .is_some_and(|v| !v.trim().is_empty())
            || config.secret_vars.contains(var)
    };
    if let Some(var) = vars.iter().take(1).find(|v| set(v)) {
        return format!("\"${var}\"");
    }
    for (name, text) in config.files.iter().rev() {
        let Ok(mut table) = text.parse::<toml::Table>() else {
            continue;
        };
        if take(&mut table, key).is_some() {
            return format!("'<the {key} in {}>'", config.dir.join(name).display());
        }
    }
    if let Some(var) = vars.iter().skip(1).find(|v| set(v)) {
        return format!("\"${var}\"");
    }
    format!("\"${fallback}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(files: &[(&str, &str)]) -> Config {
        Config {
            files: files
                .iter()
                .map(|(n, t)| (n.to_string(), t.to_string()))
                .collect(),
            ship_files: true,
            ..Config::default()
        }
    }

    #[test]
    fn secrets_the_manifests_supply_are_taken_out_and_others_refused() {
        let c = config(&[(
            "default.toml",
            "[bus]\nkind = \"redis\"\nurl = \"redis://:pw-S3CRET@h:6379\"\n[queues.orders]\n",
        )]);
        let files = shipped_files(&c).unwrap();
        assert!(!files[0].1.contains("S3CRET"), "{}", files[0].1);
        assert!(files[0].1.contains("kind = \"redis\""), "{}", files[0].1);
        let c = config(&[("default.toml", "[bus]\nsigning_key = \"k-S3CRET\"\n")]);
        let e = shipped_files(&c).unwrap_err().to_string();
        assert!(
            e.contains("bus.signing_key") && !e.contains("S3CRET"),
            "{e}"
        );
        let c = config(&[(
            "default.toml",
            "[queues.orders]\npoison_queue = \"x\"\n[storage]\nqueue_endpoint = \"https://a.queue.core.windows.net\"\n",
        )]);
        assert_eq!(shipped_files(&c).unwrap()[0].1, c.files[0].1);
    }

    #[test]
    fn the_source_of_a_secret_is_the_variable_or_the_file() {
        let mut c = config(&[("default.toml", "[bus]\nurl = \"redis://h\"\n")]);
        assert!(secret_source(&c, "bus.url", &["EBBFLOW__BUS__URL"], "X").contains("default.toml"));
        c.overrides
            .insert("EBBFLOW__BUS__URL".into(), "redis://h2".into());
        assert_eq!(
            secret_source(&c, "bus.url", &["EBBFLOW__BUS__URL"], "X"),
            "\"$EBBFLOW__BUS__URL\""
        );
    }
}
