//! Secrets in settings that are serialized: connection strings, SAS tokens, URLs with
//! passwords and tokens are written with their secret parts replaced by `<redacted>`, so
//! printing the effective settings (`ebbflow config check`) never shows one.
//!
//! A settings field that may hold a secret names one of these with
//! `#[serde(serialize_with = "...")]`; the settings types have no other serialized form.

use serde::Serializer;

use crate::service::redact;

/// The marker that replaces a secret.
pub const REDACTED: &str = "<redacted>";

/// Serializes text that may embed secrets (a connection string's `AccountKey=` or
/// `SharedAccessSignature=`, a URL's password, `sig=` or `token=`) with those values redacted
/// ([`redact_connection_string`]).
pub fn serialize_redacted<S: Serializer>(value: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(text) => s.serialize_some(&redact_connection_string(text)),
        None => s.serialize_none(),
    }
}

/// A connection string (`Key=Value;...`) or a URL with its secrets redacted: the values of
/// `AccountKey` and `SharedAccessSignature` whatever the case and the spaces around their
/// names (the store's parser trims them, so ` AccountKey = ...` is a working key), and in
/// every other part a URL's password and its `sig=` or `token=` values.
pub fn redact_connection_string(text: &str) -> String {
    text.split(';')
        .map(|part| match part.split_once('=') {
            Some((name, _))
                if ["accountkey", "sharedaccesssignature"]
                    .contains(&name.trim().to_ascii_lowercase().as_str()) =>
            {
                format!("{name}={REDACTED}")
            }
            _ => redact_url(part),
        })
        .collect::<Vec<_>>()
        .join(";")
}

/// Serializes a value that is a secret as a whole (a token, a SAS token) as `<redacted>`, so
/// a reader sees that one is set but not what it is.
pub fn serialize_hidden<S: Serializer>(value: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(_) => s.serialize_some(REDACTED),
        None => s.serialize_none(),
    }
}

/// Serializes a URL with its password (`scheme://user:password@host`) and any `sig=` or
/// `token=` query values redacted, for settings such as a Redis URL.
pub fn serialize_url<S: Serializer>(value: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(url) => s.serialize_some(&redact_url(url)),
        None => s.serialize_none(),
    }
}

/// `url` with the password of its userinfo (`user:password@`) and secret query values replaced.
pub fn redact_url(url: &str) -> String {
    let redacted = redact(url);
    let Some(scheme_end) = redacted.find("://") else {
        return redacted;
    };
    let rest = &redacted[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            let hidden = if userinfo.contains(':') || !user.is_empty() {
                // `redis://:password@host` has the secret where a user would be.
                if userinfo.contains(':') {
                    format!("{user}:{REDACTED}")
                } else {
                    REDACTED.to_string()
                }
            } else {
                String::new()
            };
            format!("{}://{hidden}@{}", &redacted[..scheme_end], &rest[at + 1..])
        }
        None => redacted,
    }
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
            ("http://h/x?sig=abc&a=b", "http://h/x?sig=<redacted>&a=b"),
            ("not a url", "not a url"),
            ("redis://h/p@th", "redis://h/p@th"),
        ] {
            assert_eq!(redact_url(url), want, "{url}");
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
                "AccountName=a; AccountKey =<redacted>;X=y",
            ),
            ("\taccountkey\t=S3C", "\taccountkey\t=<redacted>"),
            (
                "QueueEndpoint=https://q/a; SharedAccessSignature = sv=1&sig=S3C",
                "QueueEndpoint=https://q/a; SharedAccessSignature =<redacted>",
            ),
            (
                "AccountName=a;QueueEndpoint=https://u:S3C@q/a?sig=S3C",
                "AccountName=a;QueueEndpoint=https://u:<redacted>@q/a?sig=<redacted>",
            ),
            (
                "https://q/a?sv=1&sig=S3C",
                "https://q/a?sv=1&sig=<redacted>",
            ),
            ("UseDevelopmentStorage=true", "UseDevelopmentStorage=true"),
        ] {
            assert_eq!(redact_connection_string(cs), want, "{cs}");
        }
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
