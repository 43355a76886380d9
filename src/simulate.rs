//! The scaling simulator: runs the real worker, listener and scaling policy on the embedded
//! store against a load profile, in virtual time (tokio's paused clock), so an hour of traffic
//! takes seconds. It samples depth, tasks, receive calls and pickup latency every virtual second
//! and summarizes cost and latency.
//!
//! A profile is a TOML file:
//!
//! ```toml
//! duration = "10m"      # how long to simulate
//! handler_ms = 20       # simulated work per message
//! trigger = false       # whether the producer publishes through this process (push trigger)
//! [[phases]]            # from `at` until the next phase: `rate` messages/s, after an
//! at = "0s"             # optional one-off `burst`
//! rate = 0
//! [[phases]]
//! at = "60s"
//! burst = 2000
//! ```

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;

use crate::codec::Encoding;
use crate::config::{QueueSettings, Settings};
use crate::handler::{Context, Handler, HandlerError, Publisher};
use crate::store::counting::{CallCounts, CountingStore};
use crate::store::memory::MemoryStore;
use crate::store::QueueStore;
use crate::worker::Worker;

const QUEUE: &str = "simulated";

/// A load profile.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// How long to run.
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    /// Simulated work per message, in milliseconds.
    #[serde(default)]
    pub handler_ms: u64,
    /// The producer publishes through this process, so each send is a push trigger.
    #[serde(default)]
    pub trigger: bool,
    /// Arrival phases, in order of `at`.
    pub phases: Vec<Phase>,
}

/// One arrival phase.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Phase {
    /// When it starts.
    #[serde(with = "humantime_serde")]
    pub at: Duration,
    /// Messages per second until the next phase.
    #[serde(default)]
    pub rate: f64,
    /// Messages sent at once when the phase starts.
    #[serde(default)]
    pub burst: u64,
}

impl Profile {
    /// Reads and checks a profile file.
    pub fn load(path: &std::path::Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("profile {}: {e}", path.display()))?;
        let profile: Profile =
            toml_from_str(&text).map_err(|e| format!("profile {}: {e}", path.display()))?;
        for (i, p) in profile.phases.iter().enumerate() {
            if !(p.rate.is_finite() && (0.0..=10_000.0).contains(&p.rate)) {
                return Err(format!(
                    "profile phases[{i}].rate = {}: must be 0..=10000",
                    p.rate
                ));
            }
            if i > 0 && p.at < profile.phases[i - 1].at {
                return Err(format!(
                    "profile phases[{i}].at: phases must be in time order"
                ));
            }
        }
        Ok(profile)
    }
}

fn toml_from_str<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
    config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml))
        .build()
        .and_then(|c| c.try_deserialize())
        .map_err(|e| e.to_string())
}

/// One virtual second.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Seconds since the start.
    pub t: u64,
    /// Messages on the queue (visible or not) at the end of the second.
    pub depth: u64,
    /// Dequeue tasks running.
    pub tasks: u64,
    /// Receive calls made during the second.
    pub receive_calls: u64,
    /// Messages handled during the second.
    pub handled: u64,
    /// Median pickup latency (send to handler start) of the messages started this second.
    pub pickup_p50_ms: Option<f64>,
}

/// The totals of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Simulated seconds.
    pub seconds: u64,
    /// Messages sent by the profile.
    pub sent: u64,
    /// Messages handled.
    pub handled: u64,
    /// Worker storage calls (receive, delete, update, peek, properties).
    pub storage_calls: u64,
    /// Receive calls.
    pub receive_calls: u64,
    /// Storage calls per handled message.
    pub calls_per_message: f64,
    /// Worker storage calls per hour in seconds with nothing to do (empty queue, nothing
    /// handled), or 0 when there were none.
    pub idle_calls_per_hour: f64,
    /// Median pickup latency.
    pub pickup_p50_ms: f64,
    /// 99th percentile pickup latency.
    pub pickup_p99_ms: f64,
    /// Most tasks at once.
    pub peak_tasks: u64,
}

/// Records pickup latency and sleeps the simulated work.
#[derive(Clone)]
struct Simulated {
    work: Duration,
    pickups: Arc<Mutex<Vec<Duration>>>,
}

impl Handler for Simulated {
    type Message = Vec<u8>;

    async fn handle(&self, _body: Vec<u8>, ctx: Context) -> Result<(), HandlerError> {
        if let Some(sent) = ctx.inserted_at() {
            let waited = (crate::store::now_utc() - sent).unsigned_abs();
            self.pickups.lock().expect("pickups mutex").push(waited);
        }
        tokio::time::sleep(self.work).await;
        Ok(())
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

/// Runs `profile` against a queue with `queue` settings on the clock of the current runtime
/// (paused for a simulation, real for a comparison).
pub async fn run(
    profile: &Profile,
    queue: QueueSettings,
) -> Result<(Vec<Sample>, Summary), String> {
    let memory = MemoryStore::new();
    let counting = CountingStore::new(Arc::new(memory.clone()));
    let counts: Arc<CallCounts> = counting.counts();
    let mut settings = Settings::default();
    let mut queue = queue;
    queue.encoding = Encoding::None;
    settings.queues.insert(QUEUE.to_string(), queue);
    settings.validate().map_err(|e| e.to_string())?;
    let pickups = Arc::new(Mutex::new(Vec::new()));
    let handler = Simulated {
        work: Duration::from_millis(profile.handler_ms),
        pickups: pickups.clone(),
    };
    let worker = Worker::new(settings)
        .with_store(Arc::new(counting))
        .handler(QUEUE, handler)
        .start()
        .await
        .map_err(|e| e.to_string())?;
    let raw = memory.queue(QUEUE).map_err(|e| e.to_string())?;
    let publisher = if profile.trigger {
        worker.publisher(QUEUE).expect("configured")
    } else {
        Publisher::new(raw.clone(), Encoding::None)
    };
    let producer = tokio::spawn(produce(profile.clone(), publisher));

    let start = tokio::time::Instant::now();
    let mut samples = Vec::new();
    let (mut last_receives, mut last_handled, mut last_pickups) = (0, 0, 0);
    let (mut idle_seconds, mut idle_calls, mut last_calls) = (0u64, 0u64, 0u64);
    let seconds = profile.duration.as_secs();
    for t in 1..=seconds {
        tokio::time::sleep_until(start + Duration::from_secs(t)).await;
        let snap = worker.snapshot().remove(0);
        let depth = raw.approximate_depth().await.map_err(|e| e.to_string())?;
        let receives = CallCounts::get(&counts.receive);
        let calls = counts.worker_calls();
        let mut second: Vec<Duration> = {
            let all = pickups.lock().expect("pickups mutex");
            all[last_pickups..].to_vec()
        };
        last_pickups += second.len();
        second.sort();
        let handled = snap.handled - last_handled;
        if depth == 0 && handled == 0 && snap.in_flight == 0 {
            idle_seconds += 1;
            idle_calls += calls - last_calls;
        }
        samples.push(Sample {
            t,
            depth,
            tasks: snap.active_tasks,
            receive_calls: receives - last_receives,
            handled,
            pickup_p50_ms: (!second.is_empty()).then(|| percentile(&second, 50.0)),
        });
        (last_receives, last_handled, last_calls) = (receives, snap.handled, calls);
    }
    let sent = producer.await.map_err(|e| e.to_string())??;
    let report = worker.shutdown().await;
    let snap = &report.queues[0];
    let mut all = pickups.lock().expect("pickups mutex").clone();
    all.sort();
    let storage_calls = counts.worker_calls();
    let summary = Summary {
        seconds,
        sent,
        handled: snap.handled,
        storage_calls,
        receive_calls: CallCounts::get(&counts.receive),
        calls_per_message: storage_calls as f64 / snap.handled.max(1) as f64,
        idle_calls_per_hour: if idle_seconds == 0 {
            0.0
        } else {
            idle_calls as f64 * 3600.0 / idle_seconds as f64
        },
        pickup_p50_ms: percentile(&all, 50.0),
        pickup_p99_ms: percentile(&all, 99.0),
        peak_tasks: snap.peak_tasks,
    };
    Ok((samples, summary))
}

/// Sends the profile's messages on the current clock; returns how many were sent.
async fn produce(profile: Profile, publisher: Publisher) -> Result<u64, String> {
    let start = tokio::time::Instant::now();
    let mut sent = 0u64;
    for (i, phase) in profile.phases.iter().enumerate() {
        let end = profile
            .phases
            .get(i + 1)
            .map_or(profile.duration, |next| next.at)
            .min(profile.duration);
        tokio::time::sleep_until(start + phase.at).await;
        for _ in 0..phase.burst {
            publisher
                .send_bytes(b"x", Default::default())
                .await
                .map_err(|e| e.to_string())?;
            sent += 1;
        }
        if phase.rate > 0.0 {
            let step = Duration::from_secs_f64(1.0 / phase.rate);
            let mut next = start + phase.at;
            while next < start + end {
                tokio::time::sleep_until(next).await;
                publisher
                    .send_bytes(b"x", Default::default())
                    .await
                    .map_err(|e| e.to_string())?;
                sent += 1;
                next += step;
            }
        }
    }
    Ok(sent)
}

/// Runs `profile` in virtual time on a fresh paused runtime.
pub fn simulate(profile: &Profile, queue: QueueSettings) -> Result<(Vec<Sample>, Summary), String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .map_err(|e| e.to_string())?
        .block_on(run(profile, queue))
}

/// The samples as CSV.
pub fn csv(samples: &[Sample]) -> String {
    let mut out = String::from("t_s,depth,tasks,receive_calls,handled,pickup_p50_ms\n");
    for s in samples {
        let p50 = s
            .pickup_p50_ms
            .map(|v| format!("{v:.1}"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{},{},{},{},{},{}",
            s.t, s.depth, s.tasks, s.receive_calls, s.handled, p50
        );
    }
    out
}

/// The summary as a short text table.
pub fn summary_text(s: &Summary) -> String {
    format!(
        "simulated        {} s\nsent             {}\nhandled          {}\nstorage calls    {} ({} receives)\n\
         calls/message    {:.3}\nidle calls/hour  {:.0}\npickup p50       {:.1} ms\npickup p99       {:.1} ms\npeak tasks       {}\n",
        s.seconds, s.sent, s.handled, s.storage_calls, s.receive_calls, s.calls_per_message,
        s.idle_calls_per_hour, s.pickup_p50_ms, s.pickup_p99_ms, s.peak_tasks
    )
}

/// An SVG chart: one panel each for depth, tasks, receive calls per second and pickup p50.
pub fn svg(samples: &[Sample], title: &str) -> String {
    let (w, panel_h, left, gap) = (900.0, 120.0, 70.0, 30.0);
    type Series = fn(&Sample) -> Option<f64>;
    let panels: [(&str, &str, Series); 4] = [
        ("queue depth", "#1f77b4", |s| Some(s.depth as f64)),
        ("dequeue tasks", "#2ca02c", |s| Some(s.tasks as f64)),
        ("receive calls / s", "#d62728", |s| {
            Some(s.receive_calls as f64)
        }),
        ("pickup p50 (ms)", "#9467bd", |s| s.pickup_p50_ms),
    ];
    let height = 40.0 + panels.len() as f64 * (panel_h + gap);
    let t_max = samples.last().map_or(1, |s| s.t).max(1) as f64;
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{height}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{left}" y="20" font-size="14">{}</text>
"#,
        xml_escape(title)
    );
    for (i, (label, color, value)) in panels.iter().enumerate() {
        let top = 40.0 + i as f64 * (panel_h + gap);
        let max = samples
            .iter()
            .filter_map(value)
            .fold(0.0f64, f64::max)
            .max(1.0);
        let plot_w = w - left - 20.0;
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
        let _ = write!(
            out,
            r##"<text x="{left}" y="{:.1}">{label} (max {max:.0})</text>
<rect x="{left}" y="{top}" width="{plot_w}" height="{panel_h}" fill="none" stroke="#ccc"/>
<text x="{:.1}" y="{:.1}" text-anchor="end">{max:.0}</text><text x="{:.1}" y="{:.1}" text-anchor="end">0</text>
<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/>
"##,
            top - 4.0,
            left - 6.0,
            top + 10.0,
            left - 6.0,
            top + panel_h,
            points.join(" ")
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

#[cfg(test)]
mod tests {
    use super::*;

    fn burst_profile() -> Profile {
        toml_from_str(
            "duration = \"300s\"\nhandler_ms = 20\n[[phases]]\nat = \"0s\"\nrate = 0\n\
             [[phases]]\nat = \"30s\"\nburst = 2000\n[[phases]]\nat = \"60s\"\nrate = 5\n\
             [[phases]]\nat = \"120s\"\nrate = 0\n",
        )
        .unwrap()
    }

    #[test]
    fn a_burst_profile_in_virtual_time() {
        let mut q = QueueSettings::default();
        q.scaling.max_tasks = 8;
        q.scaling.messages_per_task = 100;
        let (samples, summary) = simulate(&burst_profile(), q).unwrap();
        assert_eq!(samples.len(), 300);
        assert_eq!(summary.sent, 2000 + 300);
        assert_eq!(summary.handled, summary.sent, "{summary:?}");
        assert_eq!(summary.peak_tasks, 8);
        // Consuming costs about two calls a message (receive + delete) at small batches, and
        // approaches one plus a little at full batches.
        assert!(
            (1.0..2.2).contains(&summary.calls_per_message),
            "{summary:?}"
        );
        // No push trigger: the idle task may be in a 30 s back-off sleep when the burst lands,
        // so the scale-up shows within 30 s and pickup can take as long.
        let after_burst = samples.iter().filter(|s| s.t > 30 && s.t <= 70);
        assert!(after_burst.map(|s| s.tasks).max().unwrap() >= 4);
        assert!(summary.pickup_p99_ms <= 35_000.0, "{summary:?}");
        let late = samples.last().unwrap();
        assert_eq!((late.tasks, late.depth), (1, 0), "{late:?}");
        let text = csv(&samples);
        assert!(text.starts_with("t_s,depth,tasks,receive_calls,handled,pickup_p50_ms\n1,0,1,"));
        assert_eq!(text.lines().count(), 301);
        let chart = svg(&samples, "burst");
        assert_eq!(chart.matches("<polyline").count(), 4);
    }

    #[test]
    fn bad_profiles_are_named() {
        struct RemoveOnDrop(std::path::PathBuf);
        impl Drop for RemoveOnDrop {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
        let dir = std::env::temp_dir().join(format!("ebbflow-profile-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let _cleanup = RemoveOnDrop(dir.clone());
        let path = dir.join("p.toml");
        std::fs::write(
            &path,
            "duration = \"1m\"\n[[phases]]\nat = \"0s\"\nrate = -1\n",
        )
        .unwrap();
        let err = Profile::load(&path).unwrap_err();
        assert!(err.contains("phases[0].rate = -1"), "{err}");
        std::fs::write(&path, "duration = \"1m\"\nphases = []\nextra = 1\n").unwrap();
        assert!(Profile::load(&path).unwrap_err().contains("extra"));
    }
}
