//! Secrets (account keys, SAS signatures, trigger tokens, in headers or URLs) never reach logs,
//! errors or `Debug` output. Every log line of every crate, at every level, is captured while
//! a worker fails and runs in the ways that print URLs and credentials' surroundings, then
//! searched.

use crate::common;

use std::time::Duration;

use common::proxy::Proxy;
use ebbflow::config::{QueueSettings, Settings};
use ebbflow::store::{account_sas, DEV_ACCOUNT, DEV_KEY};
use ebbflow::{Context, Handler, HandlerError, Worker};

struct Nop;
impl Handler for Nop {
    type Message = String;
    async fn handle(&self, _: String, _: Context) -> Result<(), HandlerError> {
        Ok(())
    }
}

const TOKEN: &str = "trigger-token-0123456789-secret";

fn settings(queue: &str) -> Settings {
    let mut s = Settings::default();
    s.storage.retry.max_attempts = 2;
    s.storage.retry.min_delay = Duration::from_millis(10);
    s.queues.insert(queue.to_string(), QueueSettings::default());
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_sas_signatures_and_trigger_tokens_never_reach_logs_errors_or_debug() {
    common::captured_logs();
    let mut outputs: Vec<String> = Vec::new();

    // 1. A wrong account key: start-up fails (403), the error and settings are printed.
    let bad_key = "V3JvbmdLZXlXcm9uZ0tleVdyb25nS2V5V3JvbmdLZXk=";
    let queue = common::unique("secret");
    let mut s = settings(&queue);
    s.storage.connection_string = Some(format!(
        "DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={bad_key};QueueEndpoint={}",
        common::azurite_url()
    ).into());
    outputs.push(format!("{s:?}"));
    let err = Worker::new(s)
        .handler(&queue, Nop)
        .start()
        .await
        .expect_err("a wrong key fails");
    outputs.push(err.to_string());
    outputs.push(format!("{err:?}"));
    assert!(err.to_string().contains("not authorized"), "{err}");

    // 2. A SAS URL whose requests are refused at runtime: the SDK and our logs print URLs.
    let sas = account_sas(
        DEV_ACCOUNT,
        DEV_KEY,
        time::OffsetDateTime::now_utc() + time::Duration::hours(1),
    )
    .unwrap();
    let signature = sas
        .split('&')
        .find_map(|p| p.strip_prefix("sig="))
        .expect("a signature")
        .to_string();
    assert!(signature.len() > 20);
    let proxy = Proxy::start(&common::azurite_url()).await;
    let queue = common::unique("secret");
    let mut s = settings(&queue);
    s.storage.queue_endpoint = Some(format!("{}?{sas}", proxy.url()));
    s.triggers.http.enabled = true;
    s.triggers.http.bind = "127.0.0.1:0".parse().unwrap();
    s.triggers.http.token = Some(TOKEN.into());
    s.triggers.http.allow_query_token = true;
    s.validate().unwrap();
    outputs.push(format!("{s:?}"));
    let worker = Worker::new(s).handler(&queue, Nop).start().await.unwrap();
    // 3. Trigger calls with a wrong token and the right one.
    let url = format!("http://{}/trigger", worker.trigger_addr().unwrap());
    for token in ["wrong-token-wrong-token", TOKEN] {
        let r = reqwest::Client::new()
            .post(&url)
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(format!(r#"{{"queue":"{queue}"}}"#))
            .send()
            .await
            .unwrap();
        outputs.push(r.text().await.unwrap());
    }
    // 4. The token in the URL, as a webhook system that cannot send headers would.
    for (key, token) in [
        ("token", "wrong-token-wrong-token"),
        ("token", TOKEN),
        ("tok%65n", TOKEN),
    ] {
        let r = reqwest::Client::new()
            .post(format!("{url}?queue={queue}&{key}={token}"))
            .header("content-type", "application/json")
            .body(format!(r#"{{"queue":"{queue}"}}"#))
            .send()
            .await
            .unwrap();
        outputs.push(r.text().await.unwrap());
    }
    let report = proxy.revoke_and_wait(worker).await;
    let fatal = report.fatal.expect("fatal");
    outputs.push(fatal.to_string());
    outputs.push(format!("{fatal:?}"));

    let logs = common::captured_logs();
    assert!(logs.contains(&queue), "the capture saw this worker's logs");
    // The SDK logs request URLs (with their SAS query) at debug: they were captured, redacted.
    assert!(logs.contains("sig=REDACTED"), "the URLs were captured");
    // Trigger requests are logged by path only (a query may carry the token in any spelling);
    // refusals are counted in ebbflow_http_refused_total, not logged one by one.
    assert!(
        logs.contains("trigger request"),
        "the trigger requests were captured"
    );
    outputs.push(logs);
    let everything = outputs.join("\n");
    for (what, secret) in [
        ("account key", DEV_KEY),
        ("wrong account key", bad_key),
        ("SAS signature", signature.as_str()),
        ("trigger token", TOKEN),
    ] {
        assert!(
            !everything.contains(secret),
            "the {what} leaked: {}",
            everything
                .lines()
                .find(|l| l.contains(secret))
                .unwrap_or_default()
        );
    }
    // Percent-encoded signatures count too.
    let encoded = signature.replace('/', "%2F").replace('+', "%2B");
    assert!(!everything.contains(&encoded));
}
