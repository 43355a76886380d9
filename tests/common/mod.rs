//! Helpers shared by the integration tests: the Azurite the test script started, unique
//! queue names, and waiting on a condition.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

pub mod bins;
pub mod redis;

use ebbflow::store::MemoryStore;
use ebbflow::store::{AzureStore, DEV_ACCOUNT, DEV_KEY};
use ebbflow::store::{Queue, QueueStore};

/// The queue endpoint of the Azurite started by `scripts/test`.
pub fn azurite_url() -> String {
    std::env::var("EBBFLOW_AZURITE_URL").unwrap_or_else(|_| {
        panic!(
            "EBBFLOW_AZURITE_URL is not set: the Azurite tests need the Azurite that \
             scripts/test installs and starts; run scripts/test (the README's test command)"
        )
    })
}

/// An account-key connection string for the test Azurite.
pub fn azurite_connection_string() -> String {
    format!(
        "DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={DEV_KEY};QueueEndpoint={}",
        azurite_url()
    )
}

/// The test Azurite through an account-key connection string (our SAS signing policy).
pub fn azurite() -> Arc<dyn QueueStore> {
    Arc::new(AzureStore::from_connection_string(&azurite_connection_string()).unwrap())
}

/// A fresh embedded store.
pub fn memory() -> Arc<dyn QueueStore> {
    Arc::new(MemoryStore::new())
}

/// A queue name no other test uses.
pub fn unique(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("t-{prefix}-{}", &id[..12])
}

/// A folder under the system temp dir, removed (with its contents) when dropped, so a failing
/// test leaves nothing behind either.
pub struct TempDir(std::path::PathBuf);

impl TempDir {
    /// A fresh, empty folder named after `prefix`.
    pub fn new(prefix: &str) -> Self {
        let dir = std::env::temp_dir().join(unique(prefix));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    /// Its path.
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A new, created queue on `store`.
pub async fn fresh_queue(store: &Arc<dyn QueueStore>, prefix: &str) -> Arc<dyn Queue> {
    let q = store.queue(&unique(prefix)).unwrap();
    q.create_if_missing().await.unwrap();
    q
}

/// Starts a worker with one handler on `store`.
pub async fn start(
    store: &Arc<dyn QueueStore>,
    settings: ebbflow::Settings,
    queue: &str,
    handler: impl ebbflow::Handler,
) -> ebbflow::worker::RunningWorker {
    ebbflow::Worker::new(settings)
        .with_store(store.clone())
        .handler(queue, handler)
        .start()
        .await
        .unwrap()
}

/// Polls `check` every 20 ms (tokio time) until it holds; panics after `limit`.
pub async fn wait_for(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !check() {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// At a worker whose first queue runs at `min_tasks = 0` with an idle probe (under tokio's paused
/// clock): waits until that queue has no dequeue task (up to 10 minutes), then for its next
/// depth probe (up to 700 s: the idle probe's period must be shorter). Right after it the
/// queue's probe timer has just fired.
pub async fn idle_then_probed(worker: &ebbflow::worker::RunningWorker) {
    wait_for("no dequeue task", Duration::from_secs(600), || {
        worker.snapshot()[0].active_tasks == 0
    })
    .await;
    let probes = worker.snapshot()[0].probe_calls;
    wait_for("an idle probe", Duration::from_secs(700), || {
        worker.snapshot()[0].probe_calls > probes
    })
    .await;
}

/// Like [`wait_for`], with an async check (polled every 100 ms).
pub async fn wait_for_async<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Generates, for each named `async fn(Arc<dyn QueueStore>)` in the calling file, one test on
/// the embedded store under tokio's paused clock (module `embedded`) and one on the test
/// Azurite in real time (module `azurite`).
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(start_paused = true)]
                async fn $name() {
                    super::$name($crate::common::memory()).await;
                }
            )*
        }
        mod azurite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::azurite()).await;
                }
            )*
        }
    };
}

pub mod hooked;
pub mod proxy;

/// An Azurite of a test's own, on a fixed port so it can be killed and restarted in place
/// (in memory: a restart loses its queues and messages, as a wiped service would).
pub struct AzuriteProcess {
    port: u16,
    child: Option<std::process::Child>,
}

impl AzuriteProcess {
    /// Starts one on a free loopback port (Azurite installed by `scripts/test`).
    pub fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut a = Self { port, child: None };
        a.spawn();
        a
    }

    /// The queue endpoint.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/devstoreaccount1", self.port)
    }

    /// An account-key connection string for it.
    pub fn connection_string(&self) -> String {
        format!(
            "DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={DEV_KEY};QueueEndpoint={}",
            self.url()
        )
    }

    fn spawn(&mut self) {
        let bin = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/.azurite/node_modules/.bin/azurite-queue"
        );
        let child = std::process::Command::new(bin)
            .args(["--queueHost", "127.0.0.1", "--queuePort"])
            .arg(self.port.to_string())
            .args([
                "--inMemoryPersistence",
                "--skipApiVersionCheck",
                "--loose",
                "--silent",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{bin}: {e} (run scripts/test, which installs Azurite)"));
        self.child = Some(child);
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("Azurite did not start on port {}", self.port);
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for AzuriteProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Everything logged through tracing in this test binary (all levels, every crate), from the
/// first call on: a global subscriber writing to memory, so events on any runtime thread are
/// caught. Tests running side by side share it: filter by your own queue name or secret.
pub fn captured_logs() -> String {
    static BUFFER: std::sync::OnceLock<Arc<std::sync::Mutex<Vec<u8>>>> = std::sync::OnceLock::new();
    let buffer = BUFFER.get_or_init(|| {
        let buffer = Arc::new(std::sync::Mutex::new(Vec::new()));
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || CaptureWriter(writer.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
        buffer
    });
    String::from_utf8_lossy(&buffer.lock().unwrap()).into_owned()
}

struct CaptureWriter(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
