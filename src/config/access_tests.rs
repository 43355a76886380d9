//! Settings that reach other services or guard the worker's doors, with errors that name the
//! key and never the secret: the HTTP trigger's hardening, token and non-loopback bind, the
//! storage connection string (its fallback variable, an empty one from any source, keys hidden
//! in `Debug`) and the bus URL. The rest of loading and validation is in `tests`.

use super::tests::{dir_with, env};
use super::*;

#[test]
fn trigger_hardening_settings_load_and_are_checked() {
    let dir = dir_with(
        "[triggers.http]\nenabled = true\ntoken = \"0123456789abcdef-secret\"\n\
         allow_query_token = true\nrequest_timeout = \"2s\"\nmax_concurrent_requests = 4\n",
    );
    let s = Settings::load_from(&dir, &env(&[])).unwrap();
    let http = &s.triggers.http;
    assert!(http.allow_query_token);
    assert_eq!(http.request_timeout, Duration::from_secs(2));
    assert_eq!(http.max_concurrent_requests, 4);
    let defaults = HttpTriggerSettings::default();
    assert!(!defaults.allow_query_token, "query tokens are opt-in");
    assert_eq!(defaults.request_timeout, Duration::from_secs(10));
    assert_eq!(defaults.max_concurrent_requests, 64);
    for (toml, expected) in [
        (
            "[triggers.http]\nallow_query_token = true\n",
            "config: triggers.http.allow_query_token = true: needs triggers.http.token",
        ),
        (
            "[triggers.http]\nrequest_timeout = \"10m\"\n",
            "config: triggers.http.request_timeout = 10m: must be 100ms..=5m",
        ),
        (
            "[triggers.http]\nmax_concurrent_requests = 0\n",
            "config: triggers.http.max_concurrent_requests = 0: must be 1..=10000",
        ),
        (
            "[triggers.http]\nheader_read_timeout = \"50ms\"\n",
            "config: triggers.http.header_read_timeout = 50ms: must be 100ms..=5m",
        ),
        (
            "[triggers.http]\nmax_connections = 0\n",
            "config: triggers.http.max_connections = 0: must be 1..=100000",
        ),
        (
            "[observability]\nmax_connections = 20000\n",
            "config: observability.max_connections = 20000: must be 1..=10000",
        ),
    ] {
        let dir = dir_with(toml);
        let err = Settings::load_from(&dir, &env(&[]))
            .unwrap_err()
            .to_string();
        assert_eq!(err, expected);
    }
}

/// A bad Redis URL is refused while parsing, naming `bus.url`, the fix, and never the password.
#[test]
fn a_bad_bus_url_names_the_key_and_hides_the_password() {
    for (url, said) in [
        ("http://h", "config: bus.url = a text of 8 characters"),
        ("redis://:topsecret@", "config: bus.url = "),
    ] {
        let err = Settings::load_from(
            &dir_with(""),
            &env(&[("EBBFLOW__BUS__KIND", "redis"), ("EBBFLOW__BUS__URL", url)]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with(said), "{url}: {err}");
        assert!(err.contains(": must ") && err.contains("redis://"), "{err}");
        assert!(!err.contains("topsecret"), "{err}");
    }
}

#[test]
fn http_trigger_off_loopback_needs_a_token() {
    let dir = dir_with("[triggers.http]\nenabled = true\nbind = \"0.0.0.0:7075\"\n");
    let err = Settings::load_from(&dir, &env(&[]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("triggers.http.bind = 0.0.0.0:7075"), "{err}");
    let dir = dir_with(
        "[triggers.http]\nenabled = true\nbind = \"0.0.0.0:7075\"\ntoken = \"0123456789abcdef-secret\"\n",
    );
    let s = Settings::load_from(&dir, &env(&[])).unwrap();
    assert!(!format!("{s:?}").contains("0123456789abcdef-secret"));
}

#[test]
fn connection_string_falls_back_to_the_conventional_variable() {
    let dir = dir_with("");
    let s = Settings::load_from(
        &dir,
        &env(&[(CONNECTION_STRING_VAR, "UseDevelopmentStorage=true")]),
    )
    .unwrap();
    assert_eq!(
        s.storage
            .connection_string
            .as_ref()
            .map(secrecy::ExposeSecret::expose_secret),
        Some("UseDevelopmentStorage=true")
    );
}

#[test]
fn debug_output_hides_keys_and_sas() {
    let s = StorageSettings {
        connection_string: Some("AccountName=a;AccountKey=c2VjcmV0a2V5".into()),
        queue_endpoint: Some("https://a.queue.core.windows.net?sv=1&sig=abcd%2Bsecret".into()),
        sas_token: Some("sig=zzzsecret".into()),
        ..Default::default()
    };
    let text = format!("{s:?}");
    assert!(!text.contains("c2VjcmV0a2V5"), "{text}");
    assert!(!text.contains("abcd"), "{text}");
    assert!(!text.contains("zzzsecret"), "{text}");
}

#[test]
fn a_trigger_token_no_header_could_carry_is_refused() {
    for token in [
        "0123456789abcdef\\n",
        "0123456789 abcdef",
        "éééééééééééééééé",
    ] {
        let dir = dir_with(&format!("[triggers.http]\ntoken = \"{token}\"\n"));
        let err = Settings::load_from(&dir, &env(&[]))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "config: triggers.http.token = <redacted>: must be printable ASCII without spaces or line breaks"
        );
    }
}

/// An empty connection string is an error from each of its three sources, naming where it came
/// from, never a fall back to the embedded store nor "needs AccountName" (which reads as a
/// malformed value).
#[test]
fn an_empty_connection_string_is_refused_from_every_source() {
    let queue = "[queues.orders]\n";
    let from_file = dir_with(&format!("{queue}[storage]\nconnection_string = \"\"\n"));
    let from_var = dir_with(queue);
    for (dir, vars, key) in [
        (&from_file, env(&[]), "storage.connection_string"),
        (
            &from_var,
            env(&[("EBBFLOW__STORAGE__CONNECTION_STRING", " ")]),
            "storage.connection_string",
        ),
        (
            &from_var,
            env(&[("AZURE_STORAGE_CONNECTION_STRING", "")]),
            "AZURE_STORAGE_CONNECTION_STRING",
        ),
    ] {
        let err = Settings::load_from(dir, &vars).unwrap_err().to_string();
        assert!(
            err.contains(key) && err.contains("empty") && err.contains("UseDevelopmentStorage"),
            "{vars:?}: {err}"
        );
    }
}
