//! `ebbflow bus poison list|show|requeue` against a real Redis: a competing event whose observer
//! always fails is listed with its error, shown in full, and requeued to the same role.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common;
use common::redis::{member, redis_url, settings};
use ebbflow::bus::MaxDeliveries;
use ebbflow::bus::RedisBus;
use ebbflow::bus::{Address, BusHandle, Event, Filter, PoisonEntry, Received};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Charge {
    cents: u64,
}

impl Event for Charge {
    const KIND: &'static str = "test.charge";
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_lists_shows_and_requeues_bus_poison_entries() {
    let prefix = common::unique("cli-poison");
    let dir = common::TempDir::new("cfg");
    std::fs::write(
        dir.path().join("default.toml"),
        format!(
            "[bus]\nkind = \"redis\"\nurl = \"{}\"\nchannel_prefix = \"{prefix}\"\n",
            redis_url()
        ),
    )
    .unwrap();
    let cli = |args: &[&str]| {
        let out = Command::new(common::bins::ebbflow_cli())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .args(["--config", dir.path().to_str().unwrap(), "bus", "poison"])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    assert!(cli(&["list"]).contains("empty"));
    let mut s = settings(&redis_url(), &prefix, "billing", Duration::from_millis(200));
    s.max_deliveries = MaxDeliveries::new(1).unwrap();
    let bus = BusHandle::new(Arc::new(
        RedisBus::connect(&s, member("b1", "billing"))
            .await
            .unwrap(),
    ));
    let runs = Arc::new(AtomicU32::new(0));
    let r = runs.clone();
    let _observer = bus.observe(Filter::new(), move |c: Received<Charge>| {
        let r = r.clone();
        async move {
            if r.fetch_add(1, Ordering::SeqCst) == 0 {
                Err(format!("card declined for {} cents", c.body.cents).into())
            } else {
                Ok(())
            }
        }
    });
    bus.start();
    bus.publish(&Charge { cents: 995 }, Address::one_of("billing"))
        .await
        .unwrap();
    let mut listed: Vec<PoisonEntry> = Vec::new();
    for _ in 0..100 {
        listed = serde_json::from_str(&cli(&["list", "--json"])).unwrap();
        if !listed.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(listed.len(), 1, "{listed:?}");
    let id = listed[0].id.clone();
    assert!(listed[0].reason.contains("card declined for 995 cents"));
    assert!(cli(&["list"]).contains("card declined"));
    let shown: PoisonEntry = serde_json::from_str(&cli(&["show", &id])).unwrap();
    assert_eq!(shown, listed[0]);
    assert!(shown.envelope.unwrap().contains("995"));
    assert!(cli(&["requeue", &id]).contains(&id));
    common::wait_for("requeued and handled", Duration::from_secs(10), || {
        runs.load(Ordering::SeqCst) == 2
    })
    .await;
    assert!(cli(&["list"]).contains("empty"));
    let missing = Command::new(common::bins::ebbflow_cli())
        .args([
            "--config",
            dir.path().to_str().unwrap(),
            "bus",
            "poison",
            "show",
            "1-1",
        ])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not found"));
    bus.close().await;
}

/// Fields forged in Redis (a presence record, a bus poison entry) reach `ebbflow instances` and
/// `ebbflow bus poison list` with their control characters escaped: no line of their own, no
/// colour or terminal-title sequence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_redis_fields_are_escaped_in_the_cli_tables() {
    let prefix = common::unique("cli-forged");
    let dir = common::TempDir::new("cfg");
    std::fs::write(
        dir.path().join("default.toml"),
        format!(
            "[bus]\nkind = \"redis\"\nurl = \"{}\"\nchannel_prefix = \"{prefix}\"\n",
            redis_url()
        ),
    )
    .unwrap();
    let mut con = crate::redis_admin::admin(&redis_url()).await;
    let evil = "x\nFORGED LINE\x1b[31mred\x1b]0;title\x07";
    let now = ebbflow::bus::now_ms();
    let presence = serde_json::json!({
        "instance": "ghost", "role": evil, "queues": [evil], "active_tasks": 0,
        "in_flight": 0, "handled": 0, "receive_calls": 0,
        "started_at_ms": now, "pulse_at_ms": now,
    });
    let _: () = redis::cmd("SET")
        .arg(format!("{prefix}:presence:ghost"))
        .arg(presence.to_string())
        .query_async(&mut con)
        .await
        .unwrap();
    let _: i64 = redis::cmd("ZADD")
        .arg(format!("{prefix}:instances"))
        .arg(now + 60_000)
        .arg("ghost")
        .query_async(&mut con)
        .await
        .unwrap();
    let _: String = redis::cmd("XADD")
        .arg(format!("{prefix}:poison"))
        .arg("*")
        .arg("stream")
        .arg(evil)
        .arg("reason")
        .arg(evil)
        .query_async(&mut con)
        .await
        .unwrap();
    for args in [&["instances"][..], &["bus", "poison", "list"]] {
        let out = Command::new(common::bins::ebbflow_cli())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .args(["--config", dir.path().to_str().unwrap()])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains("FORGED LINE"), "{args:?}: {text}");
        assert!(
            !text.lines().any(|l| l.starts_with("FORGED")) && !text.contains('\x1b'),
            "{args:?}: {text:?}"
        );
        assert!(text.contains("\\n") && text.contains("\\u{1b}"), "{text}");
    }
}
