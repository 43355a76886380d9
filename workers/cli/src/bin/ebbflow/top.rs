//! `ebbflow top`: a live terminal view of one worker's queues (depth, tasks, handlers running,
//! rates) and, with the bus on, of the fleet (every live instance from the bus presence), read
//! from the same JSON the dashboard polls (`GET /dashboard.json` on the worker's ops endpoint).

use std::time::Duration;

use serde_json::Value;

use crate::context::{block_on, parse_duration};
use crate::{CliError, Context};

/// Polls a worker's `/dashboard.json` and prints, per queue: approximate depth, dequeue tasks,
/// handlers running, messages handled per second and received per second over the last
/// interval, mean pickup latency, and poison count; with the bus on, a second table of the
/// fleet: each live instance's role, dequeue tasks, handlers running, handled (total and per
/// second) and the age of its last presence pulse. Redraws in place on a terminal; prints one
/// frame per poll when piped. Ctrl-C ends it. Once a poll has succeeded, a failed one (a
/// worker restarting) is shown in the frame and polling goes on; a first poll that fails ends
/// it with the reason (exit 1; 2 for a refused or missing token).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The worker's ops endpoint, e.g. `http://127.0.0.1:9464` (its `[observability] bind`).
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:9464")]
    url: String,
    /// The metrics token when the worker has one (or EBBFLOW_METRICS_TOKEN).
    #[arg(long, value_name = "TOKEN")]
    token: Option<String>,
    /// Time between polls, 200ms..=1h.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "1s")]
    interval: Duration,
    /// Polls before exiting, at least 1 (default: until Ctrl-C). Rates need two.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    count: Option<u32>,
}

impl Args {
    pub fn run(self, _ctx: &Context) -> Result<(), CliError> {
        if !(Duration::from_millis(200)..=Duration::from_secs(3600)).contains(&self.interval) {
            return Err(CliError::usage("--interval must be 200ms..=1h"));
        }
        let url = dashboard_url(&self.url)?;
        let token = self
            .token
            .clone()
            .or_else(|| std::env::var("EBBFLOW_METRICS_TOKEN").ok())
            .filter(|t| !t.is_empty());
        block_on(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .map_err(|e| CliError::runtime(format!("HTTP client: {e}")))?;
            let terminal = std::io::IsTerminal::is_terminal(&std::io::stdout());
            let mut last: Option<(tokio::time::Instant, Value)> = None;
            let mut polls = 0u32;
            loop {
                let polled = poll(&client, &url, token.as_deref()).await;
                polls += 1;
                let now = tokio::time::Instant::now();
                match polled {
                    Ok(doc) => {
                        if terminal {
                            emit!("\x1b[2J\x1b[H");
                        }
                        say!(
                            "{}",
                            render(&doc, last.as_ref().map(|(t, d)| (now - *t, d)))
                        );
                        last = Some((now, doc));
                    }
                    // Nothing shown yet: a wrong URL or token, or no worker there; say so.
                    Err(e) if last.is_none() => return Err(e),
                    // A worker restarting: keep the last figures, show why this poll failed.
                    Err(e) => {
                        if terminal {
                            emit!("\x1b[2J\x1b[H");
                        }
                        let (_, doc) = last.as_ref().expect("a poll succeeded");
                        say!("{}\n(poll failed, retrying: {e})", render(doc, None));
                    }
                }
                if self.count.is_some_and(|n| polls >= n) {
                    return Ok(());
                }
                tokio::select! {
                    _ = tokio::time::sleep(self.interval) => {}
                    _ = tokio::signal::ctrl_c() => return Ok(()),
                }
            }
        })?
    }
}

/// `<url>/dashboard.json`, or a usage error naming `--url` when it is not an `http(s)` URL.
fn dashboard_url(given: &str) -> Result<String, CliError> {
    let wrong = |why: &str| {
        CliError::usage(format!(
            "--url {given:?}: {why}; give the worker's ops endpoint, e.g. http://127.0.0.1:9464"
        ))
    };
    let url = reqwest::Url::parse(given).map_err(|e| wrong(&format!("not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(wrong("not an http or https URL"));
    }
    Ok(format!("{}/dashboard.json", given.trim_end_matches('/')))
}

/// One poll of `url`: the dashboard's JSON, or why not.
async fn poll(client: &reqwest::Client, url: &str, token: Option<&str>) -> Result<Value, CliError> {
    let mut req = client.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let response = req
        .send()
        .await
        .map_err(|e| CliError::runtime(format!("{url}: {e}")))?;
    let status = response.status();
    let body = response
        .text()
        .await
        .map_err(|e| CliError::runtime(format!("{url}: {e}")))?;
    if status.as_u16() == 401 {
        return Err(CliError::usage(if token.is_some() {
            format!("{url}: the worker refused the token given (--token or EBBFLOW_METRICS_TOKEN); give its metrics token")
        } else {
            format!("{url}: the worker wants its metrics token: --token or EBBFLOW_METRICS_TOKEN")
        }));
    }
    if !status.is_success() {
        return Err(CliError::runtime(format!(
            "{url}: HTTP {status}: {}",
            excerpt(&body)
        )));
    }
    serde_json::from_str(&body).map_err(|_| {
        CliError::runtime(format!(
            "{url}: HTTP {status} but not the dashboard's JSON (is this an ebbflow worker's ops endpoint?): {}",
            excerpt(&body)
        ))
    })
}

/// The start of a body for an error message: its `error` when it is ebbflow's JSON error, else at
/// most 120 characters with control characters escaped (a web page must not reach the terminal).
fn excerpt(body: &str) -> String {
    if let Some(error) = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
    {
        return error.escape_debug().to_string();
    }
    let flat: String = body.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut short: String = flat.chars().take(120).collect();
    if flat.chars().count() > 120 {
        short.push_str("...");
    }
    short.escape_debug().to_string()
}

/// The rate of counter `key` between two polls `dt` apart: `None` when it went down (the
/// worker restarted and its counters began again; no rate for that interval).
fn per_second(now: &Value, before: &Value, key: &str, dt: f64) -> Option<f64> {
    let (a, b) = (num(&now[key]), num(&before[key]));
    (a >= b).then(|| (a - b) / dt)
}

/// One table: a row per queue; rates from the difference with `previous` (`-` on the first).
fn render(doc: &Value, previous: Option<(Duration, &Value)>) -> String {
    let mut out = format!(
        "{:<24} {:>8} {:>6} {:>8} {:>10} {:>10} {:>10} {:>8}\n",
        "QUEUE", "DEPTH", "TASKS", "RUNNING", "HANDLED/S", "RECV/S", "PICKUP MS", "POISON"
    );
    let empty = Vec::new();
    for q in doc["queues"].as_array().unwrap_or(&empty) {
        let name = q["queue"].as_str().unwrap_or("?");
        let before = previous.and_then(|(dt, d)| {
            d["queues"]
                .as_array()?
                .iter()
                .find(|p| p["queue"] == name)
                .map(|p| (dt.as_secs_f64().max(0.001), p))
        });
        let rate = |key: &str| match before.and_then(|(dt, p)| per_second(q, p, key, dt)) {
            Some(r) => format!("{r:.1}"),
            None => "-".into(),
        };
        let pickup = match before {
            Some((_, p)) => {
                let n = num(&q["pickup_seconds_count"]) - num(&p["pickup_seconds_count"]);
                let s = num(&q["pickup_seconds_sum"]) - num(&p["pickup_seconds_sum"]);
                if n > 0.0 && s >= 0.0 {
                    format!("{:.0}", 1000.0 * s / n)
                } else {
                    "-".into()
                }
            }
            None => "-".into(),
        };
        let depth = q["depth"]
            .as_u64()
            .map_or_else(|| "-".into(), |d| d.to_string());
        out.push_str(&format!(
            "{:<24} {:>8} {:>6} {:>8} {:>10} {:>10} {:>10} {:>8}\n",
            name,
            depth,
            num(&q["active_tasks"]),
            num(&q["in_flight"]),
            rate("handled"),
            rate("received"),
            pickup,
            num(&q["poisoned"]),
        ));
    }
    if let Some(fleet) = doc["fleet"].as_object() {
        out.push_str(&render_fleet(
            fleet,
            previous.map(|(dt, d)| (dt, &d["fleet"])),
        ));
    }
    out.pop();
    out
}

/// The fleet table (with the bus on): a row per live instance, this one marked `*`.
fn render_fleet(
    fleet: &serde_json::Map<String, Value>,
    previous: Option<(Duration, &Value)>,
) -> String {
    let empty = Vec::new();
    let instances = fleet
        .get("instances")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    let mut out = format!("\nFLEET: {} live\n", instances.len());
    if let Some(error) = fleet.get("error").and_then(Value::as_str) {
        // The error names the bus already ("bus: ZRANGE: ...").
        let error = error.strip_prefix("bus: ").unwrap_or(error);
        out.push_str(&format!("(bus: {error})\n"));
    }
    out.push_str(&format!(
        "{:<30} {:<14} {:>6} {:>8} {:>10} {:>10} {:>9}\n",
        "INSTANCE", "ROLE", "TASKS", "RUNNING", "HANDLED", "HANDLED/S", "PULSE S"
    ));
    for i in instances {
        let id = i["instance"].as_str().unwrap_or("?");
        let before = previous.and_then(|(dt, f)| {
            f["instances"]
                .as_array()?
                .iter()
                .find(|p| p["instance"] == id)
                .map(|p| (dt.as_secs_f64().max(0.001), p))
        });
        let rate = match before.and_then(|(dt, p)| per_second(i, p, "handled", dt)) {
            Some(r) => format!("{r:.1}"),
            None => "-".into(),
        };
        let shown = if i["this"] == true {
            format!("{id} *")
        } else {
            id.to_string()
        };
        out.push_str(&format!(
            "{:<30} {:<14} {:>6} {:>8} {:>10} {:>10} {:>9.1}\n",
            shown,
            i["role"].as_str().unwrap_or("?"),
            num(&i["active_tasks"]),
            num(&i["in_flight"]),
            num(&i["handled"]),
            rate,
            num(&i["pulse_age_ms"]) / 1000.0,
        ));
    }
    out.push_str(&render_jobs(fleet));
    out
}

/// The heartbeat monitor's jobs (with the bus on, when there are any): running first, then the
/// most recently changed, as the worker sorted them.
fn render_jobs(fleet: &serde_json::Map<String, Value>) -> String {
    let Some(jobs) = fleet.get("jobs").and_then(Value::as_array) else {
        return String::new();
    };
    if jobs.is_empty() {
        return String::new();
    }
    let running = jobs.iter().filter(|j| j["state"] == "running").count();
    let stale = match jobs.iter().filter(|j| j["state"] == "stale").count() {
        0 => String::new(),
        n => format!(", {n} stale"),
    };
    let mut out = format!(
        "
JOBS: {running} running{stale}, {} shown
",
        jobs.len()
    );
    out.push_str(&format!(
        "{:<36} {:<20} {:<10} {:>10} {:>10}  {}
",
        "JOB", "INSTANCE", "STATE", "COUNT", "ELAPSED S", "TEXT"
    ));
    for j in jobs {
        let text: String = j["text"].as_str().unwrap_or("").chars().take(40).collect();
        out.push_str(&format!(
            "{:<36} {:<20} {:<10} {:>10} {:>10.1}  {}\n",
            j["id"].as_str().unwrap_or("?"),
            j["instance"].as_str().unwrap_or("?"),
            j["state"].as_str().unwrap_or("?"),
            num(&j["count"]),
            num(&j["elapsed_ms"]) / 1000.0,
            text.escape_debug(),
        ));
    }
    out
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(handled: [u64; 2], fleet: bool) -> Value {
        let instances = serde_json::json!([
            {"instance": "a-1", "role": "billing", "queues": ["orders"], "active_tasks": 3,
             "in_flight": 2, "handled": handled[0], "pulse_age_ms": 400, "this": true},
            {"instance": "b-2", "role": "billing", "queues": ["orders"], "active_tasks": 1,
             "in_flight": 0, "handled": handled[1], "pulse_age_ms": 1500, "this": false},
        ]);
        serde_json::json!({
            "version": 1,
            "queues": [{"queue": "orders", "depth": 5, "active_tasks": 3, "in_flight": 2,
                        "handled": handled[0], "received": handled[0], "poisoned": 0}],
            "fleet": if fleet { serde_json::json!({"instances": instances, "error": null}) }
                     else { Value::Null },
        })
    }

    #[test]
    fn the_fleet_table_has_a_row_per_instance_with_its_rate() {
        let before = doc([10, 20], true);
        let now = doc([30, 25], true);
        let text = render(&now, Some((Duration::from_secs(2), &before)));
        let fleet = text.split("FLEET: 2 live").nth(1).expect(&text);
        let rows: Vec<Vec<&str>> = fleet
            .lines()
            .skip(2)
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            rows,
            [
                vec!["a-1", "*", "billing", "3", "2", "30", "10.0", "0.4"],
                vec!["b-2", "billing", "1", "0", "25", "2.5", "1.5"],
            ],
            "{text}"
        );
        // No jobs: no jobs table.
        assert!(!text.contains("JOBS"), "{text}");
        let mut with_jobs = now.clone();
        with_jobs["fleet"]["jobs"] = serde_json::json!([
            {"id": "export/01", "instance": "b-2", "state": "running", "count": 300,
             "elapsed_ms": 12500, "text": "nightly\nexport"},
            {"id": "export/00", "instance": "a-1", "state": "succeeded", "count": 10,
             "elapsed_ms": 900, "text": "yesterday"},
        ]);
        let text = render(&with_jobs, None);
        let jobs = text.split("JOBS: 1 running, 2 shown").nth(1).expect(&text);
        let rows: Vec<Vec<&str>> = jobs
            .lines()
            .skip(2)
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            rows,
            [
                vec![
                    "export/01",
                    "b-2",
                    "running",
                    "300",
                    "12.5",
                    "nightly\\nexport"
                ],
                vec!["export/00", "a-1", "succeeded", "10", "0.9", "yesterday"],
            ],
            "{text}"
        );
        // Without the bus: no fleet table.
        assert!(!render(&doc([1, 1], false), None).contains("FLEET"));
    }

    #[test]
    fn a_stale_job_is_counted_in_the_jobs_title_and_shown_with_its_frozen_elapsed_time() {
        let mut doc = doc([30, 25], true);
        doc["fleet"]["jobs"] = serde_json::json!([
            {"id": "export/02", "instance": "b-2", "state": "running", "count": 3,
             "elapsed_ms": 4000, "text": "today"},
            {"id": "export/01", "instance": "gone-1", "state": "stale", "count": 300,
             "elapsed_ms": 12500, "text": "nightly"},
        ]);
        let text = render(&doc, None);
        let jobs = text
            .split("JOBS: 1 running, 1 stale, 2 shown")
            .nth(1)
            .expect(&text);
        let stale = jobs
            .lines()
            .find(|l| l.starts_with("export/01"))
            .expect(&text);
        let cells: Vec<&str> = stale.split_whitespace().collect();
        assert_eq!(
            cells,
            ["export/01", "gone-1", "stale", "300", "12.5", "nightly"]
        );
    }

    #[test]
    fn a_counter_that_went_down_gives_no_rate_and_no_doubled_bus_prefix() {
        // The worker restarted between the polls: its counters began again.
        let before = doc([5000, 20], true);
        let mut now = doc([30, 25], true);
        now["fleet"]["error"] = "bus: ZRANGE: connection refused".into();
        let text = render(&now, Some((Duration::from_secs(2), &before)));
        let orders = text.lines().nth(1).expect(&text);
        let cells: Vec<&str> = orders.split_whitespace().collect();
        // HANDLED/S and RECV/S: no rate for that interval, never a negative one.
        assert_eq!(cells[4..6], ["-", "-"], "{text}");
        assert!(!text.contains("-2485"), "{text}");
        let a1 = text.lines().find(|l| l.starts_with("a-1")).expect(&text);
        assert_eq!(a1.split_whitespace().nth(6), Some("-"), "{text}");
        assert!(text.contains("(bus: ZRANGE: connection refused)"), "{text}");
    }

    #[test]
    fn a_bad_url_names_the_flag_and_a_web_page_is_cut_and_escaped() {
        let e = dashboard_url("notaurl").unwrap_err().to_string();
        assert!(
            e.contains("--url") && e.contains("http://127.0.0.1:9464"),
            "{e}"
        );
        assert!(dashboard_url("ftp://host/").is_err());
        assert_eq!(
            dashboard_url("http://127.0.0.1:9464/").unwrap(),
            "http://127.0.0.1:9464/dashboard.json"
        );
        let page = format!("<html>\x1b[31m{}</html>", "x".repeat(500));
        let short = excerpt(&page);
        assert!(short.len() < 160 && short.ends_with("..."), "{short}");
        assert!(!short.contains('\x1b'), "{short}");
        assert_eq!(excerpt(r#"{"error":"wrong token"}"#), "wrong token");
    }
}
