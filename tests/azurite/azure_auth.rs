//! Every way to authenticate against Azurite, and what a bad credential or a missing queue
//! looks like (without leaking secrets).

use crate::common;

use std::time::Duration;

use ebbflow::config::{QueueSettings, Settings, StorageSettings};
use ebbflow::store::{self, QueueStore, SendOptions, StoreError};
use ebbflow::store::{account_sas, AzureStore, DEV_ACCOUNT, DEV_KEY};
use ebbflow::Worker;

async fn round_trip(store: &dyn QueueStore) {
    let q = store.queue(&common::unique("auth")).unwrap();
    q.create_if_missing().await.unwrap();
    q.send("hello", SendOptions::default()).await.unwrap();
    let got = q.receive(1, Duration::from_secs(30)).await.unwrap();
    assert_eq!(got[0].text, "hello");
    q.delete(&got[0].id, &got[0].pop_receipt).await.unwrap();
}

fn sas() -> String {
    let expiry = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
    account_sas(DEV_ACCOUNT, DEV_KEY, expiry).unwrap()
}

#[tokio::test]
async fn account_key_connection_string() {
    round_trip(common::azurite().as_ref()).await;
}

#[tokio::test]
async fn sas_url() {
    let url = format!("{}?{}", common::azurite_url(), sas());
    round_trip(&AzureStore::from_sas_url(&url).unwrap()).await;
}

#[tokio::test]
async fn sas_connection_string_and_settings() {
    let cs = format!(
        "QueueEndpoint={};SharedAccessSignature={}",
        common::azurite_url(),
        sas()
    );
    round_trip(&AzureStore::from_connection_string(&cs).unwrap()).await;
    let mut settings = StorageSettings::default();
    settings.queue_endpoint = Some(format!("{}/", common::azurite_url()));
    settings.sas_token = Some(format!("?{}", sas()).into());
    round_trip(store::open(&settings).unwrap().as_ref()).await;
}

#[tokio::test]
async fn use_development_storage_with_a_proxy_uri() {
    // UseDevelopmentStorage=true means Azurite's well-known account; the proxy URI points it
    // at the port the test script chose instead of 10001.
    let base = common::azurite_url()
        .trim_end_matches(&format!("/{DEV_ACCOUNT}"))
        .to_string();
    let cs = format!("UseDevelopmentStorage=true;DevelopmentStorageProxyUri={base}");
    round_trip(&AzureStore::from_connection_string(&cs).unwrap()).await;
}

/// The error of a properties call, with everything that could show it: Display, Debug, and
/// the store's own Debug.
async fn shown_failure(store: AzureStore) -> (StoreError, String) {
    let err = store
        .queue("orders")
        .unwrap()
        .approximate_depth()
        .await
        .unwrap_err();
    let shown = format!("{err} {err:?} {store:?}");
    (err, shown)
}

#[tokio::test]
async fn a_wrong_key_is_unauthorized_and_the_error_hides_secrets() {
    let key = "V3JvbmdLZXlXcm9uZ0tleVdyb25nS2V5V3JvbmdLZXk=";
    let cs = format!(
        "AccountName={DEV_ACCOUNT};AccountKey={key};QueueEndpoint={}",
        common::azurite_url()
    );
    let (err, shown) = shown_failure(AzureStore::from_connection_string(&cs).unwrap()).await;
    assert!(matches!(err, StoreError::Unauthorized { .. }), "{err}");
    assert!(!shown.contains(key), "{shown}");
    // A SAS that is not ours: its signature must not show either.
    let url = format!(
        "{}?sv=2019-02-02&ss=q&srt=sco&sp=r&se=2030-01-01T00%3A00%3A00Z&sig=Tm90UmVhbA%3D%3D",
        common::azurite_url()
    );
    let (err, shown) = shown_failure(AzureStore::from_sas_url(&url).unwrap()).await;
    assert!(matches!(err, StoreError::Unauthorized { .. }), "{err}");
    assert!(!shown.contains("Tm90UmVhbA"), "{shown}");
}

#[tokio::test]
async fn a_missing_queue_without_create_queues_stops_start_up_naming_it() {
    let queue = common::unique("absent");
    let mut settings = Settings::default();
    settings.storage.connection_string = Some(common::azurite_connection_string().into());
    settings.storage.create_queues = false;
    settings
        .queues
        .insert(queue.clone(), QueueSettings::default());
    settings.validate().unwrap();
    struct Never;
    impl ebbflow::Handler for Never {
        type Message = String;
        async fn handle(
            &self,
            _: String,
            _: ebbflow::Context,
        ) -> Result<(), ebbflow::HandlerError> {
            Ok(())
        }
    }
    let err = Worker::new(settings)
        .handler(&queue, Never)
        .start()
        .await
        .err()
        .unwrap()
        .to_string();
    assert_eq!(
        err,
        format!("queue {queue} does not exist; create it, or set storage.create_queues = true")
    );
}

struct Never;

impl ebbflow::Handler for Never {
    type Message = String;
    async fn handle(&self, _: String, _: ebbflow::Context) -> Result<(), ebbflow::HandlerError> {
        Ok(())
    }
}

#[tokio::test]
async fn a_wrong_account_name_is_told_apart_from_a_missing_queue() {
    // Azurite answers 404 ResourceNotFound for an account it does not have, as the service
    // answers for a path it does not know: neither is "queue missing".
    let endpoint = common::azurite_url().replace(DEV_ACCOUNT, "nosuchaccount");
    let cs = format!(
        "DefaultEndpointsProtocol=http;AccountName=nosuchaccount;AccountKey={DEV_KEY};QueueEndpoint={endpoint}"
    );
    let store = AzureStore::from_connection_string(&cs).unwrap();
    let q = store.queue(&common::unique("acct")).unwrap();
    let created = q.create_if_missing().await.unwrap_err();
    assert!(
        matches!(created, StoreError::AccountNotFound { .. }),
        "{created:?}"
    );
    let probed = q.approximate_depth().await.unwrap_err();
    assert!(
        matches!(probed, StoreError::AccountNotFound { .. }),
        "{probed:?}"
    );
    for create_queues in [true, false] {
        let queue = common::unique("acct");
        let mut settings = Settings::default();
        settings.storage.connection_string = Some(cs.clone().into());
        settings.storage.create_queues = create_queues;
        settings
            .queues
            .insert(queue.clone(), QueueSettings::default());
        let err = Worker::new(settings)
            .handler(&queue, Never)
            .start()
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("storage account or endpoint not found") && err.contains(&queue),
            "create_queues = {create_queues}: {err}"
        );
        assert!(
            !err.contains(&format!("queue {queue} does not exist")),
            "{err}"
        );
        assert!(!err.contains(DEV_KEY), "{err}");
    }
    // The right account and a missing queue still says the queue is missing.
    let right = common::azurite();
    let absent = right.queue(&common::unique("absent")).unwrap();
    assert!(matches!(
        absent.approximate_depth().await.unwrap_err(),
        StoreError::QueueNotFound { .. }
    ));
}
