//! Secrets kept out of every output: the one redaction routine ([`redact`]) for any text that
//! may hold a connection string, a URL with a password or a SAS query, a token, or a config
//! parser's excerpt of a file; and the serializers the settings types use so that printing
//! the effective settings (`ebbflow config check`) never shows one.
//!
//! A settings field that may hold a secret names one of the serializers here with
//! `#[serde(serialize_with = "...")]`; the settings types have no other serialized form.

use secrecy::{ExposeSecret, SecretString};
use serde::Serializer;

/// The marker that replaces a secret.
pub(crate) const REDACTED: &str = "<redacted>";

/// Every settings key whose value is or holds a secret, as dotted paths: they serialize
/// redacted or hidden, and no error, log line or `Debug` output shows their values (the
/// runtime's tests check this list against the settings types, and feed each key malformed
/// values while searching every output for them). The environment's
/// `AZURE_STORAGE_CONNECTION_STRING` is read as `storage.connection_string`.
pub const SECRET_KEYS: &[&str] = &[
    "storage.connection_string",
    "storage.queue_endpoint",
    "storage.sas_token",
    "storage.claim_check.blob_endpoint",
    "storage.claim_check.sas_token",
    "triggers.http.token",
    "observability.metrics_token",
    "bus.url",
    "bus.signing_key",
    "bus.signing_previous_key",
];

/// Serializes text that may embed secrets (a connection string's `AccountKey=` or
/// `SharedAccessSignature=`, a URL's password, `sig=` or `token=`) with those values redacted
/// ([`redact`]).
pub(crate) fn serialize_redacted<S: Serializer>(
    value: &Option<String>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(text) => s.serialize_some(&redact(text)),
        None => s.serialize_none(),
    }
}

/// Serializes a connection string as [`connection_string_shown`] writes it.
pub(crate) fn serialize_connection_string<S: Serializer>(
    value: &Option<SecretString>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(text) => s.serialize_some(&connection_string_shown(text.expose_secret())),
        None => s.serialize_none(),
    }
}

/// The parts of a connection string that name no secret, as Azure writes them.
const PLAIN_PARTS: [&str; 9] = [
    "defaultendpointsprotocol",
    "accountname",
    "endpointsuffix",
    "queueendpoint",
    "blobendpoint",
    "tableendpoint",
    "fileendpoint",
    "usedevelopmentstorage",
    "developmentstorageproxyuri",
];

/// A connection string as settings show it (`Debug`, `ebbflow config check`): a part named
/// as Azure names a plain part (`AccountName=acct`, an endpoint) is shown through [`redact`];
/// any other part is hidden, keeping its name only when it is a plain word followed by `=`
/// (`AccountKey=<redacted>`). So a typo (`AccountKey:...`, a key pasted without its name, a
/// part with no `=`) shows as `<redacted>`, never as the key it holds.
pub(crate) fn connection_string_shown(cs: &str) -> String {
    cs.split(';')
        .map(|part| {
            let Some((name, _)) = part.split_once('=') else {
                return if part.trim().is_empty() {
                    part.to_string()
                } else {
                    REDACTED.to_string()
                };
            };
            let word = name.trim();
            if PLAIN_PARTS.contains(&word.to_ascii_lowercase().as_str()) {
                redact(part)
            } else if !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric()) {
                format!("{name}={REDACTED}")
            } else {
                REDACTED.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(";")
}

/// Serializes a value that is a secret as a whole (a token, a SAS token) as `<redacted>`, so
/// a reader sees that one is set but not what it is.
pub(crate) fn serialize_hidden<T, S: Serializer>(
    value: &Option<T>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(_) => s.serialize_some(REDACTED),
        None => s.serialize_none(),
    }
}

/// How far a marked value runs.
#[derive(Clone, Copy)]
enum Runs {
    /// To the next `;` (a connection string's part), a quote or the line's end: an account key
    /// or a SAS token may hold `&`, `=` and spaces around it.
    ToPart,
    /// To the next separator of a query, a list or a sentence.
    ToSeparator,
}

/// Names whose value is a secret, as `name=value` (spaces around `=` allowed, any case), found
/// only at the start of a key (after a separator or at the beginning), so `mytoken=` or
/// `xsig=` are left alone.
const MARKED: [(&str, Runs); 10] = [
    ("accountkey", Runs::ToPart),
    ("sharedaccesssignature", Runs::ToPart),
    ("connection_string", Runs::ToPart),
    ("sig", Runs::ToSeparator),
    ("token", Runs::ToSeparator),
    ("password", Runs::ToSeparator),
    ("metrics_token", Runs::ToSeparator),
    ("sas_token", Runs::ToSeparator),
    ("signing_key", Runs::ToSeparator),
    ("signing_previous_key", Runs::ToSeparator),
];

/// `text` with every secret it may hold replaced by `<redacted>`; the one routine behind every
/// error, log field, `Debug` and serialized form that could carry one:
///
/// - a URL's password (`redis://user:<redacted>@host`, `rediss://<redacted>@host` for a lone
///   userinfo, which Redis clients take for a password). The userinfo ends at the URL's last
///   `@`, even past a `/`, `?` or `#` when it holds a `:`: a password pasted unencoded may hold
///   those, and hiding too much is safe where showing a key is not;
/// - a URL's whole query string (`https://acct.queue.core.windows.net/?<redacted>`): a SAS
///   token may be written with `&amp;`, `;` or percent-encoded separators, or with no names
///   at all, so no part of a query is shown;
/// - the values of `AccountKey=` and `SharedAccessSignature=` (a connection string's parts,
///   whatever the case and the spaces around the name), of `sig=`, `token=` and `password=`
///   (a SAS query, a trigger token in a webhook URL, a `host,password=...` Redis string), and of
///   the settings keys that hold secrets (`metrics_token = "..."`, `signing_key = "..."`);
/// - a parser's excerpt of a config file (`3 | token = "...`, as TOML errors quote the line):
///   the line may hold a secret, so only its number stays.
///
/// ```
/// use ebbflow::config::redact;
/// assert_eq!(
///     redact("AccountName=a;AccountKey=S3C==;EndpointSuffix=x"),
///     "AccountName=a;AccountKey=<redacted>;EndpointSuffix=x"
/// );
/// assert_eq!(redact("redis://app:s3cret@cache:6380/0"), "redis://app:<redacted>@cache:6380/0");
/// assert_eq!(redact("POST /trigger?token=s3cret"), "POST /trigger?token=<redacted>");
/// ```
pub fn redact(text: &str) -> String {
    let text = hide_excerpts(text);
    let text = hide_url_passwords(&text);
    hide_marked_values(&text)
}

/// Replaces the quoted source of `N | ...` excerpt lines (as the TOML parser prints them).
fn hide_excerpts(text: &str) -> String {
    if !text.contains(" | ") {
        return text.to_string();
    }
    text.split('\n')
        .map(|line| {
            let trimmed = line.trim_start();
            let digits = trimmed.len()
                - trimmed
                    .trim_start_matches(|c: char| c.is_ascii_digit())
                    .len();
            match trimmed[digits..].strip_prefix(" | ") {
                Some(quoted) if digits > 0 && !quoted.trim().is_empty() => {
                    let indent = line.len() - trimmed.len();
                    format!("{}{} | {REDACTED}", &line[..indent], &trimmed[..digits])
                }
                _ => line.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn hide_url_passwords(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        // A URL in a message ends at a space or a quote; a password rarely holds either.
        let end = tail
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '<' | '>'))
            .unwrap_or(tail.len());
        // Punctuation closing a sentence or a parenthesis is not the URL's.
        let end = tail[..end].trim_end_matches(['.', ',', ')', ']']).len();
        let url = &tail[..end];
        let authority_end = url.find(['/', '?', '#']).unwrap_or(url.len());
        match url.rfind('@') {
            Some(at) if at > 0 && (at < authority_end || url[..at].contains(':')) => {
                // `redis://secret@host` (no `:`): a lone userinfo is a password to Redis
                // clients, so it goes whole.
                if let Some((user, _)) = url[..at].split_once(':') {
                    out.push_str(user);
                    out.push(':');
                }
                out.push_str(REDACTED);
                out.push_str(&hide_query(&url[at..]));
            }
            _ => out.push_str(&hide_query(url)),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// `url` (or its part after the userinfo) with everything after its first `?` redacted.
fn hide_query(url: &str) -> String {
    match url.split_once('?') {
        Some((head, query)) if !query.is_empty() => format!("{head}?{REDACTED}"),
        _ => url.to_string(),
    }
}

fn hide_marked_values(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    'scan: while !rest.is_empty() {
        let at_key_start = out.is_empty()
            || out.ends_with(|c: char| {
                c.is_whitespace() || matches!(c, ';' | '&' | '?' | ',' | '"' | '\'' | '(' | '{')
            });
        if at_key_start {
            for (name, runs) in MARKED {
                let Some(after) = strip_prefix_ignore_case(rest, name) else {
                    continue;
                };
                let spaces = after.len() - after.trim_start_matches([' ', '\t']).len();
                let Some(value) = after[spaces..].strip_prefix('=') else {
                    continue;
                };
                let lead = value.len() - value.trim_start_matches([' ', '\t']).len();
                out.push_str(&rest[..name.len() + spaces + 1 + lead]);
                let value = &value[lead..];
                let end = match value.chars().next() {
                    // A quoted value (a TOML or JSON string) runs to its closing quote.
                    Some(q @ ('"' | '\'')) => {
                        let body = &value[1..];
                        let mut escaped = false;
                        let mut end = body.len();
                        let mut closed = false;
                        for (i, c) in body.char_indices() {
                            if c == '\n' {
                                end = i;
                                break;
                            }
                            if c == q && !escaped {
                                end = i + 1;
                                closed = true;
                                break;
                            }
                            escaped = c == '\\' && !escaped;
                        }
                        out.push(q);
                        out.push_str(REDACTED);
                        if closed {
                            out.push(q);
                        }
                        rest = &body[end..];
                        continue 'scan;
                    }
                    _ => match runs {
                        Runs::ToPart => value.find([';', '\n', '"', '\'']),
                        Runs::ToSeparator => value.find(|c: char| {
                            c.is_whitespace()
                                || matches!(c, ';' | '&' | '"' | '\'' | ')' | ',' | '#' | '}')
                        }),
                    }
                    .unwrap_or(value.len()),
                };
                out.push_str(REDACTED);
                rest = &value[end..];
                continue 'scan;
            }
        }
        let c = rest.chars().next().expect("rest is not empty");
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_passwords_and_tokens() {
        for (url, want) in [
            ("redis://:s3cret@h:6379/0", "redis://:<redacted>@h:6379/0"),
            ("rediss://user:s3cret@h", "rediss://user:<redacted>@h"),
            ("redis://s3cret@h", "redis://<redacted>@h"),
            ("redis://h:6379", "redis://h:6379"),
            ("http://h/x?sig=abc&a=b", "http://h/x?<redacted>"),
            // A query goes whole, however its separators are written.
            (
                "http://127.0.0.1:1/a?sv=2022&amp;sig=CANARY",
                "http://127.0.0.1:1/a?<redacted>",
            ),
            (
                "http://127.0.0.1:1/a?sv=2022;sig=CANARY",
                "http://127.0.0.1:1/a?<redacted>",
            ),
            (
                "url (http://h/a?sv=2022%3Bsig%3DCANARY), retrying.",
                "url (http://h/a?<redacted>), retrying.",
            ),
            (
                "queue_endpoint = \"https://a.queue.core.windows.net?CANARY\"",
                "queue_endpoint = \"https://a.queue.core.windows.net?<redacted>\"",
            ),
            ("http://h/a?", "http://h/a?"),
            ("not a url", "not a url"),
            ("redis://h/p@th", "redis://h/p@th"),
            // A password pasted unencoded, holding what ends an authority.
            (
                "rediss://app:k3y/with/slashes@h:6380/0",
                "rediss://app:<redacted>@h:6380/0",
            ),
            ("redis://:pa?ss@h", "redis://:<redacted>@h"),
            ("redis://:p@ss:w%rd@h", "redis://:<redacted>@h"),
            (
                "WRONGPASS at redis://app:s3cr%40t@cache.example:6380/2 (retrying)",
                "WRONGPASS at redis://app:<redacted>@cache.example:6380/2 (retrying)",
            ),
            // The StackExchange.Redis form pasted where a URL belongs.
            (
                "cache.example:6380,password=S3CRET,ssl=True",
                "cache.example:6380,password=<redacted>,ssl=True",
            ),
        ] {
            assert_eq!(redact(url), want, "{url}");
        }
    }

    #[test]
    fn connection_strings_lose_their_keys_however_they_are_spaced() {
        for (cs, want) in [
            (
                "AccountName=a;AccountKey=S3C==;EndpointSuffix=x",
                "AccountName=a;AccountKey=<redacted>;EndpointSuffix=x",
            ),
            (
                "AccountName=a; AccountKey = S3C== ;X=y",
                "AccountName=a; AccountKey = <redacted>;X=y",
            ),
            ("\taccountkey\t=S3C", "\taccountkey\t=<redacted>"),
            (
                "QueueEndpoint=https://q/a; SharedAccessSignature = sv=1&sig=S3C",
                "QueueEndpoint=https://q/a; SharedAccessSignature = <redacted>",
            ),
            (
                "AccountName=a;QueueEndpoint=https://u:S3C@q/a?sig=S3C",
                "AccountName=a;QueueEndpoint=https://u:<redacted>@q/a?<redacted>",
            ),
            ("https://q/a?sv=1&sig=S3C", "https://q/a?<redacted>"),
            ("UseDevelopmentStorage=true", "UseDevelopmentStorage=true"),
        ] {
            assert_eq!(redact(cs), want, "{cs}");
        }
    }

    #[test]
    fn a_connection_string_shows_only_its_plain_parts() {
        for (cs, want) in [
            (
                "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=S3C==;EndpointSuffix=x",
                "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=<redacted>;EndpointSuffix=x",
            ),
            // Typos and keys pasted without a name hide the whole part.
            ("AccountName=a;AccountKey:S3C==", "AccountName=a;<redacted>"),
            ("AccountName=a; accountkey S3C==", "AccountName=a;<redacted>"),
            ("AccountName=a;S3C", "AccountName=a;<redacted>"),
            ("AccountName=a;Acount Key=S3C", "AccountName=a;<redacted>"),
            (
                "QueueEndpoint=https://q/a?sv=1&sig=S3C;SharedAccessSignature=sv=1&sig=S3C",
                "QueueEndpoint=https://q/a?<redacted>;SharedAccessSignature=<redacted>",
            ),
            ("UseDevelopmentStorage=true;", "UseDevelopmentStorage=true;"),
        ] {
            assert_eq!(connection_string_shown(cs), want, "{cs}");
        }
    }

    #[test]
    fn messages_lose_keys_signatures_and_tokens() {
        for (text, want) in [
            (
                "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=abc+/==;EndpointSuffix=x",
                "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=<redacted>;EndpointSuffix=x",
            ),
            (
                "error sending request for url (http://h/q/messages?sv=2019-02-02&sig=Zm9v%2B&se=1)",
                "error sending request for url (http://h/q/messages?<redacted>)",
            ),
            ("sig=abc", "sig=<redacted>"),
            (
                "POST /trigger?queue=q&token=s3cr3t-value HTTP/1.1",
                "POST /trigger?queue=q&token=<redacted> HTTP/1.1",
            ),
            ("/trigger?TOKEN=abc", "/trigger?TOKEN=<redacted>"),
            // A key that merely ends in "token" is not the trigger token.
            ("?mytoken=abc", "?mytoken=abc"),
            // "sig=" inside another word is not a key.
            ("xsig=abc", "xsig=abc"),
            // Settings keys as a file or an error writes them.
            (
                "metrics_token = \"s3cret \\\" quoted\" # note",
                "metrics_token = \"<redacted>\" # note",
            ),
            ("token = \"unterminated s3cret", "token = \"<redacted>"),
            ("signing_key='s3cret'", "signing_key='<redacted>'"),
        ] {
            assert_eq!(redact(text), want, "{text}");
        }
    }

    #[test]
    fn a_parsers_excerpt_of_a_file_keeps_only_its_line_number() {
        let toml = "TOML parse error at line 3, column 9\n  |\n3 | token = \"s3cret-token-value\n  |         ^\ninvalid basic string\n";
        let shown = redact(toml);
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("3 | <redacted>"), "{shown}");
        assert!(shown.contains("at line 3, column 9"), "{shown}");
        assert!(shown.contains("invalid basic string"), "{shown}");
        // A table drawn with pipes is not an excerpt.
        assert_eq!(redact("| a | b |"), "| a | b |");
    }

    /// The settings serialized with `env` applied, flattened to dotted keys (`None` when they
    /// do not load).
    fn loaded(env: &[(String, String)]) -> Option<std::collections::BTreeMap<String, String>> {
        let dir = std::env::temp_dir().join("ebbflow-secret-keys-none");
        let env = env.iter().cloned().collect();
        let settings = match crate::Settings::load_from(&dir, &env) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("{env:?}: {e}");
                return None;
            }
        };
        let mut keys = std::collections::BTreeMap::new();
        flatten("", &serde_json::to_value(&settings).unwrap(), &mut keys);
        Some(keys)
    }

    fn flatten(
        prefix: &str,
        value: &serde_json::Value,
        out: &mut std::collections::BTreeMap<String, String>,
    ) {
        match value {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    flatten(&key, v, out);
                }
            }
            other => {
                out.insert(prefix.to_string(), other.to_string());
            }
        }
    }

    fn var(key: &str) -> String {
        format!("EBBFLOW__{}", key.replace('.', "__").to_ascii_uppercase())
    }

    #[test]
    fn the_secret_keys_are_the_ones_the_settings_types_hide() {
        let sentinel = "sentinel-S3CRET-0123456789abcdef0123456789";
        // Every listed key hides a well-formed value it was given.
        for key in SECRET_KEYS {
            let value = match *key {
                "bus.url" => format!("redis://app:{sentinel}@h:6379"),
                "storage.connection_string" => format!("AccountName=a;AccountKey={sentinel}"),
                k if k.ends_with("endpoint") => format!("https://h/a?sig={sentinel}"),
                _ => sentinel.to_string(),
            };
            let mut env = vec![(var(key), value)];
            match *key {
                "bus.url" => env.push((var("bus.kind"), "redis".into())),
                "bus.signing_previous_key" => env.push((var("bus.signing_key"), sentinel.into())),
                "storage.sas_token" => {
                    env.push((var("storage.queue_endpoint"), "https://h/a".into()))
                }
                "storage.claim_check.sas_token" => env.push((
                    var("storage.claim_check.blob_endpoint"),
                    "https://h/a".into(),
                )),
                _ => {}
            }
            let keys = loaded(&env).unwrap_or_else(|| panic!("{key} loads"));
            let shown = &keys[*key];
            assert!(
                shown.contains(REDACTED) && !shown.contains("S3CRET"),
                "{key}: {shown}"
            );
        }
        // Every other key that takes text shows it: a key that hides its value is a secret
        // this list (and the leak test over it) must name.
        let all = loaded(&[(var("queues.orders.batch_size"), "1".into())]).unwrap();
        let mut checked = 0;
        for key in all.keys().filter(|k| !SECRET_KEYS.contains(&k.as_str())) {
            let Some(keys) = loaded(&[(var(key), sentinel.into())]) else {
                continue; // Not a key that takes any text.
            };
            checked += 1;
            assert!(
                !keys[key].contains(REDACTED),
                "{key} hides its value: add it to SECRET_KEYS"
            );
        }
        assert!(checked >= 5, "only {checked} text keys checked");
    }

    #[test]
    fn serialized_settings_carry_no_secret() {
        let mut s = crate::Settings::default();
        s.storage.connection_string = Some(
            "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=S3CRETKEY==;EndpointSuffix=x"
                .into(),
        );
        s.triggers.http.token = Some("S3CRETTOKEN-0123456789".into());
        let json = serde_json::to_string(&s).unwrap();
        assert!(!json.contains("S3CRET"), "{json}");
        assert!(
            json.contains("AccountName=acct;AccountKey=<redacted>"),
            "{json}"
        );
        assert!(json.contains("\"token\":\"<redacted>\""), "{json}");
        let mut s = crate::Settings::default();
        s.storage.queue_endpoint =
            Some("https://acct.queue.core.windows.net/?sv=1&sig=S3CRET".into());
        s.storage.sas_token = Some("sv=1&sig=S3CRET".into());
        let json = serde_json::to_string(&s).unwrap();
        assert!(!json.contains("S3CRET"), "{json}");
        assert!(json.contains("\"sas_token\":\"<redacted>\""), "{json}");
    }
}
