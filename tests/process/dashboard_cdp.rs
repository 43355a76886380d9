//! The dashboard driven in a real browser: headless Chromium (Debian's `chromium`, installed by
//! `scripts/test` when missing), controlled over the DevTools protocol through
//! `--remote-debugging-pipe` (two FIFOs, no extra crate), against a worker in this test on the
//! embedded store. The page shows a burst scaling the `emails` queue's dequeue tasks up and back
//! down, a click lists the `orders` poison queue and another requeues the poisoned message,
//! which is then handled; the browser reports no console error or uncaught exception. A
//! second test feeds the page's poll a counter reset and sees no negative rate charted.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ebbflow::codec::Encoding;
use ebbflow::config::{QueueSettings, Settings};
use ebbflow::store::MemoryStore;
use ebbflow::store::QueueStore;
use ebbflow::{Context, Handler, HandlerError, Worker};
use serde_json::{json, Value};

const TOKEN: &str = "browser-token-0123456789";

/// A browser over the DevTools protocol's pipe transport: JSON messages ending in NUL, commands
/// on the browser's fd 3, answers and events on its fd 4.
struct Browser {
    child: Child,
    to: File,
    from: BufReader<File>,
    next: u64,
    session: Option<String>,
    /// Console errors and uncaught exceptions seen so far.
    errors: Vec<String>,
    dir: PathBuf,
}

impl Browser {
    fn launch() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "ebbflow-cdp-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let (input, output) = (dir.join("in"), dir.join("out"));
        for fifo in [&input, &output] {
            let made = Command::new("mkfifo").arg(fifo).status().unwrap();
            assert!(made.success(), "mkfifo {}", fifo.display());
        }
        let chromium = ["chromium", "chromium-browser"]
            .into_iter()
            .find(|name| {
                Command::new(name)
                    .arg("--version")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            })
            .expect(
                "headless Chromium is needed: `apt-get install -y chromium` (scripts/test \
                 installs it when missing)",
            );
        // The shell opens fd 3 (our commands) then fd 4 (its answers) and becomes Chromium.
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "exec {chromium} --headless --no-sandbox --disable-gpu --no-first-run \
                 --disable-extensions --window-size=1280,900 --user-data-dir=\"$2\" \
                 --remote-debugging-pipe 3<\"$0\" 4>\"$1\""
            ))
            .arg(&input)
            .arg(&output)
            .arg(dir.join("profile"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Each open waits for the other side's: the same order as the shell's.
        let to = File::options().write(true).open(&input).unwrap();
        let from = BufReader::new(File::open(&output).unwrap());
        Self {
            child,
            to,
            from,
            next: 0,
            session: None,
            errors: Vec::new(),
            dir,
        }
    }

    /// Sends one command (to the attached page once there is one) and waits for its answer,
    /// noting the events that arrive meanwhile.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = &self.session {
            message["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        self.to.write_all(&bytes).unwrap();
        loop {
            let mut raw = Vec::new();
            let n = self.from.read_until(0, &mut raw).unwrap();
            assert!(
                n > 0,
                "Chromium closed its pipe while we waited for {method}"
            );
            raw.pop();
            let answer: Value = serde_json::from_slice(&raw).unwrap();
            if answer["id"] == id {
                assert!(answer["error"].is_null(), "{method}: {answer}");
                return answer["result"].clone();
            }
            self.note(&answer);
        }
    }

    fn note(&mut self, event: &Value) {
        let p = &event["params"];
        match event["method"].as_str() {
            Some("Runtime.exceptionThrown") => self.errors.push(p.to_string()),
            Some("Runtime.consoleAPICalled") if p["type"] == "error" => {
                self.errors.push(p.to_string())
            }
            // "Failed to load resource" (a 404, the favicon the browser asks for by itself
            // included) is a log entry of level error.
            Some("Log.entryAdded") if p["entry"]["level"] == "error" => {
                self.errors.push(p.to_string())
            }
            _ => {}
        }
    }

    /// Opens `url` in a new tab and attaches to it, with console and log events on.
    fn open(&mut self, url: &str) {
        let target = self.call("Target.createTarget", json!({ "url": url }));
        let attached = self.call(
            "Target.attachToTarget",
            json!({ "targetId": target["targetId"], "flatten": true }),
        );
        self.session = attached["sessionId"].as_str().map(str::to_string);
        self.call("Runtime.enable", json!({}));
        self.call("Log.enable", json!({}));
    }

    /// Evaluates `expression` in the page (promises awaited) and returns its value.
    fn eval(&mut self, expression: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
        );
        assert!(r["exceptionDetails"].is_null(), "{expression}: {r}");
        r["result"]["value"].clone()
    }

    /// Evaluates `expression` every 50 ms until `done` accepts its value; panics after
    /// `within`, naming `what`.
    fn wait(
        &mut self,
        what: &str,
        within: Duration,
        expression: &str,
        mut done: impl FnMut(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let v = self.eval(expression);
            if done(&v) {
                return v;
            }
            assert!(Instant::now() < deadline, "{what}: last {v}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Poisons "bad" the first time it sees it; handles everything else after `work`.
struct Picky {
    seen_bad: Arc<AtomicU32>,
    work: Duration,
}

impl Handler for Picky {
    type Message = String;
    async fn handle(&self, text: String, _: Context) -> Result<(), HandlerError> {
        if text == "bad" && self.seen_bad.fetch_add(1, Ordering::SeqCst) == 0 {
            return Err(HandlerError::poison("order has no amount"));
        }
        tokio::time::sleep(self.work).await;
        Ok(())
    }
}

/// Messages of the burst: at 8 handlers of 40 ms, about five seconds of work.
const BURST: u64 = 1000;

fn snapshot(
    worker: &ebbflow::worker::RunningWorker,
    queue: &str,
) -> ebbflow::listener::QueueSnapshot {
    worker
        .snapshot()
        .into_iter()
        .find(|q| q.queue == queue)
        .unwrap()
}

/// The `N` of a card's "N tasks · M running".
const TASKS: &str = "(() => { const s = document.querySelector('#q-emails .summary'); \
                     return s ? parseInt(s.textContent, 10) : null; })()";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_scales_up_and_down_and_a_click_requeues_a_poison_message_in_chromium() {
    let mut s = Settings::default();
    s.observability.bind = Some("127.0.0.1:0".parse().unwrap());
    s.observability.metrics_token = Some(TOKEN.to_string().try_into().unwrap());
    let mut orders = QueueSettings::default();
    orders.encoding = Encoding::None;
    orders.idle_backoff.max = Duration::from_millis(300);
    let mut emails = QueueSettings::default();
    emails.encoding = Encoding::None;
    emails.concurrency = ebbflow::config::Concurrency::of::<8>();
    emails.scaling.max_tasks = ebbflow::config::MaxTasks::of::<6>();
    emails.scaling.messages_per_task = ebbflow::config::MessagesPerTask::of::<20>();
    emails.scaling.depth_probe_interval = Duration::from_millis(300);
    emails.idle_backoff.max = Duration::from_millis(400);
    s.queues.insert("orders".into(), orders);
    s.queues.insert("emails".into(), emails);
    let store: Arc<dyn QueueStore> = Arc::new(MemoryStore::new());
    let seen_bad = Arc::new(AtomicU32::new(0));
    let worker = Worker::new(s)
        .with_store(store.clone())
        .handler(
            "orders",
            Picky {
                seen_bad: seen_bad.clone(),
                work: Duration::ZERO,
            },
        )
        .handler(
            "emails",
            Picky {
                seen_bad: Arc::default(),
                work: Duration::from_millis(40),
            },
        )
        .start()
        .await
        .unwrap();
    let base = format!("http://{}", worker.ops_addr().unwrap());

    let mut browser = Browser::launch();
    browser.open(&format!("{base}/dashboard"));
    // Without the token the page only asks for it.
    browser.wait(
        "the page asking for the token",
        Duration::from_secs(30),
        "document.getElementById('status')?.textContent ?? null",
        |v| v.as_str().is_some_and(|s| s.starts_with("token needed")),
    );
    // Until then, the only errors are the 401s of its polls (the browser logs each one).
    let before: Vec<String> = std::mem::take(&mut browser.errors);
    assert!(
        before
            .iter()
            .all(|e| e.contains("status of 401") && e.contains("/dashboard.json")),
        "{before:?}"
    );
    // The token, as an operator types it (kept in the tab's session storage).
    browser.eval(&format!(
        "(() => {{ const t = document.getElementById('token'); t.value = '{TOKEN}'; \
         t.dispatchEvent(new Event('change')); return true; }})()"
    ));
    browser.wait(
        "both cards drawn",
        Duration::from_secs(30),
        "document.querySelectorAll('section.queue').length",
        |v| v == 2,
    );
    // A counter that went down (a restarted worker) gives no rate, never a negative one; a
    // fleet row of 60 queues shows three and the count of the rest.
    assert_eq!(
        browser.eval("[rate(10, 5000, 1), rate(30, 10, 2)]"),
        json!([null, 10])
    );
    assert_eq!(
        browser.eval("queuesCell(Array.from({length: 60}, (_, i) => 'q' + i))"),
        json!("q0, q1, q2 +57")
    );
    assert_eq!(
        browser.eval("document.querySelector('[data-chart=poisoned] .label').textContent"),
        json!("poisoned since start")
    );

    // A poison message on orders, seen on the page's poison chart.
    worker
        .publisher("orders")
        .unwrap()
        .send_bytes(b"bad", Default::default())
        .await
        .unwrap();
    browser.wait(
        "the poison count on the page",
        Duration::from_secs(30),
        "document.querySelector('#q-orders [data-chart=poisoned] .value').textContent",
        |v| v == "1",
    );

    // A burst on emails: the page shows the tasks rise, then fall back to one when idle.
    let emails = worker.publisher("emails").unwrap();
    for i in 0..BURST {
        emails
            .send_bytes(format!("e{i}").as_bytes(), Default::default())
            .await
            .unwrap();
    }
    let peak = browser.wait(
        "the page showing the burst scale up",
        Duration::from_secs(60),
        TASKS,
        |v| v.as_u64().is_some_and(|n| n >= 3),
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let handled = snapshot(&worker, "emails").handled;
        if handled == BURST {
            break;
        }
        assert!(Instant::now() < deadline, "handled {handled} of {BURST}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    browser.wait(
        "the page showing the tasks back at one",
        Duration::from_secs(60),
        TASKS,
        |v| v == 1,
    );
    // The chart of tasks drew the climb: its history holds the peak.
    let drawn = browser.eval(
        "document.querySelector('#q-emails [data-chart=tasks] polyline').getAttribute('points')",
    );
    assert!(drawn.as_str().is_some_and(|p| p.len() > 20), "{drawn}");

    // Clicks: list the poison queue, then requeue the message from its row.
    browser.eval("document.querySelector('#q-orders button.list-poison').click(), true");
    let row = browser.wait(
        "the poison message listed",
        Duration::from_secs(30),
        "(() => { const r = document.querySelector('#q-orders tr[data-id]'); \
         return r ? r.textContent : null; })()",
        |v| v.is_string(),
    );
    assert!(
        row.as_str().unwrap().contains("order has no amount"),
        "{row}"
    );
    browser.eval("document.querySelector('#q-orders tr[data-id] button.requeue').click(), true");
    browser.wait(
        "the page confirming the requeue",
        Duration::from_secs(30),
        "(() => { const r = document.querySelector('#q-orders .requeued'); \
         return r ? r.textContent : null; })()",
        |v| v == "requeued 1",
    );
    // The requeued message comes back to its handler, which takes it this time.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let orders = snapshot(&worker, "orders");
        if orders.handled == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "{orders:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen_bad.load(Ordering::SeqCst), 2);
    let poison = store.queue("orders-poison").unwrap();
    assert!(poison.peek(32).await.unwrap().is_empty());

    assert!(
        browser.errors.is_empty(),
        "browser console errors: {:?} (peak {peak})",
        browser.errors
    );
    drop(browser);
    worker.shutdown().await;
}

/// The page's rate clamp, through its poll: the page reads two documents a moment apart in
/// which a queue's counters went down (the worker restarted between them: handled 5,000 then
/// 10, the pickup sum and count too). Its `messages/s` and `pickup latency` series get no value
/// for that interval (`null`, drawn as a gap, shown "–"), never a negative rate; the interval
/// before it, with the counters standing still, charts 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counter_reset_between_two_polls_charts_no_rate_never_a_negative_one() {
    let mut s = Settings::default();
    s.observability.bind = Some("127.0.0.1:0".parse().unwrap());
    let mut q = QueueSettings::default();
    q.encoding = Encoding::None;
    s.queues.insert("orders".into(), q);
    let worker = Worker::new(s)
        .with_store(Arc::new(MemoryStore::new()))
        .handler(
            "orders",
            Picky {
                seen_bad: Arc::default(),
                work: Duration::ZERO,
            },
        )
        .start()
        .await
        .unwrap();
    let mut browser = Browser::launch();
    browser.open(&format!("http://{}/dashboard", worker.ops_addr().unwrap()));
    browser.wait(
        "the orders card drawn",
        Duration::from_secs(30),
        "document.querySelectorAll('section.queue').length",
        |v| v == 1,
    );
    // From here the page's polls (its own each second, and the two below) read the document
    // in `current`: first the counters before the restart, then after it.
    let seen = browser.eval(
        r##"(async () => {
          const doc = (handled, sum, count) => ({ version: 1, now: new Date().toISOString(),
            fleet: null, queues: [{ queue: "restarted", depth: 0, active_tasks: 1,
              peak_tasks: 1, in_flight: 0, held: 0, received: handled, handled, retried: 0,
              poisoned: 0, released: 0, receive_calls: 1, empty_receives: 0,
              pickup_seconds_sum: sum, pickup_seconds_count: count, handler_seconds_sum: 0,
              handler_seconds_count: 0, last_decision: null, poison_queue: "restarted-poison" }] });
          let current = doc(5000, 100, 5000);
          window.fetch = async () => new Response(JSON.stringify(current),
            { status: 200, headers: { "content-type": "application/json" } });
          await poll();
          await new Promise(r => setTimeout(r, 200));
          await poll();
          current = doc(10, 0.5, 10);
          await poll();
          const s = series["restarted"];
          return { rate: s.rate, pickup: s.pickup,
                   shown: document.querySelector("#q-restarted [data-chart=rate] .value").textContent };
        })()"##,
    );
    let series = |name: &str| -> Vec<Option<f64>> {
        seen[name]
            .as_array()
            .unwrap_or_else(|| panic!("{seen}"))
            .iter()
            .map(Value::as_f64)
            .collect()
    };
    for name in ["rate", "pickup"] {
        let values = series(name);
        assert!(
            values.iter().flatten().all(|v| *v >= 0.0),
            "a negative {name}: {seen}"
        );
    }
    // The rate series: none at the first poll (nothing to compare), 0 while the counters stood
    // still, then none across the reset (more of each if the page's own polls came between).
    let rate = series("rate");
    let still = rate.iter().position(|v| *v == Some(0.0));
    let reset = still.and_then(|at| rate[at..].iter().position(Option::is_none));
    assert!(
        rate[0].is_none() && reset.is_some(),
        "no gap in the rate across the restart: {seen}"
    );
    let shown = seen["shown"].as_str().unwrap_or_default();
    assert!(!shown.starts_with('-'), "{seen}");
    assert!(
        browser.errors.is_empty(),
        "browser console errors: {:?}",
        browser.errors
    );
    drop(browser);
    worker.shutdown().await;
}
