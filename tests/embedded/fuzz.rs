//! Fuzz-style tests with a seeded RNG: random bytes at the message decoders, random messages
//! through a running worker, random requests at the trigger endpoint. Nothing may panic; every
//! bad input gets a clear error (a poison envelope saying why, a 4xx answer).

// Each test reports its counts (lost, duplicates, statuses) on stdout, shown with --nocapture.
#![allow(clippy::print_stdout)]

use crate::common;

use std::time::Duration;

use ebbflow::codec::Encoding;
use ebbflow::config::{QueueSettings, Settings};
use ebbflow::handler::Payload;
use ebbflow::listener::poison::{PoisonQueue, PoisonReason};
use ebbflow::{Context, Handler, HandlerError, Json, Worker};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Job {
    n: u32,
    name: String,
}

fn random_bytes(rng: &mut impl Rng) -> Vec<u8> {
    let len = match rng.random_range(0..10) {
        0 => 0,
        1..=7 => rng.random_range(1..64),
        _ => rng.random_range(64..2048),
    };
    let mut bytes = vec![0u8; len];
    rng.fill(&mut bytes[..]);
    // Half the time, bias towards text that almost parses.
    if rng.random_bool(0.5) {
        let alphabet = b"{}[]\":,0123456789abcnu=+/ \\\n";
        for b in &mut bytes {
            *b = alphabet[usize::from(*b) % alphabet.len()];
        }
    }
    bytes
}

#[test]
fn random_bytes_at_the_decoders_never_panic_and_valid_input_round_trips() {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(0xEBBF);
    for i in 0..20_000u32 {
        let bytes = random_bytes(&mut rng);
        let text = String::from_utf8_lossy(&bytes);
        for enc in [Encoding::Base64, Encoding::None] {
            if let Ok(decoded) = enc.decode(&text) {
                let _ = Json::<Job>::from_bytes(decoded.clone());
                let _ = String::from_bytes(decoded.clone());
                let _ = Vec::<u8>::from_bytes(decoded);
            }
        }
        let job = Job {
            n: i,
            name: String::from_utf8_lossy(&bytes).into_owned(),
        };
        let json = serde_json::to_vec(&job).unwrap();
        for enc in [Encoding::Base64, Encoding::None] {
            let text = enc.encode(&json).unwrap();
            let Json(back) = Json::<Job>::from_bytes(enc.decode(&text).unwrap()).unwrap();
            assert_eq!(back, job);
        }
    }
}

struct Jobs;
impl Handler for Jobs {
    type Message = Json<Job>;
    async fn handle(&self, _: Json<Job>, _: Context) -> Result<(), HandlerError> {
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn random_messages_are_handled_or_poisoned_with_a_reason_and_their_exact_text() {
    let store = common::memory();
    let queue = common::fresh_queue(&store, "fuzz").await;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    let (mut valid, mut invalid) = (0, Vec::new());
    for n in 0..300u32 {
        let text = if rng.random_bool(0.3) {
            valid += 1;
            let job = Job {
                n,
                name: "ok".into(),
            };
            Encoding::Base64
                .encode(&serde_json::to_vec(&job).unwrap())
                .unwrap()
        } else {
            // Random text the service carries (XML 1.0 characters only: it refuses the rest at
            // the send, as the embedded store now does too), undecodable as base64.
            let mut t: String = String::from_utf8_lossy(&random_bytes(&mut rng))
                .chars()
                .map(|c| {
                    if matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..) {
                        c
                    } else {
                        '\u{FFFD}'
                    }
                })
                .collect();
            t.push('!'); // never empty, never valid base64
            invalid.push(t.clone());
            t
        };
        queue.send(&text, Default::default()).await.unwrap();
    }
    let mut s = Settings::default();
    s.queues
        .insert(queue.name().to_string(), QueueSettings::default());
    let worker = Worker::new(s.clone())
        .with_store(store.clone())
        .handler(queue.name(), Jobs)
        .start()
        .await
        .unwrap();
    common::wait_for("all settled", Duration::from_secs(60), || {
        let q = &worker.snapshot()[0];
        q.handled + q.poisoned == 300
    })
    .await;
    let snap = worker.shutdown().await.queues.remove(0);
    assert_eq!(snap.handled, valid);
    assert_eq!(snap.poisoned as usize, invalid.len());
    let poison = PoisonQueue::new(store, queue.name(), &s.queues[queue.name()]).unwrap();
    let records = poison.list(1000).await.unwrap();
    assert_eq!(records.len(), invalid.len());
    let mut bodies = Vec::new();
    for r in records {
        let e = r.envelope.unwrap();
        assert_eq!(e.reason, PoisonReason::Undecodable);
        assert!(!e.error.unwrap_or_default().is_empty(), "says why");
        bodies.push(e.body);
    }
    bodies.sort();
    invalid.sort();
    assert_eq!(bodies, invalid, "each original text, byte for byte");
}

#[tokio::test]
async fn random_requests_at_the_trigger_endpoint_get_answers_never_errors() {
    let mut s = Settings::default();
    s.triggers.http.enabled = true;
    s.triggers.http.bind = "127.0.0.1:0".parse().unwrap();
    s.triggers.http.max_body_bytes = ebbflow::config::MaxBodyBytes::of::<1024>();
    s.queues.insert("orders".into(), QueueSettings::default());
    s.validate().unwrap();
    let worker = Worker::new(s)
        .with_store(common::memory())
        .handler("orders", Jobs)
        .start()
        .await
        .unwrap();
    let base = format!("http://{}", worker.trigger_addr().unwrap());
    let client = reqwest::Client::new();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(99);
    let types = [
        "application/json",
        "application/cloudevents+json",
        "application/cloudevents-batch+json",
        "text/plain",
        "",
    ];
    let mut statuses = std::collections::BTreeMap::new();
    for _ in 0..400 {
        let body = random_bytes(&mut rng);
        let mut req = client.post(format!("{base}/trigger")).body(body.clone());
        let ct = types[rng.random_range(0..types.len())];
        if !ct.is_empty() {
            req = req.header("content-type", ct);
        }
        if rng.random_bool(0.2) {
            req = req.header("aeg-event-type", "SubscriptionValidation");
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        assert!(
            [202, 400, 413].contains(&status),
            "{status} for {:?}: {text}",
            String::from_utf8_lossy(&body)
        );
        if status == 400 {
            assert!(!text.is_empty(), "a 400 says why");
        }
        *statuses.entry(status).or_insert(0) += 1;
    }
    println!("trigger fuzz statuses: {statuses:?}");
    assert!(statuses.get(&400).copied().unwrap_or(0) > 100);
    assert!(statuses.get(&413).copied().unwrap_or(0) > 10);
    // Still serving, and a good event still works.
    let ok = client
        .post(format!("{base}/trigger"))
        .header("content-type", "application/json")
        .body(r#"{"queue":"orders"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status().as_u16(), 202);
    assert_eq!(
        reqwest::get(format!("{base}/healthz"))
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    worker.shutdown().await;
}
