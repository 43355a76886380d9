//! Live reload of the scaling rules (`RunningWorker::reload`, what SIGHUP and `ebbflow reload`
//! call): a reloaded rule changes the next scaling decision without a restart; keys that need a
//! restart are named and not applied; an invalid config changes nothing. Embedded store,
//! paused clock.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use ebbflow::config::{BatchSize, Concurrency, MaxTasks, MinTasks, QueueSettings, Settings};
use ebbflow::worker::{Change, RunningWorker};
use ebbflow::{Context, HandlerError, Publisher, Worker};

fn settings(queue: &str, max_tasks: MaxTasks) -> Settings {
    let mut s = Settings::default();
    let mut q = QueueSettings::default();
    q.batch_size = BatchSize::of::<8>();
    q.concurrency = Concurrency::of::<32>();
    q.scaling.max_tasks = max_tasks;
    s.queues.insert(queue.to_string(), q);
    s
}

async fn fill(store: &Arc<dyn ebbflow::store::QueueStore>, queue: &str, n: usize) {
    let q = store.queue(queue).unwrap();
    q.create_if_missing().await.unwrap();
    let publisher = Publisher::new(q, ebbflow::codec::Encoding::Base64);
    for i in 0..n {
        publisher
            .send_bytes(format!("m{i}").as_bytes(), Default::default())
            .await
            .unwrap();
    }
}

async fn slow(_: String, _: Context) -> Result<(), HandlerError> {
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(())
}

async fn started(s: Settings, store: &Arc<dyn ebbflow::store::QueueStore>) -> RunningWorker {
    let queue = s.queues.keys().next().unwrap().clone();
    Worker::new(s)
        .with_store(store.clone())
        .handler_fn(&queue, slow)
        .start()
        .await
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_reloaded_max_tasks_changes_the_next_scaling_decision_without_a_restart() {
    let store = common::memory();
    let queue = common::unique("reload-up");
    fill(&store, &queue, 600).await;
    let worker = started(settings(&queue, MaxTasks::of::<1>()), &store).await;
    common::wait_for("some handled", Duration::from_secs(60), || {
        worker.snapshot()[0].handled >= 40
    })
    .await;
    assert_eq!(worker.snapshot()[0].peak_tasks, 1, "max_tasks = 1 holds");
    let done = worker
        .reload(settings(&queue, MaxTasks::of::<4>()))
        .unwrap();
    assert_eq!(
        done.applied,
        vec![Change {
            key: format!("queues.{queue}.scaling.max_tasks"),
            old: "1".into(),
            new: "4".into(),
        }]
    );
    assert!(done.needs_restart.is_empty(), "{done:?}");
    common::wait_for("scaled past 1", Duration::from_secs(60), || {
        worker.snapshot()[0].active_tasks > 1
    })
    .await;
    common::wait_for("all handled", Duration::from_secs(600), || {
        worker.snapshot()[0].handled == 600
    })
    .await;
    let peak = worker.snapshot()[0].peak_tasks;
    worker.shutdown().await;
    assert_eq!(peak, 4, "full batches scaled to the reloaded max_tasks");
}

#[tokio::test(start_paused = true)]
async fn a_lowered_max_tasks_retires_the_excess_at_once() {
    let store = common::memory();
    let queue = common::unique("reload-down");
    fill(&store, &queue, 2000).await;
    let worker = started(settings(&queue, MaxTasks::of::<4>()), &store).await;
    common::wait_for("four tasks", Duration::from_secs(60), || {
        worker.snapshot()[0].active_tasks == 4
    })
    .await;
    // A reload that leaves the bounds as they are changes no task count and records nothing.
    let decided = worker.snapshot()[0].last_decision.clone();
    let mut same = settings(&queue, MaxTasks::of::<4>());
    same.queues
        .get_mut(&queue)
        .unwrap()
        .scaling
        .scale_down_cooldown = Duration::from_secs(1);
    let done = worker.reload(same).unwrap();
    assert_eq!(done.applied.len(), 1, "{done:?}");
    tokio::time::sleep(Duration::from_millis(10)).await;
    let s = worker.snapshot().remove(0);
    assert_eq!((s.active_tasks, &s.last_decision), (4, &decided), "{s:?}");
    worker
        .reload(settings(&queue, MaxTasks::of::<1>()))
        .unwrap();
    // The excess retires at the supervisor's next turn, without waiting for idleness.
    common::wait_for("one task", Duration::from_millis(50), || {
        worker.snapshot()[0].active_tasks == 1
    })
    .await;
    assert_eq!(
        worker.snapshot()[0].last_decision.as_deref(),
        Some("1 tasks: at max_tasks"),
        "the reload's decision, with its reason"
    );
    let before = worker.snapshot()[0].handled;
    tokio::time::sleep(Duration::from_secs(30)).await;
    let s = worker.snapshot().remove(0);
    worker.shutdown().await;
    assert!(s.handled > before, "the last task goes on consuming");
    assert_eq!(s.active_tasks, 1, "full batches no longer scale past 1");
}

#[tokio::test(start_paused = true)]
async fn keys_that_need_a_restart_are_named_and_not_applied() {
    let store = common::memory();
    let queue = common::unique("reload-restart");
    let worker = started(settings(&queue, MaxTasks::of::<4>()), &store).await;
    let mut new = settings(&queue, MaxTasks::of::<2>());
    let q = new.queues.get_mut(&queue).unwrap();
    q.concurrency = Concurrency::of::<8>();
    q.scaling.wake_on_publish = true;
    new.worker.drain_timeout = Duration::from_secs(5);
    new.queues
        .insert(common::unique("added"), QueueSettings::default());
    let done = worker.reload(new.clone()).unwrap();
    let keys: Vec<&str> = done.applied.iter().map(|c| c.key.as_str()).collect();
    assert_eq!(keys, vec![format!("queues.{queue}.scaling.max_tasks")]);
    let mut restart = done.needs_restart.clone();
    restart.sort();
    let added = new.queues.keys().find(|k| **k != queue).unwrap();
    let mut expected = vec![
        format!("queues.{added}"),
        format!("queues.{queue}.concurrency"),
        format!("queues.{queue}.scaling.wake_on_publish"),
        "worker.drain_timeout".to_string(),
    ];
    expected.sort();
    assert_eq!(restart, expected);
    // Reloading the same file again: max_tasks is in force, the rest is still pending.
    let again = worker.reload(new).unwrap();
    assert!(again.applied.is_empty(), "{again:?}");
    assert_eq!(again.needs_restart.len(), 4, "{again:?}");
    worker.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn an_invalid_config_changes_nothing_and_names_the_key() {
    let store = common::memory();
    let queue = common::unique("reload-bad");
    let worker = started(settings(&queue, MaxTasks::of::<4>()), &store).await;
    // min_tasks = 0 with nothing to wake the queue: invalid as a whole.
    let mut bad = settings(&queue, MaxTasks::of::<2>());
    bad.queues.get_mut(&queue).unwrap().scaling.min_tasks = MinTasks::Zero;
    let err = worker.reload(bad).unwrap_err().to_string();
    assert!(
        err.contains(&format!("queues.{queue}.scaling.min_tasks")),
        "{err}"
    );
    // Nothing was applied, max_tasks included: a valid reload later still starts from 4.
    let done = worker
        .reload(settings(&queue, MaxTasks::of::<3>()))
        .unwrap();
    assert_eq!(done.applied[0].old, "4", "{done:?}");
    worker.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_reload_from_the_config_folder_reads_the_changed_file() {
    let dir = common::TempDir::new("reload-dir");
    let queue = common::unique("reload-file");
    let write = |max: u32, extra: &str| {
        std::fs::write(
            dir.path().join("default.toml"),
            format!("[queues.{queue}.scaling]\nmax_tasks = {max}\n{extra}"),
        )
        .unwrap()
    };
    write(2, "");
    let loaded = Settings::load_from(dir.path(), &Default::default()).unwrap();
    let store = common::memory();
    let worker = started(loaded, &store).await;
    write(6, "scale_up_cooldown = \"3s\"\n");
    let done = worker.reload_from_config().unwrap();
    let shown: Vec<String> = done.applied.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        vec![
            format!("queues.{queue}.scaling.max_tasks: 2 -> 6"),
            format!("queues.{queue}.scaling.scale_up_cooldown: 1s -> 3s"),
        ]
    );
    write(999, "");
    let err = worker.reload_from_config().unwrap_err().to_string();
    assert!(err.contains("max_tasks"), "{err}");
    // Built in code: nothing to read.
    let in_code = started(
        settings(&common::unique("code"), MaxTasks::of::<2>()),
        &store,
    )
    .await;
    assert!(in_code.reload_from_config().is_err());
    in_code.shutdown().await;
    worker.shutdown().await;
}

/// A reload that raises `min_tasks` from 0 to 1 on a queue at zero tasks starts its task at once.
#[tokio::test(start_paused = true)]
async fn a_raised_min_tasks_starts_a_task_at_once() {
    let store = common::memory();
    let queue = common::unique("reload-up");
    fill(&store, &queue, 0).await;
    let at = |min| {
        let mut s = settings(&queue, MaxTasks::of::<4>());
        let q = s.queues.get_mut(&queue).unwrap();
        q.scaling.min_tasks = min;
        q.scaling.wake_on_publish = true;
        s
    };
    let worker = started(at(MinTasks::Zero), &store).await;
    common::wait_for("zero tasks", Duration::from_secs(300), || {
        worker.snapshot()[0].active_tasks == 0
    })
    .await;
    worker.reload(at(MinTasks::One)).unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let s = worker.snapshot().remove(0);
    assert_eq!(s.active_tasks, 1);
    // One task started, not one too many (the first one, at start, was the peak until now).
    assert_eq!(s.peak_tasks, 1, "{s:?}");
    // Recorded as the floor's doing, not as a steady decision.
    assert_eq!(
        s.last_decision.as_deref(),
        Some("1 tasks: last task keeps polling")
    );
    worker.shutdown().await;
}

/// A reload starts the probe intervals over from now, at the new periods, without a probe at
/// once (a reload is no reason to pay a call). At zero tasks with an idle probe every 10
/// minutes, a reload 5 minutes after an idle probe brings the next one 10 minutes after the
/// reload: none at the reload, none at the old phase 5 minutes later.
#[tokio::test(start_paused = true)]
async fn after_a_reload_the_next_probe_comes_one_period_later() {
    let store = common::memory();
    let queue = common::unique("reload-probe");
    fill(&store, &queue, 0).await;
    let at = |max| {
        let mut s = settings(&queue, max);
        let q = s.queues.get_mut(&queue).unwrap();
        q.scaling.min_tasks = MinTasks::Zero;
        q.scaling.idle_probe_interval = Some(Duration::from_secs(600));
        s
    };
    let worker = started(at(MaxTasks::of::<4>()), &store).await;
    common::idle_then_probed(&worker).await;
    let probes = worker.snapshot()[0].probe_calls;
    tokio::time::sleep(Duration::from_secs(300)).await;
    worker.reload(at(MaxTasks::of::<2>())).unwrap();
    tokio::time::sleep(Duration::from_secs(599)).await;
    assert_eq!(
        worker.snapshot()[0].probe_calls,
        probes,
        "no probe at the reload nor at the old phase"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        worker.snapshot()[0].probe_calls > probes,
        "the idle probe one period after the reload"
    );
    worker.shutdown().await;
}

/// A reload that shortens `idle_probe_interval` from 10 to 2 minutes: at zero tasks on an
/// empty queue, reloaded a minute after an idle probe, no probe comes in the 2 minutes after
/// the reload, then one every 2 minutes (5 in the next 10 minutes), where timers left at the
/// old period would give one at most. (Off to on cannot be tried here: `min_tasks = 0` needs
/// the idle probe or a trigger.)
#[tokio::test(start_paused = true)]
async fn a_reloaded_idle_probe_interval_paces_the_probes_at_the_new_period() {
    let store = common::memory();
    let queue = common::unique("reload-period");
    fill(&store, &queue, 0).await;
    let at = |idle| {
        let mut s = settings(&queue, MaxTasks::of::<4>());
        let q = s.queues.get_mut(&queue).unwrap();
        q.scaling.min_tasks = MinTasks::Zero;
        q.scaling.idle_probe_interval = Some(Duration::from_secs(idle));
        s
    };
    let worker = started(at(600), &store).await;
    common::idle_then_probed(&worker).await;
    let calls = || worker.snapshot()[0].probe_calls;
    tokio::time::sleep(Duration::from_secs(60)).await;
    let before = calls();
    worker.reload(at(120)).unwrap();
    tokio::time::sleep(Duration::from_secs(119)).await;
    assert_eq!(calls(), before, "no probe at the reload");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let one = calls() - before;
    assert!(one > 0, "a probe 2 minutes after the reload");
    let after_first = calls();
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(calls() - after_first, 5 * one, "a probe every 2 minutes");
    worker.shutdown().await;
}
