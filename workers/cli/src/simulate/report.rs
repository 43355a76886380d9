//! What a simulation writes: the samples as CSV, an SVG chart, the summary as text, and the
//! comparison table.

use std::fmt::Write as _;

use super::{Comparison, Sample, Summary};

/// The samples as CSV: `t_s,depth,tasks,receive_calls,handled,pickup_p50_ms,replicas,throttled_calls`.
pub fn csv(samples: &[Sample]) -> String {
    let mut out = String::from(
        "t_s,depth,tasks,receive_calls,handled,pickup_p50_ms,replicas,throttled_calls\n",
    );
    for s in samples {
        let p50 = s
            .pickup_p50_ms
            .map(|v| format!("{v:.1}"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{}",
            s.t, s.depth, s.tasks, s.receive_calls, s.handled, p50, s.replicas, s.throttled_calls
        );
    }
    out
}

/// The summary as a short text table.
pub fn summary_text(s: &Summary) -> String {
    let mut out = format!(
        "simulated        {} s\nsent             {}\nhandled          {} ({} left on the queues)\nstorage calls    {} ({} receives)\n\
         calls/message    {:.3}\nidle calls/hour  {:.0}\npickup p50       {:.1} ms\npickup p99       {:.1} ms\npeak tasks       {}\n",
        s.seconds, s.sent, s.handled, s.left, s.storage_calls, s.receive_calls, s.calls_per_message,
        s.idle_calls_per_hour, s.pickup_p50_ms, s.pickup_p99_ms, s.peak_tasks
    );
    let _ = write!(
        out,
        "peak replicas    {}\nreplica-minutes  {:.1}\nscaler calls     {}\nthrottled calls  {} ({} over a queue's target, {} over an account's)\n",
        s.peak_replicas,
        s.replica_minutes,
        s.scaler_calls,
        s.throttled_queue + s.throttled_account,
        s.throttled_queue,
        s.throttled_account
    );
    if s.throttled_queue > 0 {
        out.push_str(
            "hint             a queue was over ~2,000 messages/s: shard it (queues.<name>.shards)\n",
        );
    }
    if s.throttled_account > 0 {
        out.push_str(
            "hint             an account was over ~20,000 requests/s: spread the queues over \
             accounts ([service] accounts in the profile)\n",
        );
    }
    out
}

/// The comparison as a Markdown table.
pub fn comparison_table(c: &Comparison) -> String {
    let mut out = String::from(
        "| scaling | replica-minutes | peak replicas | peak tasks | calls/message | pickup p50 | pickup p99 | handled | throttled calls |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (label, s) in [
        (
            "KEDA only (1 task, concurrency 1 per replica)",
            &c.keda_only,
        ),
        ("ebbflow tasks under KEDA", &c.ebbflow),
    ] {
        let _ = writeln!(
            out,
            "| {label} | {:.1} | {} | {} | {:.3} | {:.0} ms | {:.0} ms | {} / {} | {} |",
            s.replica_minutes,
            s.peak_replicas,
            s.peak_tasks,
            s.calls_per_message,
            s.pickup_p50_ms,
            s.pickup_p99_ms,
            s.handled,
            s.sent,
            s.throttled_queue + s.throttled_account
        );
    }
    out
}

/// An SVG chart: one panel each for depth, tasks beside replicas, receive calls per second,
/// throttled calls per second and pickup p50. Each line has its own scale, named in its label.
pub fn svg(samples: &[Sample], title: &str) -> String {
    let (w, panel_h, left, gap) = (900.0, 110.0, 70.0, 30.0);
    type Series = fn(&Sample) -> Option<f64>;
    let panels: [&[(&str, &str, Series)]; 5] = [
        &[("queue depth", "#1f77b4", |s| Some(s.depth as f64))],
        &[
            ("dequeue tasks", "#2ca02c", |s| Some(s.tasks as f64)),
            ("replicas", "#ff7f0e", |s| Some(s.replicas as f64)),
        ],
        &[("receive calls / s", "#d62728", |s| {
            Some(s.receive_calls as f64)
        })],
        &[("throttled calls / s (503)", "#8c564b", |s| {
            Some(s.throttled_calls as f64)
        })],
        &[("pickup p50 (ms)", "#9467bd", |s| s.pickup_p50_ms)],
    ];
    let height = 40.0 + panels.len() as f64 * (panel_h + gap);
    let t_max = samples.last().map_or(1, |s| s.t).max(1) as f64;
    let plot_w = w - left - 20.0;
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{height}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{left}" y="20" font-size="14">{}</text>
"#,
        xml_escape(title)
    );
    for (i, lines) in panels.iter().enumerate() {
        let top = 40.0 + i as f64 * (panel_h + gap);
        let mut labels = Vec::new();
        let _ = writeln!(
            out,
            r##"<rect x="{left}" y="{top}" width="{plot_w}" height="{panel_h}" fill="none" stroke="#ccc"/>"##
        );
        for (label, color, value) in lines.iter() {
            let max = samples
                .iter()
                .filter_map(value)
                .fold(0.0f64, f64::max)
                .max(1.0);
            let points: Vec<String> = samples
                .iter()
                .filter_map(|s| {
                    value(s).map(|v| {
                        let x = left + s.t as f64 / t_max * plot_w;
                        let y = top + panel_h - v / max * panel_h;
                        format!("{x:.1},{y:.1}")
                    })
                })
                .collect();
            let _ = writeln!(
                out,
                r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/>"#,
                points.join(" ")
            );
            labels.push(format!(
                r#"<tspan fill="{color}">{label} (max {max:.0})</tspan>"#
            ));
        }
        let _ = writeln!(
            out,
            r#"<text x="{left}" y="{:.1}">{}</text>"#,
            top - 4.0,
            labels.join("  ")
        );
    }
    let axis_y = height - 8.0;
    let _ = write!(
        out,
        r#"<text x="{left}" y="{axis_y}">0 s</text><text x="{:.1}" y="{axis_y}" text-anchor="end">{t_max:.0} s</text>
</svg>
"#,
        w - 20.0
    );
    out
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
