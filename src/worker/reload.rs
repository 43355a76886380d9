//! Live reload of the scaling rules: from a changed config folder on SIGHUP or on the bus
//! command `ebbflow reload --role R` ([`ReloadRequested`]), or from settings given in code
//! ([`super::RunningWorker::reload`]).
//!
//! Reloadable, per queue that runs: `[queues.<q>.scaling]` (all but `wake_on_publish`) and
//! `[queues.<q>.idle_backoff]`. Every other changed key (the bus, storage, a queue added or
//! removed, encoding, concurrency, ...) is named in a warning as needing a restart and is not
//! applied. The whole new config is checked first, and so is the running config with the new
//! rules in it: if either fails, the error names the key and nothing changes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tracing::{error, info, warn};

use crate::bus::events::{Change, ReloadRequested, Reloaded};
use crate::bus::{BusHandle, Filter};
use crate::config::{ConfigError, Settings};
use crate::listener::QueueListener;

/// A running worker's config and the listeners a reload retunes.
pub(crate) struct Reloader {
    /// The settings in force: those the worker started with, with the reloaded rules in them.
    current: Mutex<Settings>,
    /// Each queue's listener, by queue name.
    listeners: BTreeMap<String, QueueListener>,
}

impl Reloader {
    pub(crate) fn new(settings: Settings, listeners: BTreeMap<String, QueueListener>) -> Self {
        Self {
            current: Mutex::new(settings),
            listeners,
        }
    }

    /// The config folder the worker's settings were read from, if any.
    fn folder(&self) -> Option<PathBuf> {
        self.lock().origin().dir.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Settings> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads the config folder again (with the process's environment, as at start-up) and
    /// applies what changed.
    pub(crate) fn reread(&self) -> Result<Reloaded, ConfigError> {
        let Some(dir) = self.folder() else {
            return Err(ConfigError::Load(
                "the worker's settings were built in code, not read from a config folder: \
                 there is nothing to reload from (use RunningWorker::reload)"
                    .into(),
            ));
        };
        let env: BTreeMap<String, String> = std::env::vars().collect();
        self.apply(Settings::load_from(&dir, &env)?)
    }

    /// Applies the reloadable rules of `new`, logging each change with its old and new value
    /// and warning of each changed key that needs a restart. All or nothing: an invalid `new`,
    /// or reloadable rules that contradict the running config, change nothing.
    pub(crate) fn apply(&self, new: Settings) -> Result<Reloaded, ConfigError> {
        new.validate()?;
        let mut current = self.lock();
        let mut next = current.clone();
        for (name, q) in &mut next.queues {
            if let Some(n) = new.queues.get(name) {
                q.scaling = crate::config::ScalingSettings {
                    wake_on_publish: q.scaling.wake_on_publish,
                    ..n.scaling.clone()
                };
                q.idle_backoff = n.idle_backoff;
            }
        }
        // The new rules among the keys that stay (a rule may lean on one that needs a
        // restart, e.g. `min_tasks = 0` on a trigger not enabled yet).
        next.validate()?;
        let before = to_value(&current)?;
        let after = to_value(&new)?;
        let mut changed = Vec::new();
        diff(&mut Vec::new(), Some(&before), Some(&after), &mut changed);
        let mut outcome = Reloaded::default();
        for (path, old, new) in changed {
            let key = path.join(".");
            if reloadable(&path, &current) {
                outcome.applied.push(Change {
                    key,
                    old: shown(old),
                    new: shown(new),
                });
            } else {
                outcome.needs_restart.push(key);
            }
        }
        for (name, listener) in &self.listeners {
            let (Some(was), Some(now)) = (current.queues.get(name), next.queues.get(name)) else {
                continue;
            };
            if was.scaling != now.scaling || was.idle_backoff != now.idle_backoff {
                listener.retune(now.scaling.clone(), now.idle_backoff);
            }
        }
        *current = next;
        drop(current);
        for change in &outcome.applied {
            info!(key = %change.key, old = %change.old, new = %change.new, "config reloaded: value applied");
        }
        for key in &outcome.needs_restart {
            warn!(key = %key, "config reloaded: this key changed but needs a restart; not applied");
        }
        if outcome.applied.is_empty() && outcome.needs_restart.is_empty() {
            info!("config reloaded: nothing changed");
        }
        Ok(outcome)
    }

    /// Reloads on SIGHUP (when the settings came from a folder) and answers `ebbflow reload`
    /// on the bus, until the bus closes or the worker stops.
    pub(crate) fn serve(self: &Arc<Self>, bus: &BusHandle, tasks: &super::tasks::Tasks) {
        let this = self.clone();
        drop(bus.respond(Filter::new(), move |req: crate::bus::Received<ReloadRequested>| {
            info!(from = %req.from, reason = %req.body.reason, "config reload requested on the bus");
            let outcome = this.reread().inspect_err(|e| {
                error!(error = %e, "config reload rejected; the old rules stay");
            });
            async move { outcome.map_err(Into::into) }
        }));
        #[cfg(unix)]
        if self.folder().is_some() {
            let this = self.clone();
            let stop = tasks.stop();
            tasks.service("reload on SIGHUP".into(), move || {
                let (this, stop) = (this.clone(), stop.clone());
                async move {
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = on_hangup(&this) => {}
                    }
                }
            });
        }
        #[cfg(not(unix))]
        let _ = tasks;
    }
}

/// Reloads at each SIGHUP, until the worker stops (the service ends with it).
#[cfg(unix)]
async fn on_hangup(reloader: &Reloader) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot listen for SIGHUP: reload with `ebbflow reload` instead");
            return;
        }
    };
    while hangups.recv().await.is_some() {
        info!(signal = "SIGHUP", "config reload requested");
        if let Err(e) = reloader.reread() {
            error!(error = %e, "config reload rejected; the old rules stay");
        }
    }
}

fn to_value(settings: &Settings) -> Result<Value, ConfigError> {
    serde_json::to_value(settings)
        .map_err(|e| ConfigError::Load(format!("cannot compare the settings: {e}")))
}

/// Whether the key at `path` is applied live: `queues.<q>.scaling.*` (not `wake_on_publish`)
/// and `queues.<q>.idle_backoff.*` of a queue that runs.
fn reloadable(path: &[String], current: &Settings) -> bool {
    match path {
        [queues, name, section, field, ..]
            if queues == "queues" && current.queues.contains_key(name) =>
        {
            (section == "scaling" && field != "wake_on_publish") || section == "idle_backoff"
        }
        _ => false,
    }
}

/// The leaves where `a` and `b` differ, by path (a whole object when one side lacks it).
fn diff<'v>(
    path: &mut Vec<String>,
    a: Option<&'v Value>,
    b: Option<&'v Value>,
    out: &mut Vec<(Vec<String>, Option<&'v Value>, Option<&'v Value>)>,
) {
    match (a, b) {
        (Some(Value::Object(x)), Some(Value::Object(y))) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for key in keys {
                path.push(key.clone());
                diff(path, x.get(key), y.get(key), out);
                path.pop();
            }
        }
        _ if a != b => out.push((path.clone(), a, b)),
        _ => {}
    }
}

/// A value as the config writes it: a string bare, none for unset, else JSON.
fn shown(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => "none".into(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}
