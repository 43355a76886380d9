//! The root `[heartbeat]` section: its values fill what a queue's own section leaves unset.

use std::collections::BTreeMap;
use std::time::Duration;

use super::Settings;

fn load(toml: &str) -> Result<Settings, super::ConfigError> {
    let dir = std::env::temp_dir().join(format!("ebbflow-hb-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("default.toml"), toml).unwrap();
    let loaded = Settings::load_from(&dir, &BTreeMap::new());
    let _ = std::fs::remove_dir_all(&dir);
    loaded
}

#[test]
fn root_heartbeat_values_apply_where_a_queue_sets_none() {
    let s = load(
        r#"
        [heartbeat]
        interval = "10s"
        every = 100
        [queues.plain]
        [queues.own.heartbeat]
        interval = "3s"
        "#,
    )
    .unwrap();
    let plain = s.queues["plain"].heartbeat;
    assert_eq!(plain.interval, Some(Duration::from_secs(10)));
    assert_eq!(plain.every.map(|e| e.get()), Some(100));
    let own = s.queues["own"].heartbeat;
    assert_eq!(
        own.interval,
        Some(Duration::from_secs(3)),
        "the queue's own value wins"
    );
    assert_eq!(
        own.every.map(|e| e.get()),
        Some(100),
        "the unset field still takes the default"
    );
}

#[test]
fn without_a_root_section_queues_keep_their_own_values() {
    let s = load("[queues.plain]\n[queues.own.heartbeat]\nevery = 5\n").unwrap();
    assert_eq!(s.queues["plain"].heartbeat.interval, None);
    assert!(s.queues["plain"].heartbeat.every.is_none());
    assert_eq!(s.queues["own"].heartbeat.every.map(|e| e.get()), Some(5));
}

#[test]
fn a_bad_root_heartbeat_value_is_named_at_its_own_key() {
    let err = load("[heartbeat]\nevery = 0\n[queues.plain]\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("heartbeat.every") && !err.contains("queues."),
        "{err}"
    );
    let err = load("[heartbeat]\ninterval = \"1ms\"\n[queues.plain]\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("heartbeat.interval") && !err.contains("queues."),
        "{err}"
    );
}

#[test]
fn settings_built_in_code_take_the_defaults_once_applied() {
    let mut s = Settings::default();
    s.heartbeat.every = Some(super::PulseEvery::new(7).unwrap());
    s.queues.insert("q".into(), super::QueueSettings::default());
    s.apply_heartbeat_defaults();
    s.apply_heartbeat_defaults();
    assert_eq!(s.queues["q"].heartbeat.every.map(|e| e.get()), Some(7));
}
