//! Push triggers a command sends after putting work on a queue, so idle workers wake at once
//! instead of at their next poll (or never, at `min_tasks = 0` with no depth probe).
//!
//! [`announce`] sends every trigger the config declares and reports each one: the HTTP
//! work-detected endpoint (`[triggers.http]`) and the bus's work notice (`[bus]` with
//! `kind = "redis"`).

use std::time::Duration;

use ebbflow::config::redact;
use ebbflow::Settings;
use secrecy::ExposeSecret;
use serde::Serialize;

use crate::CliError;

/// How long one trigger request may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// "Work detected on `queue`": the plain event the HTTP endpoint accepts
/// (`ebbflow::worker::WorkDetected`).
#[derive(Debug, Clone, Serialize)]
pub struct WorkDetected {
    /// The storage account, so workers on another account ignore it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// The queue that has work.
    pub queue: String,
    /// How many messages were sent.
    pub payload_size: u64,
}

/// Where a command's triggers go, from its flags.
#[derive(Debug, Clone, Default)]
pub struct Target {
    /// Send none (`--no-trigger`).
    pub off: bool,
    /// Post to this URL instead of the configured endpoint (`--trigger-url`): another replica.
    pub http_url: Option<String>,
}

/// What happened to one trigger.
#[derive(Debug)]
pub struct Outcome {
    /// The channel and where it went, e.g. `http POST http://127.0.0.1:7075/trigger`.
    pub channel: String,
    /// `Ok(what the receiver said)`, or why it failed.
    pub result: Result<String, String>,
}

/// Sends `event` on every trigger channel `settings` declares (or `target` asks for) and
/// reports each; an empty list means none is configured.
pub async fn announce(settings: &Settings, target: &Target, event: &WorkDetected) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    if target.off {
        return outcomes;
    }
    if let Some(url) = http_url(settings, target) {
        let result = post(
            &url,
            settings
                .triggers
                .http
                .token
                .as_ref()
                .map(ExposeSecret::expose_secret),
            event,
        )
        .await;
        outcomes.push(Outcome {
            channel: format!("http POST {}", redact(&url)),
            result,
        });
    }
    if settings.bus.is_shared() {
        outcomes.push(Outcome {
            channel: format!(
                "bus {}",
                settings
                    .bus
                    .url
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default()
            ),
            result: bus_notice(settings, &event.queue, event.payload_size).await,
        });
    }
    outcomes
}

/// Connects to the bus as a client and appends one work notice to `queue`'s work stream (one
/// replica's listener wakes with `reach = "one"`, every replica's with `reach = "all"`).
async fn bus_notice(settings: &Settings, queue: &str, messages: u64) -> Result<String, String> {
    use ebbflow::bus::{Bus, Member, Name, WorkNotice};
    let role = Name::new("cli").map_err(|e| e.to_string())?;
    let member = Member {
        instance: Member::generated_id(&role),
        role,
    };
    let bus = ebbflow::bus::RedisBus::connect_client(&settings.bus, member)
        .await
        .map_err(|e| e.to_string())?;
    let reach = settings
        .queues
        .get(queue)
        .map(|q| q.bus.reach)
        .unwrap_or_default();
    let notice = WorkNotice {
        queue: queue.to_string(),
        from: Some(bus.member().instance.to_string()),
        messages: (messages > 0).then_some(messages),
        hops: 0,
    };
    let sent = bus.announce(&notice).await;
    bus.close().await;
    sent.map_err(|e| e.to_string())?;
    Ok(format!(
        "work notice on {}:work:{queue}, reach {}",
        settings.bus.channel_prefix,
        format!("{reach:?}").to_lowercase()
    ))
}

/// Checks a `--trigger-url` before anything is sent: an `http` or `https` URL with a host.
pub fn check_url(url: &str) -> Result<(), String> {
    let parsed =
        reqwest::Url::parse(url).map_err(|e| format!("--trigger-url {}: {e}", redact(url)))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
        return Err(format!(
            "--trigger-url {}: must be http://host:port or https://host:port (optionally with a path)",
            redact(url)
        ));
    }
    Ok(())
}

/// The HTTP endpoint to post to: `--trigger-url`, else the configured endpoint when it is
/// enabled (an unspecified bind address such as 0.0.0.0 is reached on loopback).
fn http_url(settings: &Settings, target: &Target) -> Option<String> {
    if let Some(url) = &target.http_url {
        // `/trigger` goes into the path, before any `?query` (a `?token=` for a webhook-style
        // endpoint): `http://h:7075?token=t` posts to `http://h:7075/trigger?token=t`.
        let (base, query) = match url.split_once('?') {
            Some((base, query)) => (base, Some(query)),
            None => (url.as_str(), None),
        };
        let trimmed = base.trim_end_matches('/');
        let has_path = trimmed
            .split_once("://")
            .is_some_and(|(_, rest)| rest.contains('/'));
        let base = if has_path {
            base.to_string()
        } else {
            format!("{trimmed}/trigger")
        };
        return Some(match query {
            Some(query) => format!("{base}?{query}"),
            None => base,
        });
    }
    let http = &settings.triggers.http;
    if !http.enabled {
        return None;
    }
    let mut addr = http.bind;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            std::net::IpAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    Some(format!("http://{addr}/trigger"))
}

/// Posts one plain work-detected event; Ok with the endpoint's answer when it woke a listener.
async fn post(url: &str, token: Option<&str>, event: &WorkDetected) -> Result<String, String> {
    let client = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .build()
        .map_err(|e| format!("HTTP client: {e}"))?;
    let body = serde_json::to_vec(event).map_err(|e| e.to_string())?;
    let mut request = client
        .post(url)
        .header("content-type", "application/json")
        .body(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    // Errors and answers may echo the URL, which may carry `?token=`: redacted.
    let response = request
        .send()
        .await
        .map_err(|e| redact(&format!("{e} ({})", error_chain(&e))))?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    let text = redact(text.trim());
    if !status.is_success() {
        // The endpoint's refusals are `{"error": "..."}`: the reason alone reads better.
        let reason = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("error")?.as_str().map(str::to_string))
            .unwrap_or(text);
        return Err(format!("{status}: {reason}"));
    }
    let woken = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v.get("woken")?.as_u64());
    match woken {
        Some(0) => Err(format!(
            "{status}, but no listener there took it: that worker does not listen on queue {} \
             (or uses another storage account)",
            event.queue
        )),
        Some(n) => Ok(format!("{status}, woke {n} listener(s)")),
        None => Ok(status.to_string()),
    }
}

/// The causes below a request error (connection refused, timed out, ...).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut causes = Vec::new();
    let mut source = e.source();
    while let Some(cause) = source {
        causes.push(cause.to_string());
        source = cause.source();
    }
    causes.join(": ")
}

/// Why a worker sitting at zero tasks on `queue` would not see a message sent without a trigger:
/// the queue is configured at `min_tasks = 0` with no idle probe, so only a trigger wakes it
/// (`wake_on_publish` covers sends inside the worker's own process, not this one's).
fn deaf_at_zero(settings: &Settings, queue: &str) -> Option<String> {
    let scaling = &settings.queues.get(queue)?.scaling;
    (scaling.min_tasks == ebbflow::config::MinTasks::Zero && scaling.idle_probe_interval.is_none())
        .then(|| {
            format!(
                "queue {queue} is at scaling.min_tasks = 0 with no idle_probe_interval: a worker \
                 sitting at zero tasks on it does not see the message(s) until a trigger wakes it \
                 (wake_on_publish covers only sends inside the worker's own process)"
            )
        })
}

/// Prints what happened to each trigger sent for `queue`; an error when one failed, or when
/// none was configured for a queue only a trigger can wake (`--no-trigger` says so and is no
/// error: the caller chose it).
pub fn report(
    triggers: &[Outcome],
    off: bool,
    settings: &Settings,
    queue: &str,
) -> Result<(), CliError> {
    if triggers.is_empty() {
        say!(
            "trigger: none sent ({}); a worker finds the message at its next receive or depth \
             probe",
            if off {
                "--no-trigger"
            } else {
                "none configured: [triggers.http] is off and bus.kind is none"
            }
        );
        return match deaf_at_zero(settings, queue) {
            Some(why) if off => {
                say!("note: {why}");
                Ok(())
            }
            Some(why) => Err(CliError::runtime(format!(
                "{why}; the message(s) are on the queue. Enable [triggers.http] or set [bus] \
                 kind = \"redis\" so commands can wake it, or set \
                 queues.{queue}.scaling.idle_probe_interval"
            ))),
            None => Ok(()),
        };
    }
    let mut failed = Vec::new();
    for t in triggers {
        match &t.result {
            Ok(answer) => say!("trigger: sent ({}: {answer})", t.channel),
            Err(why) => {
                say!("trigger: FAILED ({})", t.channel);
                failed.push(format!("trigger {} failed: {why}", t.channel));
            }
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(CliError::runtime(format!(
            "{}; the message(s) are on the queue, but an idle worker may not see them until it \
             polls",
            failed.join("; ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(bind: &str, enabled: bool, flag: Option<&str>) -> Option<String> {
        let mut settings = Settings::default();
        settings.triggers.http.enabled = enabled;
        settings.triggers.http.bind = bind.parse().unwrap();
        let target = Target {
            off: false,
            http_url: flag.map(str::to_string),
        };
        http_url(&settings, &target)
    }

    #[test]
    fn the_configured_endpoint_is_reached_on_loopback_when_bound_to_any_address() {
        assert_eq!(url("127.0.0.1:7075", false, None), None);
        assert_eq!(
            url("0.0.0.0:7075", true, None).as_deref(),
            Some("http://127.0.0.1:7075/trigger")
        );
        assert_eq!(
            url("[::]:7075", true, None).as_deref(),
            Some("http://[::1]:7075/trigger")
        );
        assert_eq!(
            url("10.1.2.3:8080", true, None).as_deref(),
            Some("http://10.1.2.3:8080/trigger")
        );
    }

    #[test]
    fn a_trigger_url_gets_the_path_only_when_it_has_none() {
        for (given, want) in [
            ("http://10.0.0.12:7075", "http://10.0.0.12:7075/trigger"),
            ("http://10.0.0.12:7075/", "http://10.0.0.12:7075/trigger"),
            ("https://w.example/hooks/t", "https://w.example/hooks/t"),
            (
                "http://10.0.0.12:7075?token=t",
                "http://10.0.0.12:7075/trigger?token=t",
            ),
            (
                "http://10.0.0.12:7075/?token=t",
                "http://10.0.0.12:7075/trigger?token=t",
            ),
            ("https://w.example/t?token=t", "https://w.example/t?token=t"),
        ] {
            assert_eq!(
                url("127.0.0.1:7075", false, Some(given)).as_deref(),
                Some(want)
            );
        }
        assert!(check_url("http://10.0.0.12:7075").is_ok());
        for bad in ["10.0.0.12:7075", "ftp://h/x", "not a url", "http://"] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
        for secret in ["ftp://h/x?token=s3cret", "ftp://u:s3cret@h/x"] {
            assert!(
                !check_url(secret).unwrap_err().contains("s3cret"),
                "{secret}"
            );
        }
    }
}
