//! Credential faults, against Azurite behind the fault proxy: a token endpoint that is
//! unreachable or hangs for a while is retried and survived; the service refusing us once is
//! retried (with a fresh token), and only a streak of refusals stops the worker (exit 3).
//! Entra ID runs through a fake token credential and the proxy as a token-checking gateway.

// Each test reports its counts on stdout, shown with --nocapture.
#![allow(clippy::print_stdout)]

use crate::common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
use azure_core::error::ErrorKind;
use common::proxy::{Faults, Proxy};
use ebbflow::config::QueueSettings;
use ebbflow::store::{account_sas, AzureStore, DEV_ACCOUNT, DEV_KEY};
use ebbflow::store::{Queue, QueueStore, StoreError};
use ebbflow::{Context, Handler, HandlerError, Settings};

const UP: u8 = 0;
const UNREACHABLE: u8 = 1;
const HANGING: u8 = 2;

/// A token credential whose identity endpoint can be taken down. Token `n` is `fake-token-n`,
/// where n counts the tokens handed out; each lives `lifetime`.
#[derive(Debug)]
struct FakeIdentity {
    mode: AtomicU8,
    issued: AtomicU32,
    failures: AtomicU32,
    lifetime: time::Duration,
}

impl FakeIdentity {
    fn new(lifetime: time::Duration) -> Arc<Self> {
        Arc::new(Self {
            mode: AtomicU8::new(UP),
            issued: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            lifetime,
        })
    }
}

#[async_trait::async_trait]
impl TokenCredential for FakeIdentity {
    async fn get_token(
        &self,
        _scopes: &[&str],
        _options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        match self.mode.load(Ordering::SeqCst) {
            UNREACHABLE => {
                self.failures.fetch_add(1, Ordering::SeqCst);
                Err(azure_core::Error::with_message(
                    ErrorKind::Connection,
                    "identity endpoint 169.254.169.254 unreachable",
                ))
            }
            HANGING => {
                self.failures.fetch_add(1, Ordering::SeqCst);
                std::future::pending().await
            }
            _ => {
                let n = self.issued.fetch_add(1, Ordering::SeqCst) + 1;
                Ok(AccessToken::new(
                    format!("fake-token-{n}"),
                    time::OffsetDateTime::now_utc() + self.lifetime,
                ))
            }
        }
    }
}

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<String>>>);

impl Handler for Recorder {
    type Message = String;
    async fn handle(&self, body: String, _: Context) -> Result<(), HandlerError> {
        self.0.lock().unwrap().push(body);
        Ok(())
    }
}

impl Recorder {
    /// (distinct bodies handled, runs in all)
    fn tally(&self) -> (usize, usize) {
        let seen = self.0.lock().unwrap();
        (seen.iter().collect::<BTreeSet<_>>().len(), seen.len())
    }
}

fn settings(queue: &str) -> Settings {
    let mut s = Settings::default();
    s.storage.retry.max_attempts = 3;
    s.storage.retry.min_delay = Duration::from_millis(20);
    s.storage.retry.max_delay = Duration::from_millis(200);
    s.storage.retry.request_timeout = Duration::from_secs(2);
    let mut q = QueueSettings::default();
    q.encoding = ebbflow::codec::Encoding::None;
    q.idle_backoff.max = Duration::from_millis(300);
    q.scaling.max_tasks = ebbflow::config::MaxTasks::of::<1>();
    s.queues.insert(queue.to_string(), q);
    s.validate().unwrap();
    s
}

async fn send(queue: &Arc<dyn Queue>, prefix: &str, n: usize) {
    for i in 0..n {
        queue
            .send(&format!("{prefix}-{i}"), Default::default())
            .await
            .unwrap();
    }
}

/// The proxy as a gateway that takes bearer tokens, a store using `identity` through it, and
/// a direct handle on a fresh queue.
async fn gateway(
    identity: Arc<FakeIdentity>,
    prefix: &str,
) -> (Proxy, Arc<dyn QueueStore>, String, Arc<dyn Queue>) {
    let expiry = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
    let sas = account_sas(DEV_ACCOUNT, DEV_KEY, expiry).unwrap();
    let proxy = Proxy::start_token_gateway(&common::azurite_url(), &sas).await;
    let store: Arc<dyn QueueStore> =
        // The retry settings' cut-off: a token fetch gets half of it.
        Arc::new(
            AzureStore::from_credential(&proxy.url(), identity)
                .unwrap()
                .with_try_cutoff(Duration::from_secs(2)),
        );
    let name = common::unique(prefix);
    let direct = common::azurite().queue(&name).unwrap();
    direct.create_if_missing().await.unwrap();
    (proxy, store, name, direct)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_endpoint_outage_is_retried_logged_and_survived() {
    common::captured_logs();
    // Short-lived tokens, so the outage outlives the cached one.
    let identity = FakeIdentity::new(time::Duration::seconds(2));
    let (proxy, store, name, direct) = gateway(identity.clone(), "outage").await;
    // Every request asks for a fresh token (each lives 2 s, under the refresh margin).
    for n in 1..=10_000 {
        proxy.accept_token(&format!("fake-token-{n}"));
    }
    let recorder = Recorder::default();
    let worker = common::start(&store, settings(&name), &name, recorder.clone()).await;
    send(&direct, "before", 5).await;
    common::wait_for("5 handled", Duration::from_secs(20), || {
        worker.snapshot()[0].handled == 5
    })
    .await;
    // The identity endpoint is unreachable for 3 s, then hangs for 3 s; work arrives meanwhile.
    identity.mode.store(UNREACHABLE, Ordering::SeqCst);
    send(&direct, "during", 5).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    identity.mode.store(HANGING, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = worker.snapshot().remove(0);
    identity.mode.store(UP, Ordering::SeqCst);
    common::wait_for("10 handled", Duration::from_secs(30), || {
        worker.snapshot()[0].handled == 10
    })
    .await;
    assert!(worker.fatal_error().is_none(), "{:?}", worker.fatal_error());
    let unknown = worker.unknown_outcomes().remove(0).1;
    let report = worker.shutdown().await;
    let logs = common::captured_logs();
    println!(
        "token outage: {} failed token requests, {} store errors meanwhile; handled {:?}; \
         unknown outcomes {unknown:?}",
        identity.failures.load(Ordering::SeqCst),
        during.store_errors,
        recorder.tally()
    );
    assert!(
        identity.failures.load(Ordering::SeqCst) > 0,
        "the outage was met"
    );
    assert!(during.store_errors > 0, "calls failed during the outage");
    assert_eq!(recorder.tally(), (10, 10), "every message once");
    assert_eq!(report.exit_code(), 0);
    // Retried and logged as a token outage, never as a refusal or an unknown outcome: the
    // requests never left.
    let ours: Vec<&str> = logs.lines().filter(|l| l.contains(&name)).collect();
    assert!(
        ours.iter().any(|l| l.contains("transient error; retrying")
            && l.contains("no access token")
            && l.contains("unreachable")),
        "no retry logged for the unreachable endpoint"
    );
    assert!(
        ours.iter()
            .any(|l| l.contains("no access token") && l.contains("gave no token within 1s")),
        "no retry logged for the hanging endpoint"
    );
    assert!(!ours.iter().any(|l| l.contains("refused our credentials")));
    assert_eq!(unknown, Default::default());
    assert_eq!(proxy.denied(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_is_replaced_and_only_a_streak_of_refusals_is_final() {
    let identity = FakeIdentity::new(time::Duration::hours(1));
    let (proxy, store, name, direct) = gateway(identity.clone(), "refused").await;
    proxy.accept_token("fake-token-1");
    let recorder = Recorder::default();
    let worker = common::start(&store, settings(&name), &name, recorder.clone()).await;
    send(&direct, "a", 3).await;
    common::wait_for("3 handled", Duration::from_secs(20), || {
        worker.snapshot()[0].handled == 3
    })
    .await;
    // The service stops taking the cached token (say, a clock-skewed expiry): one 401, then
    // a fresh token is fetched and taken.
    proxy.revoke_token("fake-token-1");
    proxy.accept_token("fake-token-2");
    send(&direct, "b", 3).await;
    common::wait_for("6 handled", Duration::from_secs(20), || {
        worker.snapshot()[0].handled == 6
    })
    .await;
    assert!(worker.fatal_error().is_none());
    // One refusal (two if a depth probe raced the receive with the same token)...
    let refused = proxy.denied();
    assert!((1..=2).contains(&refused), "{refused}");
    assert_eq!(
        identity.issued.load(Ordering::SeqCst),
        2,
        "then one fresh token"
    );
    // A 403 on two calls in a row (under refusals_before_fatal = 3) is survived too.
    proxy.set_faults(Faults {
        deny_next: 2,
        ..Faults::default()
    });
    send(&direct, "c", 3).await;
    common::wait_for("9 handled", Duration::from_secs(20), || {
        worker.snapshot()[0].handled == 9
    })
    .await;
    assert!(worker.fatal_error().is_none());
    assert_eq!(proxy.denied() - refused, 2);
    // Revoked for good: the third refusal in a row stops the worker, exit 3.
    proxy.revoke_token("fake-token-2");
    let before = proxy.denied();
    let report = tokio::time::timeout(
        Duration::from_secs(30),
        worker.run_until(std::future::pending()),
    )
    .await
    .expect("the worker stops on its own");
    let refusals = proxy.denied() - before;
    println!(
        "refusals: survived 1 (401) and 2 (403); stopped after {refusals} more: {:?}",
        report.fatal
    );
    assert!(
        matches!(report.fatal, Some(StoreError::Unauthorized { .. })),
        "{:?}",
        report.fatal
    );
    assert!(refusals >= 3, "{refusals}");
    assert_eq!(report.exit_code(), 3);
    assert_eq!(recorder.tally(), (9, 9));
}

#[test]
fn tokens_go_over_https_or_to_loopback_only() {
    let identity = FakeIdentity::new(time::Duration::hours(1));
    let err = AzureStore::from_credential("http://acct.queue.example.com", identity.clone())
        .unwrap_err()
        .to_string();
    assert!(err.contains("https only"), "{err}");
    for ok in [
        "https://acct.queue.core.windows.net",
        "http://127.0.0.1:10001/devstoreaccount1",
        "http://localhost:10001/devstoreaccount1",
    ] {
        AzureStore::from_credential(ok, identity.clone()).unwrap();
    }
}
