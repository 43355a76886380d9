//! Reading the layers (files, then environment) into [`Settings`], and turning the loader's
//! errors into ones that say what to write instead: an example for a duration, the allowed
//! values for a choice, the folder and files that were read.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::IntoDeserializer;
use serde::Deserialize;

use super::{Settings, CONNECTION_STRING_VAR, DEPLOY_SECTION, ENV_VAR};
use crate::checks::ConfigError;
use crate::secret::redact;

/// Where a [`Settings`] was read from, for errors that name what was looked at ("no queues
/// configured in config/default.toml (missing)").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    /// The config folder.
    pub dir: Option<PathBuf>,
    /// The files looked for, in order, and whether each existed.
    pub files: Vec<(PathBuf, bool)>,
    /// How many `EBBFLOW__...` environment variables applied.
    pub env_overrides: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(dir) = &self.dir else {
            return f.write_str("settings built in code");
        };
        let files: Vec<String> = self
            .files
            .iter()
            .map(|(file, found)| {
                let missing = if *found { "" } else { " (missing)" };
                format!("{}{missing}", file.display())
            })
            .collect();
        write!(f, "read {}", files.join(", "))?;
        if !dir.is_dir() {
            write!(
                f,
                " (the folder {} does not exist; EBBFLOW_CONFIG_DIR moves it)",
                dir.display()
            )?;
        }
        write!(f, " and {} EBBFLOW__ variable(s)", self.env_overrides)
    }
}

pub(super) fn load_from(
    dir: &Path,
    env: &BTreeMap<String, String>,
) -> Result<Settings, ConfigError> {
    let mut files = vec![dir.join("default.toml")];
    if let Some(name) = env.get(ENV_VAR).filter(|n| !n.is_empty()) {
        files.push(dir.join(format!("{name}.toml")));
    }
    let mut builder = config::Config::builder();
    for file in &files {
        builder = builder.add_source(config::File::from(file.as_path()).required(false));
    }
    let overrides: config::Map<String, String> = env
        .iter()
        .filter(|(k, _)| k.starts_with("EBBFLOW__"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let origin = Origin {
        dir: Some(dir.to_path_buf()),
        files: files.iter().map(|f| (f.clone(), f.is_file())).collect(),
        env_overrides: overrides.len(),
    };
    builder = builder.add_source(
        config::Environment::with_prefix("EBBFLOW")
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .source(Some(overrides)),
    );
    let loaded = builder
        .build()
        .map_err(|e| ConfigError::Load(explain(&describe(&e))))?;
    let mut table: config::Map<String, config::Value> =
        loaded.try_deserialize().map_err(load_error)?;
    // `[deploy]` (and `EBBFLOW__DEPLOY__...`) is the command line's section (manifest
    // generation, in the ebbflow-cli crate), so one config folder serves both: a worker
    // ignores it, unchecked.
    table.remove(DEPLOY_SECTION);
    let mut settings =
        Settings::deserialize(config::Value::new(None, table)).map_err(load_error)?;
    settings.origin = origin;
    let storage = &mut settings.storage;
    if storage.connection_string.is_none() && storage.queue_endpoint.is_none() {
        match env.get(CONNECTION_STRING_VAR) {
            // Said, but said nothing: never fall back to the embedded store silently.
            Some(v) if v.trim().is_empty() => {
                return Err(ConfigError::invalid(
                    CONNECTION_STRING_VAR,
                    "\"\"",
                    "is set but empty: set it to a connection string (UseDevelopmentStorage=true \
                     for Azurite), or unset it to run on the embedded in-process store",
                ))
            }
            Some(v) => storage.connection_string = Some(v.as_str().into()),
            None => {}
        }
    }
    settings.apply_heartbeat_defaults();
    settings.validate()?;
    Ok(settings)
}

/// A deserializing error as a [`ConfigError`]: a value a settings type refused
/// ([`InvalidValue`](crate::checks::InvalidValue), `33: must be 1..=32`) found at a key becomes
/// `queues.orders.batch_size = 33: must be 1..=32`; anything else is the loader's message with
/// the fix appended ([`explain`]), secrets redacted.
fn load_error(e: config::ConfigError) -> ConfigError {
    if let config::ConfigError::At {
        error,
        key: Some(key),
        ..
    } = &e
    {
        if let config::ConfigError::Message(text) = error.as_ref() {
            if let Some(refused) = crate::checks::InvalidValue::parse(text) {
                // A map keyed by queue names refuses a key: name the section it opens.
                let key = match key.as_str() {
                    map @ ("queues" | "outputs") => format!("{map}.{}", refused.value),
                    key => key.to_string(),
                };
                return ConfigError::invalid(key, redact(&refused.value), refused.rule);
            }
        }
    }
    ConfigError::Load(explain(&describe(&e)))
}

/// The loader's error as text, secrets redacted. A file that does not parse is described by its
/// position and the key found there, never by its text: the parser quotes the offending line,
/// which may hold a token, a key or a password (an unterminated string, a backslash in a Redis
/// URL's password).
fn describe(e: &config::ConfigError) -> String {
    let config::ConfigError::FileParse { uri, cause } = e else {
        return redact(&e.to_string());
    };
    let text = cause.to_string();
    let mut lines = text.lines();
    let position = lines
        .next()
        .and_then(|first| first.split_once(" at line "))
        .and_then(|(_, at)| {
            let (line, column) = at.split_once(", column ")?;
            Some((
                line.trim().parse::<usize>().ok()?,
                column.trim().to_string(),
            ))
        });
    let Some((line, column)) = position else {
        return redact(&e.to_string());
    };
    let why: Vec<&str> = lines
        .map(str::trim)
        .filter(|l| !l.is_empty() && !is_excerpt(l))
        .collect();
    let file = uri.as_deref().unwrap_or("a config file");
    let key = uri
        .as_deref()
        .and_then(|path| std::fs::read_to_string(path).ok())
        .and_then(|source| key_at(&source, line))
        .map(|key| format!(" (key `{key}`)"))
        .unwrap_or_default();
    redact(&format!(
        "{file} does not parse as TOML at line {line}, column {column}{key}: {} (the line is \
         not shown: it may hold a secret)",
        why.join("; ")
    ))
}

/// A parser's excerpt line: `3 | text` or the caret line `  |     ^`.
fn is_excerpt(line: &str) -> bool {
    let rest = line
        .trim_start_matches(|c: char| c.is_ascii_digit())
        .trim_start();
    rest.starts_with('|')
}

/// The dotted key written at (or, on a continuation line, last before) line `line` (1-based)
/// of a TOML text, with the table it is in: `triggers.http.token`.
fn key_at(source: &str, line: usize) -> Option<String> {
    let mut table = String::new();
    let mut key = None;
    for text in source.lines().take(line) {
        let text = text.trim();
        if let Some(header) = text.strip_prefix('[') {
            let name = header
                .trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or_default();
            table = name.trim().to_string();
            key = None;
        } else if let Some((name, _)) = text.split_once('=') {
            let name = name.trim();
            let bare = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '"' | ' '));
            if bare {
                key = Some(name.replace(['"', ' '], ""));
            }
        }
    }
    let key = key?;
    Some(if table.is_empty() {
        key
    } else {
        format!("{table}.{key}")
    })
}

/// The loader's message with the fix appended: an example for a duration, the allowed values
/// for a choice.
fn explain(message: &str) -> String {
    if message.contains("expected a duration") {
        return format!(
            "{message}: write a duration as a string with a unit, e.g. \"30s\", \"500ms\", \
             \"5m\", \"1h\""
        );
    }
    if message.contains("invalid socket address syntax") {
        return format!(
            "{message}: write an IP address and a port, e.g. \"127.0.0.1:7075\" (this host \
             only) or \"0.0.0.0:7075\" (every interface); a host name such as localhost is not \
             accepted"
        );
    }
    // The `config` crate's words for an unknown choice: "enum Encoding does not have variant
    // constructor base-64 for key `queues.orders.encoding`".
    if let Some(rest) = message.split("does not have variant constructor ").nth(1) {
        let key = rest.split('`').nth(1).unwrap_or_default();
        let field = key.rsplit('.').next().unwrap_or_default();
        if let Some(allowed) = allowed_values(field) {
            let given = rest.split(" for key").next().unwrap_or(rest);
            return format!("{key} = \"{given}\": must be one of {allowed}");
        }
    }
    message.to_string()
}

/// The values a choice-valued key takes, from the types themselves (serde's own list), by the
/// key's last segment.
fn allowed_values(field: &str) -> Option<String> {
    fn of<'de, T: Deserialize<'de>>() -> Option<String> {
        // No value is called this, so serde answers with every variant it knows.
        let probe: serde::de::value::StrDeserializer<'_, serde::de::value::Error> =
            "\u{1}".into_deserializer();
        let e = T::deserialize(probe).err()?.to_string();
        let allowed = e.split("expected ").nth(1)?;
        // serde says "one of `a`, `b`, `c`" (or "`a` or `b`"); the caller says "one of".
        Some(allowed.trim_start_matches("one of ").to_string())
    }
    match field {
        "encoding" => of::<crate::codec::Encoding>(),
        "format" => of::<super::LogFormat>(),
        "kind" => of::<crate::bus::BusKind>(),
        "credential" => of::<crate::store::settings::CredentialKind>(),
        "reach" => of::<crate::bus::Reach>(),
        "publish" => of::<crate::bus::PublishMode>(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(files: &[(&str, &str)], env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let dir = std::env::temp_dir().join(format!("ebbflow-load-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, text) in files {
            std::fs::write(dir.join(name), text).unwrap();
        }
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let result = load_from(&dir, &env);
        std::fs::remove_dir_all(&dir).unwrap();
        result
    }

    #[test]
    fn a_duration_without_a_unit_gets_an_example() {
        let e = load(
            &[("default.toml", "[queues.orders]\nvisibility_timeout = 30\n")],
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("queues.orders.visibility_timeout"), "{e}");
        assert!(e.contains("e.g. \"30s\""), "{e}");
    }

    #[test]
    fn an_unknown_choice_lists_the_allowed_values() {
        let e = load(
            &[("default.toml", "[queues.orders]\nencoding = \"base-64\"\n")],
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("queues.orders.encoding = \"base-64\": must be one of"),
            "{e}"
        );
        assert!(e.contains("base64") && e.contains("none"), "{e}");
        let e = load(&[], &[("EBBFLOW__LOG__FORMAT", "yaml")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("log.format") && e.contains("json"), "{e}");
    }

    #[test]
    fn first_hour_mistakes_name_the_key_the_forms_and_an_example() {
        let err = |toml: &str| {
            load(&[("default.toml", toml)], &[])
                .unwrap_err()
                .to_string()
        };
        for probe in ["\"no\"", "30"] {
            let e = err(&format!(
                "[queues.orders.bus]\noutage_probe_interval = {probe}\n"
            ));
            assert!(
                e.contains("queues.orders.bus.outage_probe_interval")
                    && e.contains("\"off\"")
                    && e.contains("e.g. \"30s\"")
                    && !e.contains("Raw"),
                "{e}"
            );
        }
        for (toml, values) in [
            ("[storage]\ncredential = \"x\"\n", "`managed_identity`"),
            ("[queues.orders.bus]\npublish = \"x\"\n", "`depth`"),
        ] {
            let e = err(&format!("[queues.orders]\n{toml}"));
            assert!(e.contains(values) && !e.contains("one of one of"), "{e}");
        }
        let e = err("[queues.orders]\n[triggers.http]\nbind = \"localhost:7075\"\n");
        assert!(
            e.contains("triggers.http.bind") && e.contains("e.g. \"127.0.0.1:7075\""),
            "{e}"
        );
    }

    #[test]
    fn every_choice_named_has_its_values() {
        for field in [
            "encoding",
            "format",
            "kind",
            "credential",
            "reach",
            "publish",
        ] {
            let allowed = allowed_values(field).unwrap_or_default();
            assert!(allowed.contains('`'), "{field}: {allowed}");
        }
    }

    #[test]
    fn an_empty_connection_string_variable_is_an_error_not_the_embedded_store() {
        let e = load(&[], &[(CONNECTION_STRING_VAR, " ")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(CONNECTION_STRING_VAR) && e.contains("empty"),
            "{e}"
        );
        // Unset: the embedded store, as documented.
        let s = load(&[], &[]).unwrap();
        assert!(s.storage.connection_string.is_none());
    }

    #[test]
    fn a_bus_url_with_the_bus_off_is_refused() {
        let e = load(&[], &[("EBBFLOW__BUS__URL", "redis://127.0.0.1:6379")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("bus.kind") && e.contains("bus.url"), "{e}");
    }

    #[test]
    fn the_origin_names_the_folder_and_files_read() {
        let dir = std::env::temp_dir().join(format!("ebbflow-none-{}", uuid::Uuid::new_v4()));
        let s = load_from(&dir, &BTreeMap::new()).unwrap();
        let said = s.origin().to_string();
        assert!(said.contains("default.toml (missing)"), "{said}");
        assert!(said.contains("does not exist"), "{said}");
        assert_eq!(
            Settings::default().origin().to_string(),
            "settings built in code"
        );
    }
}
