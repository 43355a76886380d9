//! Burst: messages sent by 16 producers while the consumer idles (ebbflow gets one push
//! trigger); drain time, throughput, calls per message, peak RSS, duplicates and losses, and
//! the depth / tasks chart. ebbflow against the classic listener at equal concurrency.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::proxy::CountSnapshot;
use crate::env::{send_burst, spawn, Env, Kind, Setup, Tally};
use crate::report::{median, range};

/// One point of the burst chart.
#[derive(Debug, Clone, Copy)]
pub struct Point {
    t: f64,
    depth: u64,
    tasks: u64,
}

#[derive(Debug, Clone)]
pub struct Burst {
    pub drain_s: f64,
    /// From the first send until the producers' last send returned.
    pub send_s: f64,
    pub per_s: f64,
    pub calls_per_message: f64,
    pub calls: CountSnapshot,
    pub duplicates: usize,
    pub lost: usize,
    pub peak_rss_mb: f64,
    pub points: Vec<Point>,
}

pub async fn burst(env: &Env, kind: Kind, run: usize, n: usize, concurrency: u32) -> Burst {
    let name = format!("burst{run}{}", kind.name());
    let queue = env.fresh_queue(&name).await;
    let worker = spawn(
        env,
        kind,
        &name,
        &Setup::new(1, true).concurrency(concurrency),
    );
    worker.wait_ready().await;
    // The worker idles first: ebbflow's task backs off, the classic loops poll every second.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = env.proxy.counts_for(&name);
    let start = Instant::now();
    let sender = {
        let queue = queue.clone();
        let name = name.clone();
        tokio::spawn(async move {
            let sent = send_burst(&queue, &name, n).await;
            (sent, start.elapsed().as_secs_f64())
        })
    };
    // The producer's push trigger, as soon as the first messages are on their way.
    tokio::time::sleep(Duration::from_millis(5)).await;
    worker.trigger(&env.client).await;
    let mut points = Vec::new();
    let deadline = start + Duration::from_secs(300);
    loop {
        let depth = queue.approximate_depth().await.unwrap_or(0);
        let tasks = worker.tasks(&env.client).await;
        points.push(Point {
            t: start.elapsed().as_secs_f64(),
            depth,
            tasks,
        });
        let unique: BTreeSet<String> = worker.records().into_iter().map(|r| r.0).collect();
        if sender.is_finished() && unique.len() >= n && depth == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "burst on {name} did not drain");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let drain_s = start.elapsed().as_secs_f64();
    let calls = env.proxy.counts_for(&name).since(&before);
    let peak_rss_mb = worker.status_kb("VmHWM:") as f64 / 1024.0;
    let (expected, send_s) = sender.await.unwrap();
    let tally = Tally::of(&expected, &worker.records());
    worker.stop();
    Burst {
        drain_s,
        send_s,
        per_s: n as f64 / drain_s,
        calls_per_message: calls.consumer_calls() as f64 / n as f64,
        calls,
        duplicates: tally.duplicates,
        lost: tally.lost,
        peak_rss_mb,
        points,
    }
}

pub fn burst_json(runs: &[Burst]) -> Value {
    let per_s: Vec<f64> = runs.iter().map(|b| b.per_s).collect();
    let drain: Vec<f64> = runs.iter().map(|b| b.drain_s).collect();
    let send: Vec<f64> = runs.iter().map(|b| b.send_s).collect();
    let calls: Vec<f64> = runs.iter().map(|b| b.calls_per_message).collect();
    let rss: Vec<f64> = runs.iter().map(|b| b.peak_rss_mb).collect();
    json!({
        "median": {
            "messages_per_s": median(&per_s),
            "drain_s": median(&drain),
            "send_s": median(&send),
            "calls_per_message": median(&calls),
            "peak_rss_mb": median(&rss),
        },
        "range": {
            "messages_per_s": range(&per_s),
            "drain_s": range(&drain),
            "send_s": range(&send),
            "calls_per_message": range(&calls),
            "peak_rss_mb": range(&rss),
        },
        "duplicates": runs.iter().map(|b| b.duplicates).sum::<usize>(),
        "lost": runs.iter().map(|b| b.lost).sum::<usize>(),
        "runs": runs.iter().map(|b| json!({
            "drain_s": b.drain_s,
            "send_s": b.send_s,
            "messages_per_s": b.per_s,
            "calls_per_message": b.calls_per_message,
            "calls": crate::report::calls_json(&b.calls),
            "duplicates": b.duplicates,
            "lost": b.lost,
            "peak_rss_mb": b.peak_rss_mb,
            "peak_tasks": b.points.iter().map(|p| p.tasks).max().unwrap_or(0),
        })).collect::<Vec<_>>(),
    })
}

/// Queue depth and active tasks over time, ebbflow against the classic listener.
pub fn chart(ebb: &Burst, classic: &Burst, concurrency: u32, title: &str) -> String {
    let (w, h, left, right, top, bottom) = (860.0, 340.0, 60.0, 60.0, 40.0, 60.0);
    let t_max = ebb
        .points
        .iter()
        .chain(&classic.points)
        .map(|p| p.t)
        .fold(1.0, f64::max);
    let d_max = ebb
        .points
        .iter()
        .chain(&classic.points)
        .map(|p| p.depth)
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let k_max = f64::from(concurrency);
    let x = |t: f64| left + (w - left - right) * t / t_max;
    let yd = |d: f64| top + (h - top - bottom) * (1.0 - d / d_max);
    let yk = |k: f64| top + (h - top - bottom) * (1.0 - k / k_max);
    let line = |pts: &[Point], f: &dyn Fn(&Point) -> (f64, f64), color: &str, dash: &str| {
        let coords: Vec<String> = pts
            .iter()
            .map(|p| {
                let (a, b) = f(p);
                format!("{a:.1},{b:.1}")
            })
            .collect();
        format!(
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" stroke-dasharray=\"{dash}\" points=\"{}\"/>",
            coords.join(" ")
        )
    };
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\
         <text x=\"{left}\" y=\"20\" font-size=\"14\">{title}</text>\
         <line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#999\"/>\
         <line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{}\" stroke=\"#999\"/>\
         <line x1=\"{}\" y1=\"{top}\" x2=\"{}\" y2=\"{}\" stroke=\"#999\"/>",
        h - bottom,
        w - right,
        h - bottom,
        h - bottom,
        w - right,
        w - right,
        h - bottom
    );
    for i in 0..=4 {
        let d = d_max * f64::from(i) / 4.0;
        let k = k_max * f64::from(i) / 4.0;
        svg.push_str(&format!(
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{d:.0}</text><text x=\"{}\" y=\"{:.1}\">{k:.0}</text>",
            left - 6.0,
            yd(d) + 4.0,
            w - right + 6.0,
            yk(k) + 4.0
        ));
        let t = t_max * f64::from(i) / 4.0;
        svg.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{t:.1} s</text>",
            x(t),
            h - bottom + 16.0
        ));
    }
    svg.push_str(&line(
        &ebb.points,
        &|p| (x(p.t), yd(p.depth as f64)),
        "#1f77b4",
        "",
    ));
    svg.push_str(&line(
        &classic.points,
        &|p| (x(p.t), yd(p.depth as f64)),
        "#888",
        "6,4",
    ));
    svg.push_str(&line(
        &ebb.points,
        &|p| (x(p.t), yk(p.tasks as f64)),
        "#ff7f0e",
        "",
    ));
    svg.push_str(&format!(
        "<text x=\"{}\" y=\"{}\" fill=\"#1f77b4\">ebbflow queue depth (left)</text>\
         <text x=\"{}\" y=\"{}\" fill=\"#888\">classic queue depth (left)</text>\
         <text x=\"{}\" y=\"{}\" fill=\"#ff7f0e\">ebbflow active tasks (right; classic: always {concurrency} loops)</text></svg>",
        left,
        h - 12.0,
        left + 200.0,
        h - 12.0,
        left + 400.0,
        h - 12.0
    ));
    svg
}
