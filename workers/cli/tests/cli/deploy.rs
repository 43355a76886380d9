//! `ebbflow deploy`: the committed examples under `deploy/` are what the generator writes for
//! `config/default.toml`, the manifests for sample configs carry the values their rules call
//! for, and every plain scalar reads the same in YAML 1.1 (Kubernetes) as in YAML 1.2. The
//! helpers and sample configs here are shared by the submodules: `container_apps` (that
//! target's rules and identity), `keys` (the `[deploy]` section's keys, limits and refusals),
//! `carried` (what the pod loads), `command` (the command line) and `yaml11`.
//!
//! Regenerate the examples after an intended change with
//! `EBBFLOW_BLESS=1 cargo test -p ebbflow-cli --test cli committed_examples`.

use std::collections::BTreeMap;
use std::path::Path;

use ebbflow::Settings;
use ebbflow_cli::deploy::{render, Config, Target, OPS_PORT};
use serde_json::Value;

use crate::root;

mod carried;
mod command;
mod container_apps;
mod keys;
/// The runtime's reference-table helpers (std and serde_json only).
#[path = "../../../../src/reference/table.rs"]
mod table;
mod yaml11;

use yaml11::{assert_yaml_1_1_reads_the_same, read_by_pyyaml};

fn load(dir: &Path) -> Config {
    Config::load_from(dir, &BTreeMap::new()).unwrap()
}

fn load_toml(toml: &str) -> Result<Config, String> {
    load_toml_with(toml, &BTreeMap::new())
}

fn load_toml_with(toml: &str, env: &BTreeMap<String, String>) -> Result<Config, String> {
    let dir = std::env::temp_dir().join(format!("ebbflow-deploy-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("default.toml"), toml).unwrap();
    let loaded = Config::load_from(&dir, env).map_err(|e| e.to_string());
    std::fs::remove_dir_all(&dir).unwrap();
    loaded
}

/// The documents, read back by a YAML parser.
fn docs(yaml: &str) -> Vec<Value> {
    serde_saphyr::from_str_multiple(yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
}

fn env_of(container: &Value) -> BTreeMap<String, Value> {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_string(), e.clone()))
        .collect()
}

#[test]
fn committed_examples_are_what_the_generator_writes_for_the_default_config() {
    let settings = load(&root("config"));
    for (target, file) in [
        (Target::Keda, root("deploy/keda.yaml")),
        (Target::ContainerApps, root("deploy/container-apps.yaml")),
    ] {
        let file = file.as_path();
        let fresh = render(target, &settings).unwrap();
        if std::env::var_os("EBBFLOW_BLESS").is_some() {
            std::fs::write(file, &fresh).unwrap();
        }
        let committed = std::fs::read_to_string(file).unwrap();
        assert_eq!(
            committed, fresh,
            "{} is stale: regenerate it with EBBFLOW_BLESS=1 cargo test -p ebbflow-cli --test cli committed_examples",
            file.display()
        );
        assert_yaml_1_1_reads_the_same(&fresh);
    }
}

const IDENTITY_SAMPLE: &str = r#"
[storage]
queue_endpoint = "https://ordersacct.queue.core.windows.net"
credential = "workload_identity"
managed_identity_client_id = "11111111-2222-3333-4444-555555555555"

[worker]
drain_timeout = "2m"

[queues.orders]
concurrency = 16
[queues.orders.scaling]
max_tasks = 8
messages_per_task = 64

[queues.clicks]
shards = 4
concurrency = 32
[queues.clicks.scaling]
max_tasks = 16
messages_per_task = 32

[queues.reports]
concurrency = 4
[queues.reports.scaling]
min_tasks = 0
idle_probe_interval = "1m"
max_tasks = 8
depth_rules = [{ from = 0, tasks = 1 }, { from = 10, tasks = 2 }, { from = 40, tasks = 4 }]

[deploy]
name = "orders-worker"
image = "registry.example/orders-worker:1.4.2"
namespace = "jobs"
max_replicas = 30
container_apps_identity = "/subscriptions/s/resourceGroups/g/providers/Microsoft.ManagedIdentity/userAssignedIdentities/w"
"#;

#[test]
fn keda_manifests_carry_each_queues_capacity_and_the_drain_time() {
    let settings = load_toml(IDENTITY_SAMPLE).unwrap();
    let yaml = render(Target::Keda, &settings).unwrap();
    assert_yaml_1_1_reads_the_same(&yaml);
    let docs = docs(&yaml);
    let kinds: Vec<_> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "ServiceAccount",
            "Deployment",
            "TriggerAuthentication",
            "ScaledObject"
        ]
    );
    for d in &docs {
        assert_eq!(d["metadata"]["namespace"], "jobs");
    }
    let sa = kind(&docs, "ServiceAccount");
    assert_eq!(
        sa["metadata"]["annotations"]["azure.workload.identity/client-id"],
        "11111111-2222-3333-4444-555555555555"
    );

    let deployment = kind(&docs, "Deployment");
    let pod = &deployment["spec"]["template"];
    assert_eq!(
        pod["metadata"]["labels"]["azure.workload.identity/use"],
        "true"
    );
    assert_eq!(pod["spec"]["serviceAccountName"], "orders-worker");
    // The drain (2 min) plus the release grace (5 s) must fit before SIGKILL.
    let grace = pod["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap();
    assert!(grace > 125, "{grace}");
    let container = &pod["spec"]["containers"][0];
    assert_eq!(container["image"], "registry.example/orders-worker:1.4.2");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(container[probe]["httpGet"]["port"], u64::from(OPS_PORT));
    }
    assert_eq!(container["ports"][0]["containerPort"], u64::from(OPS_PORT));
    let env = env_of(container);
    assert_eq!(
        env["EBBFLOW__OBSERVABILITY__BIND"]["value"],
        format!("0.0.0.0:{OPS_PORT}")
    );
    assert_eq!(
        env["EBBFLOW__STORAGE__QUEUE_ENDPOINT"]["value"],
        "https://ordersacct.queue.core.windows.net"
    );
    assert_eq!(
        env["EBBFLOW__STORAGE__CREDENTIAL"]["value"],
        "workload_identity"
    );
    assert!(
        deployment["spec"].get("replicas").is_none(),
        "KEDA owns the count"
    );

    let auth = kind(&docs, "TriggerAuthentication");
    assert_eq!(auth["spec"]["podIdentity"]["provider"], "azure-workload");

    let so = kind(&docs, "ScaledObject");
    let spec = &so["spec"];
    assert_eq!(spec["scaleTargetRef"]["name"], "orders-worker");
    // `orders` keeps a polling task, so one replica stays.
    assert_eq!(spec["minReplicaCount"], 1);
    assert_eq!(spec["maxReplicaCount"], 30);
    let down = &spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"];
    assert!(down["stabilizationWindowSeconds"].as_u64().unwrap() >= grace);
    assert_eq!(down["policies"][0]["periodSeconds"], grace);
    let triggers = spec["triggers"].as_array().unwrap();
    // orders, reports, and one trigger per shard of clicks.
    assert_eq!(triggers.len(), 6);
    let by_queue: BTreeMap<_, _> = triggers
        .iter()
        .map(|t| (t["metadata"]["queueName"].as_str().unwrap(), t))
        .collect();
    // orders: 16 in flight + 8 tasks x 64 messages. reports: 4 in flight, and its rules reach
    // the 4 tasks its concurrency allows at depth 40.
    // clicks: (32 in flight + 16 tasks x 32) / 4 shards on each shard.
    let shards = ["clicks-0", "clicks-1", "clicks-2", "clicks-3"];
    for (queue, length) in [("orders", "528"), ("reports", "44")]
        .into_iter()
        .chain(shards.map(|s| (s, "136")))
    {
        let t = by_queue[queue];
        assert_eq!(t["type"], "azure-queue");
        let m = &t["metadata"];
        assert_eq!(m["queueLength"], length, "{queue}");
        assert_eq!(m["activationQueueLength"], "0");
        assert_eq!(m["queueLengthStrategy"], "all");
        assert_eq!(m["accountName"], "ordersacct");
        assert_eq!(m["cloud"], "AzurePublicCloud");
        assert_eq!(t["authenticationRef"]["name"], "orders-worker-queue-auth");
        // KEDA's metadata is a map of strings.
        for (k, v) in m.as_object().unwrap() {
            assert!(v.is_string(), "{queue}: {k} = {v}");
        }
    }
}

/// The worker's settings with the environment a manifest's container gets (secrets filled
/// with a stand-in), over the config folder `dir`.
fn worker_settings_under(dir: &Path, container: &Value) -> Result<Settings, String> {
    let env: BTreeMap<String, String> = env_of(container)
        .into_iter()
        .map(|(name, e)| {
            let stand_in = if name == "EBBFLOW__BUS__URL" {
                "redis://127.0.0.1:6379"
            } else {
                "UseDevelopmentStorage=true"
            };
            let value = e["value"]
                .as_str()
                .map_or_else(|| stand_in.to_string(), str::to_string);
            (name, value)
        })
        .collect();
    Settings::load_from(dir, &env).map_err(|e| e.to_string())
}

#[test]
fn the_worker_accepts_the_environment_the_manifests_give_it() {
    let dir = std::env::temp_dir().join(format!("ebbflow-deploy-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let default_config = std::fs::read_to_string(root("config/default.toml")).unwrap();
    for config in [default_config.as_str(), IDENTITY_SAMPLE] {
        std::fs::write(dir.join("default.toml"), config).unwrap();
        let settings = load(&dir);
        let keda = docs(&render(Target::Keda, &settings).unwrap());
        let k8s_container = &kind(&keda, "Deployment")["spec"]["template"]["spec"]["containers"][0];
        let aca = docs(&render(Target::ContainerApps, &settings).unwrap());
        let aca_container = &aca[0]["properties"]["template"]["containers"][0];
        for container in [k8s_container, aca_container] {
            let worker = worker_settings_under(&dir, container).unwrap();
            assert_eq!(
                worker.observability.bind,
                Some(std::net::SocketAddr::from(([0, 0, 0, 0], OPS_PORT)))
            );
            // The worker reaches the storage the manifests authenticate KEDA to: the secret's
            // connection string, or the account endpoint with an Entra ID credential.
            match &worker.storage.connection_string {
                Some(_) => {
                    ebbflow::store::open(&worker.storage).unwrap();
                }
                None => {
                    assert_eq!(
                        worker.storage.queue_endpoint.as_deref(),
                        Some("https://ordersacct.queue.core.windows.net")
                    );
                    assert!(worker.storage.credential.is_some());
                }
            }
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Names and values that YAML 1.1 would read as booleans, numbers or timestamps if they were
/// written plain, in every string field a config can fill.
const TRICKY_SAMPLE: &str = r#"
[storage]
queue_endpoint = "https://acct.queue.core.windows.net"
credential = "managed_identity"

[queues.yes]
[queues.0755]
[queues.1e3]
[queues.off]
[queues.off.scaling]
min_tasks = 0
wake_on_publish = true
idle_probe_interval = "1m"

[deploy]
name = "on"
namespace = "no"
image = "1_000"
identity_client_id = "12:30"
container_apps_identity = "2024-01-01"
"#;

#[test]
fn kubernetes_reads_every_value_as_written() {
    let samples = [
        std::fs::read_to_string(root("config/default.toml")).unwrap(),
        IDENTITY_SAMPLE.to_string(),
        SECRET_SAMPLE.to_string(),
        TRICKY_SAMPLE.to_string(),
    ];
    for sample in &samples {
        let settings = load_toml(sample).unwrap();
        for target in [Target::Keda, Target::ContainerApps] {
            let yaml = render(target, &settings).unwrap();
            assert_yaml_1_1_reads_the_same(&yaml);
            // An independent YAML 1.1 reader sees exactly what a YAML 1.2 reader sees.
            assert_eq!(read_by_pyyaml(&yaml), docs(&yaml), "{target:?}:\n{yaml}");
        }
    }
    let settings = load_toml(TRICKY_SAMPLE).unwrap();
    let keda = read_by_pyyaml(&render(Target::Keda, &settings).unwrap());
    let queues: Vec<_> = kind(&keda, "ScaledObject")["spec"]["triggers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["metadata"]["queueName"].clone())
        .collect();
    assert_eq!(queues, ["0755", "1e3", "off", "yes"].map(Value::from));
    let sa = kind(&keda, "ServiceAccount");
    assert_eq!(sa["metadata"]["name"], "on");
    assert_eq!(sa["metadata"]["namespace"], "no");
    assert_eq!(
        sa["metadata"]["annotations"]["azure.workload.identity/client-id"],
        "12:30"
    );
    let deployment = kind(&keda, "Deployment");
    assert_eq!(
        deployment["spec"]["template"]["spec"]["containers"][0]["image"],
        "1_000"
    );
    let aca = &read_by_pyyaml(&render(Target::ContainerApps, &settings).unwrap())[0];
    assert!(aca["identity"]["userAssignedIdentities"]
        .as_object()
        .unwrap()
        .contains_key("2024-01-01"));
}

const SECRET_SAMPLE: &str = r#"
[storage]
connection_string = "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=c2VjcmV0LWtleQ==;EndpointSuffix=core.usgovcloudapi.net"

[triggers.http]
enabled = true
bind = "0.0.0.0:7075"
token = "a-long-enough-trigger-token"

[queues.orders]
[queues.orders.scaling]
min_tasks = 0

[deploy]
polling_interval = "10s"
cooldown_period = "10m"
"#;

#[test]
fn secret_auth_references_the_secret_and_never_writes_it() {
    let settings = load_toml(SECRET_SAMPLE).unwrap();
    for target in [Target::Keda, Target::ContainerApps] {
        let yaml = render(target, &settings).unwrap();
        assert_yaml_1_1_reads_the_same(&yaml);
        for secret in [
            "c2VjcmV0LWtleQ",
            "AccountKey",
            "a-long-enough-trigger-token",
        ] {
            assert!(!yaml.contains(secret), "{target:?} wrote {secret}:\n{yaml}");
        }
    }
    let docs = docs(&render(Target::Keda, &settings).unwrap());
    let auth = kind(&docs, "TriggerAuthentication");
    let r = &auth["spec"]["secretTargetRef"][0];
    assert_eq!(
        (&r["parameter"], &r["name"], &r["key"]),
        (
            &Value::from("connection"),
            &Value::from("ebbflow-worker-storage"),
            &Value::from("connection-string")
        )
    );
    let container = &kind(&docs, "Deployment")["spec"]["template"]["spec"]["containers"][0];
    // The trigger endpoint listens on every interface: its port is declared beside the ops port.
    let ports: Vec<_> = container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap(),
                p["containerPort"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(ports, [("ops", u64::from(OPS_PORT)), ("triggers", 7075)]);
    let from = &env_of(container)["EBBFLOW__STORAGE__CONNECTION_STRING"]["valueFrom"];
    assert_eq!(from["secretKeyRef"]["name"], "ebbflow-worker-storage");
    let spec = &kind(&docs, "ScaledObject")["spec"];
    // Every queue can wake from zero tasks (the HTTP trigger), so zero replicas is allowed.
    assert_eq!(spec["minReplicaCount"], 0);
    assert_eq!(spec["pollingInterval"], 10);
    assert_eq!(spec["cooldownPeriod"], 600);
    let m = &spec["triggers"][0]["metadata"];
    assert_eq!(m["cloud"], "AzureUSGovernmentCloud");
    assert!(m.get("accountName").is_none());
    // Defaults: 16 in flight + 4 tasks x 64.
    assert_eq!(m["queueLength"], "272");
}

const BUS_SAMPLE: &str = r#"
[bus]
kind = "redis"
url = "redis://worker:bus-pass-5ecret@redis.example:6380/0"

[queues.orders]
[queues.orders.scaling]
min_tasks = 0
"#;

#[test]
fn a_shared_bus_gets_its_url_from_a_secret() {
    let dir = std::env::temp_dir().join(format!("ebbflow-deploy-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("default.toml"), BUS_SAMPLE).unwrap();
    let settings = load(&dir);
    for target in [Target::Keda, Target::ContainerApps] {
        let yaml = render(target, &settings).unwrap();
        assert!(
            !yaml.contains("bus-pass-5ecret"),
            "{target:?} wrote the password:\n{yaml}"
        );
        assert_eq!(read_by_pyyaml(&yaml), docs(&yaml));
    }
    let keda = docs(&render(Target::Keda, &settings).unwrap());
    let container = &kind(&keda, "Deployment")["spec"]["template"]["spec"]["containers"][0];
    let url = &env_of(container)["EBBFLOW__BUS__URL"]["valueFrom"]["secretKeyRef"];
    assert_eq!(
        (&url["name"], &url["key"]),
        (&"ebbflow-worker-bus".into(), &"url".into())
    );
    // The bus can wake the queue from zero tasks, so zero replicas is allowed.
    assert_eq!(kind(&keda, "ScaledObject")["spec"]["minReplicaCount"], 0);
    let worker = worker_settings_under(&dir, container).unwrap();
    assert!(worker.bus.is_shared());
    let aca = docs(&render(Target::ContainerApps, &settings).unwrap());
    let aca_container = &aca[0]["properties"]["template"]["containers"][0];
    assert_eq!(
        env_of(aca_container)["EBBFLOW__BUS__URL"]["secretRef"],
        "bus-url"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The image the Dockerfile builds serves the ops endpoint on the port the manifests probe.
#[test]
fn the_dockerfile_exposes_the_port_the_manifests_probe() {
    let dockerfile = std::fs::read_to_string(root("Dockerfile")).unwrap();
    let exposed: Vec<&str> = dockerfile
        .lines()
        .filter_map(|l| l.trim().strip_prefix("EXPOSE "))
        .collect();
    assert_eq!(exposed, [OPS_PORT.to_string()]);
    assert!(dockerfile.contains(&format!("EBBFLOW__OBSERVABILITY__BIND=0.0.0.0:{OPS_PORT}")));
}
