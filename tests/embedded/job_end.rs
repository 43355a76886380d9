//! How a handler's run ends, as an operator sees it (`src/listener/dispatch.rs`): a panic and a
//! timeout counted in the queue's snapshot, the panic logged naming its queue and message id;
//! the `job ended` line at `INFO` for a job that pulsed, said how it went or runs on a queue
//! with timed pulses, at `DEBUG` for any other. On the embedded store under tokio's paused
//! clock.

use std::collections::BTreeMap;
use std::time::Duration;

use ebbflow::codec::Encoding;
use ebbflow::config::{PulseEvery, QueueSettings, Settings};
use ebbflow::store::SendOptions;
use ebbflow::{Context, Handler, HandlerError, Worker};

use crate::common;

/// The queue's settings at the defaults, plain text, with `edit` applied.
fn queue(edit: impl FnOnce(&mut QueueSettings)) -> QueueSettings {
    let mut q = QueueSettings::default();
    q.encoding = Encoding::None;
    edit(&mut q);
    q
}

/// On its first delivery, `boom` panics and `stall` ignores its timeout (sleeps an hour); later
/// deliveries succeed at once.
struct PanicsOrStalls;

impl Handler for PanicsOrStalls {
    type Message = String;
    async fn handle(&self, text: String, ctx: Context) -> Result<(), HandlerError> {
        if ctx.dequeue_count() > 1 {
            return Ok(());
        }
        match text.as_str() {
            "boom" => panic!("boom on {}", ctx.message_id()),
            _ => tokio::time::sleep(Duration::from_secs(3600)).await,
        }
        Ok(())
    }
}

/// A panic and a handler aborted past its timeout (10 s, grace 5 s) each count once in the
/// queue's snapshot (`panics`, `timeouts`) and are retried; the panic is logged at `ERROR` as
/// `handler panicked` with the queue, the message id and the panic's text.
#[tokio::test(start_paused = true)]
async fn a_panic_and_a_timeout_are_counted_and_the_panic_logged_with_its_message() {
    common::captured_logs();
    let store = common::memory();
    let q = common::fresh_queue(&store, "ends").await;
    let boom = q.send("boom", SendOptions::default()).await.unwrap().id;
    let stall = q.send("stall", SendOptions::default()).await.unwrap().id;
    let name = q.name().to_string();
    let mut s = Settings::default();
    s.queues.insert(
        name.clone(),
        queue(|q| q.handler_timeout = Some(Duration::from_secs(10))),
    );
    s.validate().unwrap();
    let worker = common::start(&store, s, &name, PanicsOrStalls).await;
    common::wait_for("both handled", Duration::from_secs(120), || {
        worker.snapshot()[0].handled == 2
    })
    .await;
    let snap = worker.shutdown().await.queues.remove(0);
    assert_eq!(
        (snap.panics, snap.timeouts, snap.retried, snap.handled),
        (1, 1, 2, 2),
        "{snap:?}"
    );
    let logs = common::captured_logs();
    let panicked: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains(" ERROR ") && l.contains(&format!("handler panicked queue={name}")))
        .collect();
    assert_eq!(panicked.len(), 1, "{panicked:#?}");
    let line = panicked[0];
    assert!(
        line.contains(&format!(
            "queue={name} message_id={boom} panic=boom on {boom}"
        )),
        "{line}"
    );
    assert!(!line.contains(&stall), "{line}");
}

/// The `job ended` lines of `queue` logged since the test began, by level (`INFO`, `DEBUG`).
fn job_ended(queue: &str) -> BTreeMap<&'static str, Vec<String>> {
    let mut by_level: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
    for line in common::captured_logs().lines() {
        if !(line.contains("job ended") && line.contains(&format!("queue={queue}"))) {
            continue;
        }
        let level = ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"]
            .into_iter()
            .find(|l| line.contains(&format!(" {l} ")))
            .unwrap_or("?");
        by_level.entry(level).or_default().push(line.to_string());
    }
    by_level
}

/// Five queues, one 10 ms job each, every one ending `Ok`: `plain` (no heartbeat settings,
/// no status) logs `job ended` at `DEBUG` only, and so does `every` (`heartbeat.every = 1000`
/// but nothing counted and no status: count pulses are not timed pulses); `counted` (`heartbeat.every = 1`, one unit
/// counted: one count pulse, no status) at `INFO` with `count=1`; `said` (no heartbeat
/// settings) sets `succeeded` and logs at `INFO` with its status and note; `timed`
/// (`heartbeat.interval = 60s`, the job far shorter, so no pulse) logs at `INFO`. (The end
/// the queues with heartbeat settings record on the bus is not seen here: the embedded bus
/// keeps no job records and sends none to its own instance; `tests/process/bus_jobs.rs` and
/// `tests/redis/pulse_hook.rs` read it.)
#[tokio::test(start_paused = true)]
async fn the_job_ended_line_is_info_for_jobs_that_pulsed_said_or_pulse_on_a_timer_else_debug() {
    common::captured_logs();
    let store = common::memory();
    let mut names = BTreeMap::new();
    let mut s = Settings::default();
    for (role, edit) in [
        ("plain", None),
        ("counted", Some(PulseEvery::new(1).unwrap())),
        ("said", None),
        ("timed", None),
        ("every", Some(PulseEvery::new(1000).unwrap())),
    ] {
        let q = common::fresh_queue(&store, role).await;
        q.send(role, SendOptions::default()).await.unwrap();
        s.queues.insert(
            q.name().to_string(),
            queue(|q| {
                q.heartbeat.every = edit;
                if role == "timed" {
                    q.heartbeat.interval = Some(Duration::from_secs(60));
                }
            }),
        );
        names.insert(role, q.name().to_string());
    }
    s.validate().unwrap();
    let job = |text: String, ctx: Context| async move {
        tokio::time::sleep(Duration::from_millis(10)).await;
        match text.as_str() {
            "counted" => ctx.heartbeat().increment(),
            "said" => ctx.heartbeat().succeeded("3 rows"),
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        Ok::<(), HandlerError>(())
    };
    let mut worker = Worker::new(s).with_store(store.clone());
    for name in names.values() {
        worker = worker.handler_fn(name, job);
    }
    let worker = worker.start().await.unwrap();
    common::wait_for("every job done", Duration::from_secs(30), || {
        worker.snapshot().iter().all(|q| q.handled == 1)
    })
    .await;
    worker.shutdown().await;

    let plain = job_ended(&names["plain"]);
    assert!(!plain.contains_key("INFO"), "{plain:#?}");
    assert_eq!(plain.get("DEBUG").map(Vec::len), Some(1), "{plain:#?}");
    assert!(
        plain["DEBUG"][0].contains("status=\"unknown\"")
            && plain["DEBUG"][0].contains("result=\"ok\""),
        "{plain:#?}"
    );
    let counted = job_ended(&names["counted"]);
    assert_eq!(
        counted.keys().copied().collect::<Vec<_>>(),
        ["INFO"],
        "{counted:#?}"
    );
    assert_eq!(counted["INFO"].len(), 1, "{counted:#?}");
    assert!(
        counted["INFO"][0].contains("count=1") && counted["INFO"][0].contains("status=\"unknown\""),
        "{counted:#?}"
    );
    let said = job_ended(&names["said"]);
    assert_eq!(
        said.keys().copied().collect::<Vec<_>>(),
        ["INFO"],
        "{said:#?}"
    );
    assert!(
        said["INFO"][0].contains("status=\"succeeded\"") && said["INFO"][0].contains("3 rows"),
        "{said:#?}"
    );
    let timed = job_ended(&names["timed"]);
    assert_eq!(
        timed.keys().copied().collect::<Vec<_>>(),
        ["INFO"],
        "{timed:#?}"
    );
    assert!(timed["INFO"][0].contains("count=0"), "{timed:#?}");
    let every = job_ended(&names["every"]);
    assert!(!every.contains_key("INFO"), "{every:#?}");
    assert_eq!(every.get("DEBUG").map(Vec::len), Some(1), "{every:#?}");
    assert!(
        every["DEBUG"][0].contains("status=\"unknown\"")
            && every["DEBUG"][0].contains("result=\"ok\""),
        "{every:#?}"
    );
}
