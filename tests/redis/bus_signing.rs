//! Signed bus envelopes and presence on a real redis-server: with signing on, unsigned or
//! unknown-key envelopes and presence records are refused and counted, and an instance still on
//! the previous key is accepted.

use crate::common;

use std::time::Duration;

use crate::durable::{base, client, drain, join, redis_con, Ping};
use ebbflow::bus::{Address, BusSettings, Presence, SigningKey};

fn signed(prefix: &str, key: &str, previous: Option<&str>) -> BusSettings {
    let mut s = base(prefix, "processor", Duration::from_secs(30));
    s.signing_key = Some(SigningKey::new(key).unwrap());
    s.signing_previous_key = previous.map(|k| SigningKey::new(k).unwrap());
    s
}

/// With signing on, envelopes and presence records that are unsigned or signed with an unknown
/// key are refused and counted; an instance still on the previous key is accepted.
#[tokio::test]
async fn forged_envelopes_and_presence_are_refused_with_signing_on() {
    let prefix = common::unique("signed");
    let (old, new) = ("o".repeat(32), "n".repeat(32));
    let s = signed(&prefix, &new, Some(&old));
    let (bus, mut sub) = join(&s, "p1").await;
    let rolling = client(&signed(&prefix, &old, None), "old-key").await;
    rolling.publish(&Ping { n: 1 }, Address::All).await.unwrap();
    let mut con = redis_con().await;
    let forged = r#"{"id":"f1","type":"test.ping","from":"boss","role":"controller","to":{"mode":"all"},"sent_at_ms":1,"body":{"n":666}}"#;
    let _: String = redis::cmd("XADD")
        .arg(format!("{prefix}:fan:all"))
        .arg("*")
        .arg("envelope")
        .arg(forged)
        .arg("sig")
        .arg("AAAA")
        .query_async(&mut con)
        .await
        .unwrap();
    let _: String = redis::cmd("XADD")
        .arg(format!("{prefix}:group:processor"))
        .arg("*")
        .arg("envelope")
        .arg(forged)
        .query_async(&mut con)
        .await
        .unwrap();
    let _: i64 = redis::cmd("PUBLISH")
        .arg(format!("{prefix}:all"))
        .arg(forged)
        .query_async(&mut con)
        .await
        .unwrap();
    rolling
        .publish(&Ping { n: 2 }, Address::one_of("processor"))
        .await
        .unwrap();
    let mut got = drain(&mut sub, Duration::from_secs(1)).await;
    got.sort_unstable();
    assert_eq!(got, vec![1, 2], "only the signed events");
    assert!(bus.transport().counters().refused >= 3);
    // Presence: a real pulse and a forged record.
    let me = Presence {
        instance: "p1".into(),
        role: "processor".into(),
        queues: vec![],
        active_tasks: 0,
        in_flight: 0,
        handled: 0,
        receive_calls: 0,
        started_at_ms: ebbflow::bus::now_ms(),
        pulse_at_ms: ebbflow::bus::now_ms(),
    };
    bus.transport()
        .pulse(&me, Duration::from_secs(30))
        .await
        .unwrap();
    let mut fake = me.clone();
    fake.instance = "ghost".into();
    fake.queues = vec!["made-up".into()];
    let _: () = redis::cmd("SET")
        .arg(format!("{prefix}:presence:ghost"))
        .arg(serde_json::to_string(&fake).unwrap())
        .query_async(&mut con)
        .await
        .unwrap();
    let _: i64 = redis::cmd("ZADD")
        .arg(format!("{prefix}:instances"))
        .arg(ebbflow::bus::now_ms() + 60_000)
        .arg("ghost")
        .query_async(&mut con)
        .await
        .unwrap();
    let listed: Vec<String> = bus
        .transport()
        .instances()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.instance)
        .collect();
    assert_eq!(listed, vec!["p1".to_string()]);
    // A signed record copied under another instance's key is refused too: it is bound to its
    // instance id, so p1 is not listed twice.
    let real: String = redis::cmd("GET")
        .arg(format!("{prefix}:presence:p1"))
        .query_async(&mut con)
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(format!("{prefix}:presence:forged-2"))
        .arg(real)
        .query_async(&mut con)
        .await
        .unwrap();
    let _: i64 = redis::cmd("ZADD")
        .arg(format!("{prefix}:instances"))
        .arg(ebbflow::bus::now_ms() + 60_000)
        .arg("forged-2")
        .query_async(&mut con)
        .await
        .unwrap();
    let listed: Vec<String> = bus
        .transport()
        .instances()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.instance)
        .collect();
    assert_eq!(listed, vec!["p1".to_string()]);
    // Without the key, the same reader would have listed the ghost: signing is what refused it.
    let unsigned = client(&base(&prefix, "processor", Duration::from_secs(30)), "x").await;
    assert_eq!(unsigned.transport().instances().await.unwrap().len(), 2);
    bus.close().await;
}
