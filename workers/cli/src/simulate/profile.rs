//! A load profile: the TOML file the simulator runs (duration, handler time, queues, arrival
//! phases, optional `[replicas]` and `[service]`), read and checked with errors naming the key.

use std::time::Duration;

use serde::Deserialize;

use super::keda::ReplicaSettings;
use super::service::ServiceSettings;

/// The most messages per second a phase may send.
pub const MAX_RATE: f64 = 1_000_000.0;

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
    /// The producer publishes through this process, so each send is a push trigger (only
    /// without `[replicas]`: with many replicas the producer is another process).
    #[serde(default)]
    pub trigger: bool,
    /// Queues the load is spread over (round-robin), 1..=100, each with the same rules; named
    /// `simulated` (one) or `simulated-0 ..` (more).
    #[serde(default = "one")]
    pub queues: u32,
    /// Arrival phases, in order of `at`.
    pub phases: Vec<Phase>,
    /// A KEDA-like controller over replicas; without it, one replica runs throughout.
    #[serde(default)]
    pub replicas: Option<ReplicaSettings>,
    /// The targets the simulated service enforces.
    #[serde(default)]
    pub service: ServiceSettings,
}

fn one() -> u32 {
    1
}

/// One arrival phase.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Phase {
    /// When it starts.
    #[serde(with = "humantime_serde")]
    pub at: Duration,
    /// Messages per second until the next phase, over all queues.
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
        profile
            .validate()
            .map_err(|e| format!("{e} (in {})", path.display()))?;
        Ok(profile)
    }

    /// Checks the values; errors name the key.
    pub fn validate(&self) -> Result<(), String> {
        for (i, p) in self.phases.iter().enumerate() {
            if !(p.rate.is_finite() && (0.0..=MAX_RATE).contains(&p.rate)) {
                return Err(format!(
                    "profile phases[{i}].rate = {}: must be 0..={MAX_RATE}",
                    p.rate
                ));
            }
            if i > 0 && p.at < self.phases[i - 1].at {
                return Err(format!(
                    "profile phases[{i}].at: phases must be in time order"
                ));
            }
        }
        if !(1..=100).contains(&self.queues) {
            return Err(format!("profile queues = {}: must be 1..=100", self.queues));
        }
        if self.duration > Duration::from_secs(7 * 24 * 3600) {
            return Err("profile duration: must be at most 7 days".into());
        }
        if let Some(r) = &self.replicas {
            r.validate()?;
            if self.trigger {
                return Err(
                    "profile trigger = true: not with [replicas] (the producer of a fleet is \
                     another process; its sends reach no replica's in-process trigger)"
                        .into(),
                );
            }
        }
        self.service.validate()
    }

    /// The simulated queues' names.
    pub fn queue_names(&self) -> Vec<String> {
        match self.queues {
            1 => vec![QUEUE.to_string()],
            n => (0..n).map(|i| format!("{QUEUE}-{i}")).collect(),
        }
    }
}

const QUEUE: &str = "simulated";

pub(super) fn toml_from_str<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
    config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml))
        .build()
        .and_then(|c| c.try_deserialize())
        .map_err(|e| e.to_string())
}
