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
/// frame per poll when piped. Ctrl-C ends it.
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
    /// Polls before exiting (default: until Ctrl-C). Rates need two.
    #[arg(long, value_name = "N")]
    count: Option<u32>,
}

impl Args {
    pub fn run(self, _ctx: &Context) -> Result<(), CliError> {
        if !(Duration::from_millis(200)..=Duration::from_secs(3600)).contains(&self.interval) {
            return Err(CliError::usage("--interval must be 200ms..=1h"));
        }
        let base = self.url.trim_end_matches('/').to_string();
        let url = format!("{base}/dashboard.json");
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
                let mut req = client.get(&url);
                if let Some(t) = &token {
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
                    return Err(CliError::usage(format!(
                        "{url}: the worker wants its metrics token: --token or EBBFLOW_METRICS_TOKEN"
                    )));
                }
                if !status.is_success() {
                    return Err(CliError::runtime(format!("{url}: HTTP {status}: {body}")));
                }
                let doc: Value = serde_json::from_str(&body).map_err(|e| {
                    CliError::runtime(format!("{url}: not the dashboard's JSON: {e}"))
                })?;
                let now = tokio::time::Instant::now();
                if terminal {
                    emit!("\x1b[2J\x1b[H");
                }
                say!(
                    "{}",
                    render(&doc, last.as_ref().map(|(t, d)| (now - *t, d)))
                );
                last = Some((now, doc));
                polls += 1;
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
        let rate = |key: &str| match before {
            Some((dt, p)) => format!("{:.1}", (num(&q[key]) - num(&p[key])).max(0.0) / dt),
            None => "-".into(),
        };
        let pickup = match before {
            Some((_, p)) => {
                let n = num(&q["pickup_seconds_count"]) - num(&p["pickup_seconds_count"]);
                if n > 0.0 {
                    let s = num(&q["pickup_seconds_sum"]) - num(&p["pickup_seconds_sum"]);
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
        let rate = match before {
            Some((dt, p)) => format!(
                "{:.1}",
                (num(&i["handled"]) - num(&p["handled"])).max(0.0) / dt
            ),
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
    let mut out = format!(
        "
JOBS: {running} running, {} shown
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
}
