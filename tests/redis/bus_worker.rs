//! A worker on a Redis bus, in process: handlers publish through `ctx.bus()`, `Worker::observe`
//! handles events from other instances, long jobs' heartbeat pulses are seen by another
//! instance, and a work notice written by `redis-cli` (a producer in another language) wakes a
//! queue at zero tasks, and a replica that cannot take all the work passes the notice on.

use crate::common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::redis::{member, redis_url, settings};
use ebbflow::bus::events::JobPulse;
use ebbflow::bus::RedisBus;
use ebbflow::bus::{Address, BusHandle, Event, Filter, Received};
use ebbflow::{Context, Handler, HandlerError, Worker};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Done {
    item: String,
}

impl Event for Done {
    const KIND: &'static str = "test.done";
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Command {
    say: String,
}

impl Event for Command {
    const KIND: &'static str = "test.command";
}

/// Reports each message to exactly one controller, with three heartbeat pulses on the way.
struct Reporting;

impl Handler for Reporting {
    type Message = String;

    async fn handle(&self, item: String, ctx: Context) -> Result<(), HandlerError> {
        for _ in 0..3 {
            ctx.heartbeat().increment();
            // Pulses are taken between polls of the handler: one per step here.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let bus = ctx.bus().expect("a worker's context has its bus");
        bus.publish(&Done { item }, Address::one_of("controller"))
            .await?;
        Ok(())
    }
}

fn worker_settings(prefix: &str, queue: &str) -> ebbflow::Settings {
    let mut s = ebbflow::Settings::default();
    s.bus = settings(&redis_url(), prefix, "processor", Duration::from_secs(2));
    let mut q = ebbflow::config::QueueSettings::default();
    q.heartbeat.every = Some(ebbflow::config::PulseEvery::of::<1>());
    q.scaling.min_tasks = ebbflow::config::MinTasks::Zero;
    q.idle_backoff.max = Duration::from_millis(300);
    s.queues.insert(queue.to_string(), q);
    s
}

async fn controller(prefix: &str) -> BusHandle {
    let bus = RedisBus::connect(
        &settings(&redis_url(), prefix, "controller", Duration::from_secs(2)),
        member("controller-1", "controller"),
    )
    .await
    .unwrap();
    BusHandle::new(Arc::new(bus))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_publish_observers_handle_and_pulses_are_seen_elsewhere() {
    let prefix = common::unique("bus");
    let queue = common::unique("obs");
    let commands = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
    let seen = commands.clone();
    let store = common::memory();
    let worker = Worker::new(worker_settings(&prefix, &queue))
        .with_store(store.clone())
        .handler(&queue, Reporting)
        .observe(
            Filter::new().from_role("controller"),
            move |c: Received<Command>| {
                let seen = seen.clone();
                async move {
                    seen.lock().unwrap().push((c.body.say, c.from));
                    Ok(())
                }
            },
        )
        .start()
        .await
        .unwrap();
    let ctl = controller(&prefix).await;
    let mut done = ctl.subscribe::<Done>(Filter::new().from_role("processor"));
    let mut pulses = ctl.subscribe::<JobPulse>(Filter::new());
    ctl.start();
    // Handlers publish through their context.
    let publisher = worker.publisher(&queue).unwrap();
    for n in 0..3 {
        publisher
            .send_bytes(format!("item-{n}").as_bytes(), Default::default())
            .await
            .unwrap();
    }
    let mut items = Vec::new();
    for _ in 0..3 {
        let d = tokio::time::timeout(Duration::from_secs(10), done.next())
            .await
            .expect("a Done event")
            .unwrap();
        assert!(d.needs_ack());
        d.ack().await.unwrap();
        items.push(d.body.item);
    }
    items.sort();
    assert_eq!(items, ["item-0", "item-1", "item-2"]);
    // Every heartbeat pulse of the jobs, seen by the other instance.
    let mut counts = Vec::new();
    while counts.len() < 9 {
        let p = tokio::time::timeout(Duration::from_secs(10), pulses.next())
            .await
            .expect("job pulses")
            .unwrap();
        assert_eq!(p.body.queue, queue);
        assert_eq!(p.body.kind, ebbflow::bus::events::PulseKind::Count);
        counts.push(p.body.count);
    }
    counts.sort();
    assert_eq!(counts, [1, 1, 1, 2, 2, 2, 3, 3, 3]);
    // The worker's observer handles what the controller sends its role, and only that.
    let me = worker.bus().member().instance.to_string();
    ctl.publish(
        &Command {
            say: "to-role".into(),
        },
        Address::role("processor"),
    )
    .await
    .unwrap();
    ctl.publish(
        &Command {
            say: "to-me".into(),
        },
        Address::instance(me),
    )
    .await
    .unwrap();
    ctl.publish(
        &Command {
            say: "elsewhere".into(),
        },
        Address::role("billing"),
    )
    .await
    .unwrap();
    common::wait_for("two commands observed", Duration::from_secs(10), || {
        commands.lock().unwrap().len() >= 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // One stream per address: the order between two addresses is not kept.
    let mut got = commands.lock().unwrap().clone();
    got.sort();
    assert_eq!(
        got,
        [
            ("to-me".to_string(), "controller-1".to_string()),
            ("to-role".to_string(), "controller-1".to_string())
        ]
    );
    ctl.close().await;
    assert!(worker.shutdown().await.clean);
}

/// The README's wire format, written by `redis-cli`: a queue at zero tasks wakes and handles
/// the message that was put there without any other trigger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_work_notice_from_redis_cli_wakes_a_queue_at_zero_tasks() {
    let prefix = common::unique("bus");
    let queue = common::unique("cli");
    let store = common::memory();
    let handled = Arc::new(Mutex::new(Vec::<String>::new()));
    struct Keep(Arc<Mutex<Vec<String>>>);
    impl Handler for Keep {
        type Message = String;
        async fn handle(&self, m: String, _: Context) -> Result<(), HandlerError> {
            self.0.lock().unwrap().push(m);
            Ok(())
        }
    }
    let worker = common::start(
        &store,
        worker_settings(&prefix, &queue),
        &queue,
        Keep(handled.clone()),
    )
    .await;
    common::wait_for("zero tasks", Duration::from_secs(20), || {
        worker.snapshot()[0].active_tasks == 0
    })
    .await;
    // Put there by "another program": straight onto the queue, no trigger.
    let q = store.queue(&queue).unwrap();
    q.send(
        &ebbflow::codec::Encoding::Base64
            .encode(b"from-python")
            .unwrap(),
        Default::default(),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        handled.lock().unwrap().is_empty(),
        "nothing wakes it on its own"
    );
    let out = std::process::Command::new("redis-cli")
        .args(["-u", &redis_url(), "XADD"])
        .arg(format!("{prefix}:work:{queue}"))
        .args(["MAXLEN", "~", "10000", "*", "queue", &queue])
        .output()
        .expect("redis-cli (installed with redis-server)");
    assert!(out.status.success(), "{out:?}");
    common::wait_for("the message handled", Duration::from_secs(10), || {
        handled.lock().unwrap().len() == 1
    })
    .await;
    assert_eq!(handled.lock().unwrap()[0], "from-python");
    assert!(worker.shutdown().await.clean);
}

/// A queue woken by a work notice passes the notice on (`reach = "one"`) when its receive came
/// back filled with every concurrency slot taken: the queue holds more than this replica can
/// take now. A receive that took fewer messages than it asked for passes nothing on, although
/// its slots are all taken too. Each notice is passed on at most once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receive_filling_every_slot_passes_the_notice_on_and_a_short_one_does_not() {
    struct Slow;
    impl Handler for Slow {
        type Message = String;
        async fn handle(&self, _: String, _: Context) -> Result<(), HandlerError> {
            tokio::time::sleep(Duration::from_millis(200)).await;
            Ok(())
        }
    }
    // Woken from zero tasks by one notice, with `messages` waiting at concurrency 4 (the
    // first receive asks for 4): what the worker passed on.
    async fn passed_on_after(messages: usize) -> u64 {
        let prefix = common::unique("bus");
        let queue = common::unique("pass");
        let store = common::memory();
        let mut s = worker_settings(&prefix, &queue);
        let q = s.queues.get_mut(&queue).unwrap();
        q.heartbeat.every = None;
        q.concurrency = ebbflow::config::Concurrency::of::<4>();
        let worker = common::start(&store, s, &queue, Slow).await;
        common::wait_for("zero tasks", Duration::from_secs(20), || {
            worker.snapshot()[0].active_tasks == 0
        })
        .await;
        let sent = store.queue(&queue).unwrap();
        for i in 0..messages {
            let text = ebbflow::codec::Encoding::Base64
                .encode(format!("m{i}").as_bytes())
                .unwrap();
            sent.send(&text, Default::default()).await.unwrap();
        }
        let out = std::process::Command::new("redis-cli")
            .args(["-u", &redis_url(), "XADD"])
            .arg(format!("{prefix}:work:{queue}"))
            .args(["MAXLEN", "~", "10000", "*", "queue", &queue])
            .output()
            .expect("redis-cli (installed with redis-server)");
        assert!(out.status.success(), "{out:?}");
        common::wait_for("every message handled", Duration::from_secs(20), || {
            worker.snapshot()[0].handled == messages as u64
        })
        .await;
        let passed = worker
            .bus_counters()
            .passed_on
            .load(std::sync::atomic::Ordering::Relaxed);
        assert!(worker.shutdown().await.clean);
        passed
    }
    assert_eq!(passed_on_after(2).await, 0, "2 of the 4 asked for");
    assert_eq!(passed_on_after(10).await, 1, "4 of 4, every slot taken");
}
