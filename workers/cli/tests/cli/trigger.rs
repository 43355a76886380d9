//! `enqueue` waking an idle worker through the HTTP trigger.

use crate::{common, config, with};

/// A free port on loopback (bound, then released for the worker to take).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills the child process when dropped.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The load-test worker at min_tasks = 0 with the HTTP trigger endpoint on: a message sent
/// with `--no-trigger` waits (nothing polls), and `enqueue` with the configured trigger wakes
/// the worker, which then handles both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_with_the_http_trigger_wakes_an_idle_worker() {
    let queue = common::unique("wake");
    let port = free_port();
    let ops = free_port();
    let token = "wake-token-0123456789";
    let dir = config(&format!(
        "[observability]\nbind = \"127.0.0.1:{ops}\"\n\n\
         [triggers.http]\nenabled = true\nbind = \"0.0.0.0:{port}\"\ntoken = \"{token}\"\n\n\
         [queues.{queue}]\nencoding = \"none\"\n\n[queues.{queue}.idle_backoff]\nmax = \"200ms\"\n\n\
         [queues.{queue}.scaling]\nmin_tasks = 0\n"
    ));
    let record = dir.path().join("handled.txt");
    let _worker = KillOnDrop(
        std::process::Command::new(common::bins::loadtest())
            .env_clear()
            .env("EBBFLOW_CONFIG_DIR", dir.path())
            .env("QUEUE_NAME", &queue)
            .env("HANDLER_MS", "1")
            .env("LOADTEST_RECORD", &record)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Up, and at zero tasks (its first task retired at the back-off maximum).
    let client = reqwest::Client::new();
    // /metrics is served on the ops endpoint only (no metrics token configured here).
    let metrics = format!("http://127.0.0.1:{ops}/metrics");
    let idle = format!("ebbflow_active_tasks{{queue=\"{queue}\"}} 0\n");
    common::wait_for_async(
        "the worker at zero tasks",
        std::time::Duration::from_secs(60),
        || async {
            match client.get(&metrics).send().await {
                Ok(r) => r.text().await.is_ok_and(|t| t.contains(&idle)),
                Err(_) => false,
            }
        },
    )
    .await;
    let handled = || std::fs::read_to_string(&record).unwrap_or_default();
    let run = with(&dir, &["enqueue", &queue, "first", "--no-trigger"]);
    assert_eq!(run.code, Some(0), "{}", run.both());
    assert!(
        run.stdout.contains("trigger: none sent (--no-trigger)"),
        "{}",
        run.stdout
    );
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(handled(), "", "nothing polls at zero tasks");
    let run = with(&dir, &["enqueue", &queue, "second"]);
    assert_eq!(run.code, Some(0), "{}", run.both());
    assert!(
        run.stdout.contains(&format!("trigger: sent (http POST http://127.0.0.1:{port}/trigger: 202 Accepted, woke 1 listener(s))")),
        "{}",
        run.stdout
    );
    common::wait_for("both handled", std::time::Duration::from_secs(30), || {
        let h = handled();
        h.contains("first\t") && h.contains("second\t")
    })
    .await;
    assert!(!run.both().contains(token));
}
