//! The claim check end to end on Azurite's queue and blob services (those named by
//! `EBBFLOW_AZURITE_URL` and `EBBFLOW_AZURITE_BLOB_URL`, as `scripts/test` exports them; without
//! them, a pair of the scenario's own from `scripts/azurite start`): N payloads of 1 MiB and 16 MiB
//! published through ebbflow and handled by a worker, against a hand-written loop on the same
//! SDK clients (upload, enqueue a reference; receive, download, delete message, delete blob)
//! with no layers. Prints messages per second of each, their ratio, and the peak resident
//! memory above the start of each run (sampled every 5 ms from /proc/self/status).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ebbflow::codec::Encoding;
use ebbflow::config::{QueueSettings, Settings};
use ebbflow::store::QueueStore;
use ebbflow::store::{AzureBlobs, Blobs};
use ebbflow::store::{AzureStore, DEV_ACCOUNT, DEV_KEY};
use ebbflow::{Context, Handler, HandlerError, Worker};

/// One size's figures.
#[derive(Debug, Clone)]
pub struct Figures {
    /// Payload size, bytes.
    pub size: usize,
    /// Messages each side sent and handled.
    pub messages: usize,
    /// ebbflow, messages per second (publish to handled).
    pub ebbflow_per_s: f64,
    /// The hand loop, messages per second.
    pub raw_per_s: f64,
    /// Peak RSS above the run's start, MiB.
    pub ebbflow_peak_mib: f64,
    /// The same for the hand loop.
    pub raw_peak_mib: f64,
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Samples RSS until dropped; `peak_mib` is the highest above the start.
struct Sampler {
    base: u64,
    peak: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    fn start() -> Self {
        let base = rss_kib();
        let peak = Arc::new(AtomicU64::new(base));
        let p = peak.clone();
        let task = tokio::spawn(async move {
            loop {
                p.fetch_max(rss_kib(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        Self { base, peak, task }
    }

    fn peak_mib(self) -> f64 {
        self.task.abort();
        self.peak.fetch_max(rss_kib(), Ordering::Relaxed);
        self.peak.load(Ordering::Relaxed).saturating_sub(self.base) as f64 / 1024.0
    }
}

struct Check;
impl Handler for Check {
    type Message = Vec<u8>;
    async fn handle(&self, body: Vec<u8>, _: Context) -> Result<(), HandlerError> {
        std::hint::black_box(body.len());
        Ok(())
    }
}

fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The Azurite endpoints from the environment, when both are set.
pub fn endpoints() -> Option<(String, String)> {
    Some((
        std::env::var("EBBFLOW_AZURITE_URL").ok()?,
        std::env::var("EBBFLOW_AZURITE_BLOB_URL").ok()?,
    ))
}

/// Azurite's queue and blob services started by `scripts/azurite start DIR`, stopped on drop.
struct OwnAzurite(std::path::PathBuf);

impl OwnAzurite {
    /// Starts them (installing Azurite first when needed); `None` with the reason printed
    /// when that fails (no npm, say).
    fn start(dir: std::path::PathBuf) -> Option<(Self, String, String)> {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/azurite");
        let out = std::process::Command::new(script)
            .arg("start")
            .arg(&dir)
            .output()
            .ok()?;
        if !out.status.success() {
            println!(
                "claim: scripts/azurite start failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        let read = |f: &str| {
            std::fs::read_to_string(dir.join(f))
                .ok()
                .map(|s| s.trim().to_string())
        };
        let (queue, blob) = (read("url")?, read("blob_url")?);
        Some((Self(dir), queue, blob))
    }
}

impl Drop for OwnAzurite {
    fn drop(&mut self) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/azurite");
        let _ = std::process::Command::new(script)
            .arg("stop")
            .arg(&self.0)
            .status();
    }
}

async fn ebbflow_run(queue_url: &str, blobs: &Blobs, size: usize, n: usize) -> (f64, f64) {
    let cs = format!(
        "DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={DEV_KEY};QueueEndpoint={queue_url}"
    );
    let store: Arc<dyn QueueStore> = Arc::new(AzureStore::from_connection_string(&cs).unwrap());
    let name = format!(
        "bench-claim-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    );
    let mut s = Settings::default();
    let mut q = QueueSettings::default();
    q.concurrency = ebbflow::config::Concurrency::of::<4>();
    q.batch_size = ebbflow::config::BatchSize::of::<4>();
    q.visibility_timeout = Duration::from_secs(120);
    q.idle_backoff.max = Duration::from_millis(200);
    s.queues.insert(name.clone(), q);
    let worker = Worker::new(s)
        .with_store(store)
        .with_blobs(blobs.clone())
        .handler(&name, Check)
        .start()
        .await
        .unwrap();
    let publisher = worker.publisher(&name).unwrap();
    let sampler = Sampler::start();
    let start = Instant::now();
    for i in 0..n {
        let body = payload(size, i as u64 + 1);
        publisher
            .send_bytes(&body, Default::default())
            .await
            .unwrap();
    }
    while worker.snapshot()[0].handled < n as u64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let per_s = n as f64 / start.elapsed().as_secs_f64();
    let peak = sampler.peak_mib();
    worker.shutdown().await;
    (per_s, peak)
}

/// Upload + enqueue, then receive + download + delete message + delete blob, by hand.
async fn raw_run(queue_url: &str, blobs: &Blobs, size: usize, n: usize) -> (f64, f64) {
    let cs = format!(
        "DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={DEV_KEY};QueueEndpoint={queue_url}"
    );
    let store = AzureStore::from_connection_string(&cs).unwrap();
    let name = format!(
        "bench-raw-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    );
    let q = store.queue(&name).unwrap();
    q.create_if_missing().await.unwrap();
    let sampler = Sampler::start();
    let start = Instant::now();
    for i in 0..n {
        let body = payload(size, i as u64 + 1);
        let blob = format!("{name}/{i}.bin");
        blobs.put(&blob, body, Default::default()).await.unwrap();
        q.send(
            &Encoding::None.encode(blob.as_bytes()).unwrap(),
            Default::default(),
        )
        .await
        .unwrap();
    }
    let mut done = 0;
    while done < n {
        let batch = q.receive(4, Duration::from_secs(120)).await.unwrap();
        for m in batch {
            let bytes = blobs.get(&m.text, u64::MAX).await.unwrap();
            std::hint::black_box(bytes.len());
            q.delete(&m.id, &m.pop_receipt).await.unwrap();
            blobs.delete(&m.text).await.unwrap();
            done += 1;
        }
    }
    let per_s = n as f64 / start.elapsed().as_secs_f64();
    (per_s, sampler.peak_mib())
}

/// Runs both sides for each size (`n` messages each), on the Azurite of the environment or,
/// without one, on one of its own (its files under `dir`).
pub async fn claim(sizes: &[usize], n: usize, dir: std::path::PathBuf) -> Vec<Figures> {
    let mut own = None;
    let (queue_url, blob_url) = match endpoints() {
        Some(urls) => urls,
        None => match OwnAzurite::start(dir) {
            Some((azurite, queue, blob)) => {
                own = Some(azurite);
                (queue, blob)
            }
            None => {
                println!("claim: skipped (no Azurite: set EBBFLOW_AZURITE_URL and EBBFLOW_AZURITE_BLOB_URL, or install npm)");
                return Vec::new();
            }
        },
    };
    let cs = format!(
        "DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={DEV_KEY};BlobEndpoint={blob_url}"
    );
    let blobs: Blobs = Arc::new(AzureBlobs::from_connection_string(&cs, "bench-claim").unwrap());
    blobs.create_if_missing().await.unwrap();
    let mut out = Vec::new();
    for &size in sizes {
        let (raw_per_s, raw_peak_mib) = raw_run(&queue_url, &blobs, size, n).await;
        let (ebbflow_per_s, ebbflow_peak_mib) = ebbflow_run(&queue_url, &blobs, size, n).await;
        let f = Figures {
            size,
            messages: n,
            ebbflow_per_s,
            raw_per_s,
            ebbflow_peak_mib,
            raw_peak_mib,
        };
        println!(
            "claim {} MiB x {}: ebbflow {:.2} msg/s, hand loop {:.2} msg/s, ratio {:.2}; peak RSS above start: ebbflow {:.0} MiB, hand loop {:.0} MiB",
            size / (1024 * 1024),
            n,
            f.ebbflow_per_s,
            f.raw_per_s,
            f.ebbflow_per_s / f.raw_per_s,
            f.ebbflow_peak_mib,
            f.raw_peak_mib
        );
        out.push(f);
    }
    drop(own);
    out
}
