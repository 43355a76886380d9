//! The endpoints under a connection flood, over real sockets on 127.0.0.1: thousands of idle
//! and slow-header connections to the trigger port are capped (the extra ones closed at once),
//! the ones it holds are closed after the header-read timeout, and all the while the ops
//! endpoint's probes answer and the worker handles messages. Timeouts are short through the
//! settings; the test asserts outcomes (closed, answered, counted), not latencies.

use std::sync::Arc;
use std::time::Duration;

use ebbflow::codec::Encoding;
use ebbflow::config::{QueueSettings, Settings};
use ebbflow::store::MemoryStore;
use ebbflow::{Context, Handler, HandlerError, Worker};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

struct Nop;
impl Handler for Nop {
    type Message = String;
    async fn handle(&self, _: String, _: Context) -> Result<(), HandlerError> {
        Ok(())
    }
}

const TRIGGER_TOKEN: &str = "a-long-enough-trigger-token";
const METRICS_TOKEN: &str = "scrape-token-0123456789";
/// Connections opened against the trigger port (fewer if the process runs out of sockets).
const FLOOD: usize = 2_000;
/// Slow-header connections among them: a request line and one header, then nothing.
const SLOW: usize = 20;
const CAP: u32 = 32;

fn settings() -> Settings {
    let mut s = Settings::default();
    s.triggers.http.enabled = true;
    s.triggers.http.bind = "127.0.0.1:0".parse().unwrap();
    s.triggers.http.token = Some(TRIGGER_TOKEN.into());
    s.triggers.http.header_read_timeout = Duration::from_secs(1);
    s.triggers.http.max_connections = CAP;
    s.observability.bind = Some("127.0.0.1:0".parse().unwrap());
    s.observability.metrics_token = Some(METRICS_TOKEN.to_string().try_into().unwrap());
    s.queues.insert("orders".into(), QueueSettings::default());
    s.queues.get_mut("orders").unwrap().encoding = Encoding::None;
    s.validate().unwrap();
    s
}

/// Whether the server closed `stream` (EOF or reset) within `wait`.
async fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 512];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // A response (e.g. 408) before the close: keep reading until the close.
            Ok(Ok(_)) => continue,
        }
    }
}

async fn get(url: &str, token: Option<&str>) -> (u16, String) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut req = client.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.expect("the ops endpoint answers");
    (r.status().as_u16(), r.text().await.unwrap())
}

/// The value of the sample `line_start` (name and labels) in an exposition.
fn sample(text: &str, line_start: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(line_start)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_idle_and_slow_connections_is_shed_while_probes_and_work_go_on() {
    let worker = Worker::new(settings())
        .with_store(Arc::new(MemoryStore::new()))
        .handler("orders", Nop)
        .start()
        .await
        .unwrap();
    let trigger = worker.trigger_addr().unwrap();
    let ops = format!("http://{}", worker.ops_addr().unwrap());

    // The flood: slow-header connections first (so the endpoint holds some of them), then
    // idle ones that send nothing at all.
    let mut held = Vec::with_capacity(FLOOD);
    for i in 0..FLOOD {
        let Ok(Ok(mut s)) = timeout(Duration::from_secs(2), TcpStream::connect(trigger)).await
        else {
            break; // out of sockets in this process: flood with what we have
        };
        if i < SLOW {
            let _ = s.write_all(b"POST /trigger HTTP/1.1\r\nhost: x\r\n").await;
        }
        held.push(s);
    }
    assert!(held.len() >= 500, "only {} connections opened", held.len());

    // While the trigger port is flooded: the probes answer, and the worker handles messages.
    for _ in 0..3 {
        assert_eq!(get(&format!("{ops}/healthz"), None).await.0, 200);
        let (status, body) = get(&format!("{ops}/readyz"), None).await;
        assert_eq!(status, 200, "{body}");
    }
    let publisher = worker.publisher("orders").unwrap();
    publisher
        .send_bytes(b"during the flood", Default::default())
        .await
        .unwrap();
    let mut handled = 0;
    for _ in 0..200 {
        handled = worker.snapshot()[0].handled;
        if handled >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(handled, 1, "the worker handled nothing during the flood");

    // Every connection ends: the ones over the cap at once, the held ones (slow headers and
    // idle) after the 1 s header-read timeout. Without a timeout they would stay open.
    let mut open = 0;
    for s in held.iter_mut() {
        if !closed_within(s, Duration::from_secs(6)).await {
            open += 1;
        }
    }
    assert_eq!(open, 0, "{open} flood connections still open");

    // A kept-alive connection that went idle after a request is closed by the same timeout.
    let mut kept = TcpStream::connect(trigger).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let n = kept.read(&mut buf).await.unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    assert!(
        closed_within(&mut kept, Duration::from_secs(6)).await,
        "an idle kept-alive connection stayed open"
    );

    // The slots came back: the trigger port answers again.
    let (status, _) = get(&format!("http://{trigger}/healthz"), None).await;
    assert_eq!(status, 200);

    // Refusals were counted, by reason, on the ops endpoint's metrics.
    let (status, text) = get(&format!("{ops}/metrics"), Some(METRICS_TOKEN)).await;
    assert_eq!(status, 200);
    let over_cap = sample(
        &text,
        "ebbflow_http_refused_total{endpoint=\"trigger\",reason=\"max_connections\"}",
    );
    let timed_out = sample(
        &text,
        "ebbflow_http_refused_total{endpoint=\"trigger\",reason=\"header_timeout\"}",
    );
    // Each flood connection was either closed at once (over the cap) or held and closed by
    // the header-read timeout (which freed its slot for a later one).
    assert!(
        over_cap + timed_out >= held.len() as f64,
        "refusals {over_cap} + {timed_out} of {}: {text}",
        held.len()
    );
    assert!(
        over_cap >= (held.len() / 2) as f64,
        "max_connections refusals {over_cap} of {}",
        held.len()
    );
    assert!(timed_out >= 1.0, "no header timeout counted: {text}");
    worker.shutdown().await;
}

/// The trigger port serves no metrics: `/metrics` is on the ops endpoint only, behind its own
/// token, so a trigger token never unlocks them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trigger_port_serves_no_metrics() {
    let worker = Worker::new(settings())
        .with_store(Arc::new(MemoryStore::new()))
        .handler("orders", Nop)
        .start()
        .await
        .unwrap();
    let trigger = worker.trigger_addr().unwrap();
    for token in [None, Some(TRIGGER_TOKEN), Some(METRICS_TOKEN)] {
        let (status, body) = get(&format!("http://{trigger}/metrics"), token).await;
        assert_eq!(status, 404, "{token:?}: {body}");
        assert!(!body.contains("ebbflow_"), "{body}");
    }
    worker.shutdown().await;
}

/// A GET of `url` from the source address `from` (another loopback address than the flood's).
async fn get_from(from: &str, url: &str, token: Option<&str>) -> (u16, String) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .local_address(from.parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    let mut req = client.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.expect("the ops endpoint answers");
    (r.status().as_u16(), r.text().await.unwrap())
}

/// One peer flooding the ops port itself takes only its own share of the ops endpoint's
/// connections (`observability.max_connections_per_peer`), so probes from another address
/// (the kubelet's) still answer. Without the per-peer cap the flood holds all 64 slots and
/// every probe is closed unread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_peer_flooding_the_ops_port_leaves_the_probes_their_slots() {
    let worker = Worker::new(settings())
        .with_store(Arc::new(MemoryStore::new()))
        .handler("orders", Nop)
        .start()
        .await
        .unwrap();
    let ops_addr = worker.ops_addr().unwrap();
    let ops = format!("http://{ops_addr}");
    // 200 idle connections from 127.0.0.1, held (the header-read timeout is 5 s).
    let mut held = Vec::new();
    for _ in 0..200 {
        held.push(TcpStream::connect(ops_addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..5 {
        let (status, body) = get_from("127.0.0.2", &format!("{ops}/healthz"), None).await;
        assert_eq!(status, 200, "{body}");
        let (status, body) = get_from("127.0.0.2", &format!("{ops}/readyz"), None).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, text) =
        get_from("127.0.0.2", &format!("{ops}/metrics"), Some(METRICS_TOKEN)).await;
    assert_eq!(status, 200);
    let per_peer = sample(
        &text,
        "ebbflow_http_refused_total{endpoint=\"ops\",reason=\"max_connections_per_peer\"}",
    );
    // The default share is 16 of the 64: the other 184 were closed at once.
    assert_eq!(per_peer, 184.0, "{text}");
    drop(held);
    worker.shutdown().await;
}
