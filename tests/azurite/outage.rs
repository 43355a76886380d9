//! Deletes outlast an outage shorter than the lease: a service that answers nothing but 503
//! for 10 s (longer than the 4-6 s a call is retried by default, shorter than the 30 s
//! visibility timeout) while 20 handled messages are being deleted. Each delete keeps retrying
//! until its message's lease would end, so all of them land once the service is back: no
//! message runs twice.

// The test reports its counts on stdout, shown with --nocapture.
#![allow(clippy::print_stdout)]

use crate::common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::proxy::{Faults, Proxy};
use ebbflow::config::{QueueSettings, Settings};
use ebbflow::store::QueueStore;
use ebbflow::store::{AzureStore, DEV_ACCOUNT, DEV_KEY};
use ebbflow::{Context, Handler, HandlerError};
use tokio::sync::Semaphore;

/// Records each run, after waiting for the gate.
#[derive(Clone)]
struct Gated {
    gate: Arc<Semaphore>,
    runs: Arc<Mutex<BTreeMap<String, u32>>>,
}

impl Handler for Gated {
    type Message = String;
    async fn handle(&self, body: String, _: Context) -> Result<(), HandlerError> {
        let _pass = self.gate.acquire().await.expect("gate open");
        *self.runs.lock().unwrap().entry(body).or_default() += 1;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_shorter_than_the_lease_loses_no_delete() {
    const OUTAGE: Duration = Duration::from_secs(10);
    let proxy = Proxy::start(&common::azurite_url()).await;
    let direct = common::azurite();
    let queue = common::fresh_queue(&direct, "outage").await;
    let name = queue.name().to_string();
    for i in 0..20 {
        queue
            .send(&format!("m{i}"), Default::default())
            .await
            .unwrap();
    }
    // Default retry policy and visibility timeout (30 s): only what the issue changes.
    let mut settings = Settings::default();
    let mut q = QueueSettings::default();
    q.concurrency = ebbflow::config::Concurrency::of::<32>();
    q.encoding = ebbflow::codec::Encoding::None;
    settings.queues.insert(name.clone(), q);
    settings.validate().unwrap();
    let cs = format!(
        "DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={DEV_KEY};QueueEndpoint={}",
        proxy.url()
    );
    let store: Arc<dyn QueueStore> = Arc::new(AzureStore::from_connection_string(&cs).unwrap());
    let gated = Gated {
        gate: Arc::new(Semaphore::new(0)),
        runs: Arc::default(),
    };
    let worker = common::start(&store, settings, &name, gated.clone()).await;
    common::wait_for("all 20 held", Duration::from_secs(20), || {
        worker.snapshot()[0].in_flight == 20
    })
    .await;
    // The service goes down; the handlers finish and their deletes meet the outage.
    proxy.set_faults(Faults {
        busy_every: Some(1),
        ..Faults::default()
    });
    let deletes_before = proxy.counts().delete;
    gated.gate.add_permits(1000);
    tokio::time::sleep(OUTAGE).await;
    proxy.set_faults(Faults::default());
    let refused_deletes = proxy.counts().delete - deletes_before;
    // Well before the 30 s visibility timeout ends, every delete has landed.
    common::wait_for_async("every delete landed", Duration::from_secs(12), || async {
        queue.approximate_depth().await.unwrap() == 0
    })
    .await;
    let snap = worker.snapshot().remove(0);
    worker.shutdown().await;
    let runs = gated.runs.lock().unwrap().clone();
    let duplicates: u32 = runs.values().map(|n| n - 1).sum();
    println!(
        "outage {OUTAGE:?}: {refused_deletes} delete tries refused with 503, {} handled, \
         {} runs, duplicates {duplicates}, store errors {}",
        snap.handled,
        runs.values().sum::<u32>(),
        snap.store_errors
    );
    assert!(
        refused_deletes >= 20 * 5,
        "the deletes met the outage past the old budget: {refused_deletes}"
    );
    assert_eq!(runs.len(), 20);
    assert_eq!(duplicates, 0);
    assert_eq!(snap.handled, 20);
}
