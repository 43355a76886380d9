//! Loading and validation, with errors that name the key. Triggers, the storage connection
//! string and the bus URL are in `access_tests`, which shares `dir_with` and `env`.

use super::*;
use crate::codec::Encoding;

/// A config folder in the temp dir, removed when dropped.
pub(super) struct TempConfig(PathBuf);

impl std::ops::Deref for TempConfig {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(super) fn dir_with(toml: &str) -> TempConfig {
    let dir = std::env::temp_dir().join(format!("ebbflow-config-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("default.toml"), toml).unwrap();
    TempConfig(dir)
}

#[test]
fn temp_config_folders_are_removed() {
    let dir = dir_with("");
    let path = dir.to_path_buf();
    assert!(path.join("default.toml").exists());
    drop(dir);
    assert!(!path.exists());
}

#[test]
fn retry_settings_keep_the_service_timeout_below_the_cut_off() {
    let secs = |s: u64| RetrySettings::service_timeout_secs(Duration::from_secs(s));
    assert_eq!(secs(2), 1);
    assert_eq!(secs(3), 2);
    assert_eq!(secs(10), 8);
    assert_eq!(secs(30), 24);
    assert_eq!(secs(600), 30, "the service's maximum");
    assert_eq!(
        RetrySettings::service_timeout_secs(Duration::from_millis(2900)),
        1
    );
    for ms in (2000..=600_000).step_by(100) {
        let cutoff = Duration::from_millis(ms);
        let service = Duration::from_secs(RetrySettings::service_timeout_secs(cutoff).into());
        assert!(service + Duration::from_millis(900) <= cutoff, "{cutoff:?}");
    }
    let dir = dir_with("[storage.retry]\nrequest_timeout = \"1s\"\n");
    let err = Settings::load_from(&dir, &env(&[]))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "config: storage.retry.request_timeout = 1s: must be 2s..=10m"
    );
    let dir = dir_with("[storage.retry]\nrefusals_before_fatal = 0\n");
    let err = Settings::load_from(&dir, &env(&[]))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "config: storage.retry.refusals_before_fatal = 0: must be 1..=20"
    );
    assert_eq!(RetrySettings::default().refusals_before_fatal, 3);
}

pub(super) fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn defaults_apply_to_a_bare_queue_section() {
    let dir = dir_with("[queues.orders]\n");
    let s = Settings::load_from(&dir, &env(&[])).unwrap();
    let q = &s.queues["orders"];
    assert_eq!(q.batch_size, 32);
    assert_eq!(q.max_dequeue_count, 5);
    assert_eq!(q.encoding, Encoding::Base64);
    assert_eq!(q.idle_backoff.max, Duration::from_secs(30));
    assert_eq!(q.poison_queue_name("orders"), "orders-poison");
    assert!(s.storage.connection_string.is_none());
}

#[test]
fn batch_size_33_is_rejected_naming_the_key() {
    let dir = dir_with("[queues.orders]\nbatch_size = 33\n");
    let err = Settings::load_from(&dir, &env(&[]))
        .unwrap_err()
        .to_string();
    assert_eq!(err, "config: queues.orders.batch_size = 33: must be 1..=32");
}

#[test]
fn unknown_keys_are_rejected() {
    let dir = dir_with("[queues.orders]\nbatchsize = 8\n");
    let err = Settings::load_from(&dir, &env(&[]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("batchsize"), "{err}");
}

#[test]
fn layers_file_then_env_file_then_environment() {
    let dir = dir_with(
        "[queues.orders]\nbatch_size = 8\nconcurrency = 3\n[queues.orders.scaling]\nmax_tasks = 2\n",
    );
    std::fs::write(
        dir.join("prod.toml"),
        "[queues.orders]\nconcurrency = 5\n[queues.orders.scaling]\nmax_tasks = 4\n",
    )
    .unwrap();
    let s = Settings::load_from(
        &dir,
        &env(&[
            ("EBBFLOW_ENV", "prod"),
            ("EBBFLOW__QUEUES__ORDERS__CONCURRENCY", "6"),
            ("EBBFLOW__QUEUES__ORDERS__VISIBILITY_TIMEOUT", "2m"),
        ]),
    )
    .unwrap();
    let q = &s.queues["orders"];
    assert_eq!(
        (
            q.batch_size.get(),
            q.scaling.max_tasks.get(),
            q.concurrency.get()
        ),
        (8, 4, 6),
        "file < env file < environment"
    );
    assert_eq!(q.visibility_timeout, Duration::from_secs(120));
}

#[test]
fn human_durations_and_backoff_limits() {
    let dir = dir_with("[queues.orders.idle_backoff]\nmax = \"11m\"\n");
    let err = Settings::load_from(&dir, &env(&[]))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "config: queues.orders.idle_backoff.max = 11m: must be 1ms..=10m"
    );
    let dir = dir_with("[queues.orders]\nvisibility_timeout = \"soon\"\n");
    let err = Settings::load_from(&dir, &env(&[]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("visibility_timeout"), "{err}");
}

/// Counts are typed: out of the type's range, the loader refuses them while parsing, naming the
/// key and the range; a refill threshold in range but over the queue's own slots is refused by
/// the cross-key check.
#[test]
fn refill_threshold_and_heartbeat_every_are_checked_while_parsing() {
    for (toml, said) in [
        (
            "[queues.orders]\nrefill_threshold = 0\n",
            "config: queues.orders.refill_threshold = 0: must be 1..=32",
        ),
        (
            "[queues.orders]\nrefill_threshold = 33\n",
            "config: queues.orders.refill_threshold = 33: must be 1..=32",
        ),
        (
            "[queues.orders]\nconcurrency = 4\nrefill_threshold = 8\n",
            "config: queues.orders.refill_threshold = 8: must be 1..=4",
        ),
        (
            "[queues.orders.heartbeat]\nevery = 0\n",
            "config: queues.orders.heartbeat.every = 0: must be 1..=",
        ),
    ] {
        let err = Settings::load_from(&dir_with(toml), &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with(said), "{toml}: {err}");
    }
    let s = Settings::load_from(
        &dir_with(
            "[queues.orders]\nrefill_threshold = 8\n[queues.orders.heartbeat]\nevery = 1000\n",
        ),
        &env(&[]),
    )
    .unwrap();
    let orders = &s.queues["orders"];
    assert_eq!(orders.refill_slots(), 8);
    assert_eq!(orders.heartbeat.every.map(|e| e.get()), Some(1000));
}

#[test]
fn bad_queue_names_and_encodings_are_named() {
    let dir = dir_with("[queues.Orders]\n");
    let err = Settings::load_from(&dir, &env(&[]))
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("config: queues.Orders = Orders:"), "{err}");
    let dir = dir_with("[queues.orders]\nencoding = \"rot13\"\n");
    let err = Settings::load_from(&dir, &env(&[]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("rot13"), "{err}");
}

#[test]
fn zero_tasks_needs_a_way_to_wake_up() {
    let dir = dir_with("[queues.orders.scaling]\nmin_tasks = 0\n");
    let err = Settings::load_from(&dir, &env(&[]))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(
            "config: queues.orders.scaling.min_tasks = 0: nothing could wake queue orders"
        ),
        "{err}"
    );
    for way in [
        "[triggers.http]\nenabled = true\n",
        "[queues.orders.scaling]\nidle_probe_interval = \"1m\"\n",
        "[queues.orders.scaling]\nwake_on_publish = true\n",
    ] {
        let toml = if way.contains("queues.orders") {
            way.replace("]\n", "]\nmin_tasks = 0\n")
        } else {
            format!("{way}[queues.orders.scaling]\nmin_tasks = 0\n")
        };
        let dir = dir_with(&toml);
        Settings::load_from(&dir, &env(&[])).unwrap_or_else(|e| panic!("{toml}: {e}"));
    }
}

#[test]
fn depth_rules_load_and_must_increase() {
    let dir = dir_with(
        "[queues.orders.scaling]\nmax_tasks = 10\ndepth_rules = [{ from = 0, tasks = 1 }, { from = 100, tasks = 10 }]\n",
    );
    let s = Settings::load_from(&dir, &env(&[])).unwrap();
    assert_eq!(
        s.queues["orders"].scaling.depth_rules[1],
        DepthRule {
            from: 100,
            tasks: 10
        }
    );
    let dir = dir_with(
        "[queues.orders.scaling]\nmax_tasks = 10\ndepth_rules = [{ from = 100, tasks = 1 }, { from = 100, tasks = 2 }]\n",
    );
    let err = Settings::load_from(&dir, &env(&[]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("queues.orders.scaling.depth_rules[1].from = 100"),
        "{err}"
    );
    let dir = dir_with(
        "[queues.orders.scaling]\nmax_tasks = 2\ndepth_rules = [{ from = 0, tasks = 3 }]\n",
    );
    let err = Settings::load_from(&dir, &env(&[]))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "config: queues.orders.scaling.depth_rules[0].tasks = 3: must be 1..=2"
    );
}

#[test]
fn a_poison_queue_may_not_be_another_configured_queue() {
    let dir = dir_with("[queues.orders]\npoison_queue = \"emails\"\n[queues.emails]\n");
    let err = Settings::load_from(&dir, &env(&[]))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(
            "config: queues.orders.poison_queue = emails: must not be a configured queue"
        ),
        "{err}"
    );
}

#[test]
fn shards_are_typed_and_their_names_checked() {
    let env = BTreeMap::new();
    let dir = dir_with("[queues.orders]\nshards = 4\n");
    let s = Settings::load_from(&dir, &env).unwrap();
    assert_eq!(s.queues["orders"].shards.get(), 4);
    // From the environment too (a string there).
    let env_set = BTreeMap::from([(
        "EBBFLOW__QUEUES__ORDERS__SHARDS".to_string(),
        "7".to_string(),
    )]);
    let from_env = Settings::load_from(&dir, &env_set).unwrap();
    assert_eq!(from_env.queues["orders"].shards.get(), 7);
    let bad_env = BTreeMap::from([(
        "EBBFLOW__QUEUES__ORDERS__SHARDS".to_string(),
        "0".to_string(),
    )]);
    let err = Settings::load_from(&dir, &bad_env).unwrap_err().to_string();
    assert!(err.contains("shards = 0"), "{err}");
    assert_eq!(
        s.queues["orders"].shard_names("orders"),
        ["orders-0", "orders-1", "orders-2", "orders-3"]
    );
    for (text, culprit) in [
        (
            "[queues.orders]\nshards = 0\n",
            "shards = 0: must be 1..=100",
        ),
        ("[queues.orders]\nshards = 101\n", "shards = 101"),
        ("[queues.orders]\nshards = -1\n", "shards"),
        ("[queues.orders]\nshards = \"two\"\n", "shards"),
    ] {
        let err = Settings::load_from(&dir_with(text), &env)
            .unwrap_err()
            .to_string();
        assert!(err.contains(culprit), "{text}: {err}");
        assert!(err.contains("orders"), "{text}: {err}");
    }
    // A shard may not be another configured queue, nor the poison queue.
    let err = Settings::load_from(
        &dir_with("[queues.orders]\nshards = 2\n[queues.orders-1]\n"),
        &env,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("queues.orders.shards") && err.contains("orders-1"),
        "{err}"
    );
    let err = Settings::load_from(
        &dir_with("[queues.orders]\nshards = 2\npoison_queue = \"orders-0\"\n"),
        &env,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("queues.orders.poison_queue"), "{err}");
    // The last shard's name must still be a queue name (63 characters at most).
    let long = "a".repeat(62);
    let err = Settings::load_from(
        &dir_with(&format!(
            "[queues.{long}]\nshards = 10\npoison_queue = \"p-poison\"\n"
        )),
        &env,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains(&format!("queues.{long}.shards")), "{err}");
}

#[test]
fn typed_values_are_refused_while_parsing_naming_the_key() {
    for (text, expected) in [
        (
            "[queues.orders]\nbatch_size = 33\n",
            "config: queues.orders.batch_size = 33: must be 1..=32",
        ),
        (
            "[queues.orders]\nconcurrency = 0\n",
            "config: queues.orders.concurrency = 0: must be 1..=10000",
        ),
        (
            "[queues.orders]\nmax_dequeue_count = 1001\n",
            "config: queues.orders.max_dequeue_count = 1001: must be 1..=1000",
        ),
        (
            "[queues.orders.scaling]\nmin_tasks = 2\n",
            "config: queues.orders.scaling.min_tasks = 2: must be 0..=1",
        ),
        (
            "[queues.orders.scaling]\nmax_tasks = 257\n",
            "config: queues.orders.scaling.max_tasks = 257: must be 1..=256",
        ),
        (
            "[queues.orders]\npoison_queue = \"Bad_Name\"\n",
            "config: queues.orders.poison_queue = Bad_Name: must be 3-63 characters",
        ),
        (
            "[triggers.http]\nmax_body_bytes = 100\n",
            "config: triggers.http.max_body_bytes = 100: must be 256..=1048576",
        ),
        (
            "[queues.orders.bus]\ndepth = 0\n",
            "config: queues.orders.bus.depth = 0: must be 1..=100000",
        ),
    ] {
        let err = Settings::load_from(&dir_with(text), &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with(expected), "{text}: {err}");
    }
    // The environment goes through the same types.
    let err = Settings::load_from(
        &dir_with(""),
        &env(&[("EBBFLOW__QUEUES__ORDERS__BATCH_SIZE", "40")]),
    )
    .unwrap_err()
    .to_string();
    assert_eq!(err, "config: queues.orders.batch_size = 40: must be 1..=32");
    let s = Settings::load_from(
        &dir_with("[queues.orders.scaling]\nmin_tasks = 0\nwake_on_publish = true\n"),
        &env(&[]),
    )
    .unwrap();
    assert_eq!(s.queues["orders"].scaling.min_tasks, MinTasks::Zero);
}

#[test]
fn settings_built_in_code_take_the_same_checks() {
    assert_eq!(
        BatchSize::new(33)
            .unwrap_err()
            .at("queues.orders.batch_size")
            .to_string(),
        "queues.orders.batch_size = 33: must be 1..=32"
    );
    assert!(QueueName::new("orders").is_ok());
    assert!(QueueName::new("Orders").is_err());
    let mut q = QueueSettings {
        batch_size: BatchSize::of::<8>(),
        ..Default::default()
    };
    q.scaling.min_tasks = MinTasks::Zero;
    // Rules across fields are checked by `validate`, the same as after loading.
    let err = q.validate("orders", false).unwrap_err().to_string();
    assert!(err.contains("queues.orders.scaling.min_tasks = 0"), "{err}");
}
