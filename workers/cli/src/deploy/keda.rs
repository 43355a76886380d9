//! Kubernetes + KEDA: a Deployment, a TriggerAuthentication and a ScaledObject with one
//! `azure-queue` trigger per queue (and a ServiceAccount for workload identity).
//!
//! Field names follow KEDA's ScaledObject and azure-queue scaler references and the
//! `autoscaling/v2` HPA behaviour KEDA passes through (`advanced.horizontalPodAutoscalerConfig`).

use super::load::Config;
use super::plan::{AuthPlan, Cloud, Plan, QueueTrigger, SCALE_DOWN_PERCENT};
use super::ship::{config_map_name, MOUNT_DIR};
use super::yaml::{map, s, seq, Node};
use super::{ops_bind, CONTAINER_NAME, OPS_PORT};

/// The pod volume holding the shipped config files.
const CONFIG_VOLUME: &str = "config";

/// The ConfigMap with the config files the image does not carry (`files`: name, text).
pub fn config_map(config: &Config, files: &[(String, String)]) -> Node {
    map([
        ("apiVersion", s("v1")),
        ("kind", s("ConfigMap")),
        ("metadata", metadata(config, &config_map_name(config))),
        (
            "data",
            map(files
                .iter()
                .map(|(name, text)| (name.as_str(), s(text.as_str())))),
        ),
    ])
}

/// The secret key holding the connection string (secret auth).
pub const SECRET_KEY: &str = "connection-string";

/// The manifests, in apply order.
pub fn documents(config: &Config, plan: &Plan) -> Vec<Node> {
    let name = config.deploy.name.as_str();
    let mut docs = Vec::new();
    if let AuthPlan::Identity { client_id, .. } = &plan.auth {
        let mut annotations = Vec::new();
        if let Some(id) = client_id {
            annotations.push(("azure.workload.identity/client-id", s(id.as_str())));
        }
        let mut meta = metadata(config, name);
        if !annotations.is_empty() {
            meta = meta.with("annotations", map(annotations));
        }
        docs.push(map([
            ("apiVersion", s("v1")),
            ("kind", s("ServiceAccount")),
            ("metadata", meta),
        ]));
    }
    docs.push(deployment(config, plan));
    docs.push(trigger_authentication(config, plan));
    docs.push(scaled_object(config, plan));
    docs
}

/// `metadata` with the name, the namespace when configured, and the app label.
fn metadata(config: &Config, name: &str) -> Node {
    let mut meta = map([("name", s(name))]);
    if let Some(ns) = &config.deploy.namespace {
        meta = meta.with("namespace", s(ns.as_str()));
    }
    meta.with("labels", labels(config))
}

fn labels(config: &Config) -> Node {
    map([("app.kubernetes.io/name", s(config.deploy.name.as_str()))])
}

/// The storage part of the worker's environment.
fn storage_env(config: &Config, plan: &Plan) -> Vec<Node> {
    match &plan.auth {
        AuthPlan::Secret => vec![map([
            ("name", s("EBBFLOW__STORAGE__CONNECTION_STRING")),
            (
                "valueFrom",
                map([(
                    "secretKeyRef",
                    map([("name", s(secret_name(config))), ("key", s(SECRET_KEY))]),
                )]),
            ),
        ])],
        AuthPlan::Identity { endpoint, .. } => {
            let mut vars = vec![
                env("EBBFLOW__STORAGE__QUEUE_ENDPOINT", endpoint),
                env("EBBFLOW__STORAGE__CREDENTIAL", "workload_identity"),
            ];
            // The claim check's blob side, on the same identity (it needs Storage Blob Data
            // Contributor on the container); a SAS URL is a secret and stays out.
            if let Some(blob) = plain_blob_endpoint(config) {
                vars.push(env("EBBFLOW__STORAGE__CLAIM_CHECK__BLOB_ENDPOINT", blob));
            }
            vars
        }
    }
}

/// The claim check's configured blob endpoint when it carries no SAS (a SAS is a secret and
/// never goes into a manifest).
pub fn plain_blob_endpoint(config: &Config) -> Option<&str> {
    let claim = &config.settings.storage.claim_check;
    claim
        .blob_endpoint
        .as_deref()
        .filter(|url| !url.contains("sig=") && claim.sas_token.is_none())
}

/// The secret key holding the bus's Redis URL.
pub const BUS_SECRET_KEY: &str = "url";

/// The Kubernetes secret holding the bus's Redis URL (with `[bus] kind = "redis"`).
pub fn bus_secret_name(config: &Config) -> String {
    format!("{}-bus", config.deploy.name)
}

/// The Kubernetes secret holding the connection string (secret auth).
pub fn secret_name(config: &Config) -> String {
    format!("{}-storage", config.deploy.name)
}

pub(super) fn env(name: &str, value: &str) -> Node {
    map([("name", s(name)), ("value", s(value))])
}

/// An HTTP probe on the ops port. Liveness tolerates three misses; readiness turns at the first
/// 503 (a drain has begun), so a rollout does not count on a replica that is stopping.
fn probe(path: &str, period: u32, failures: u32) -> Node {
    map([
        (
            "httpGet",
            map([("path", s(path)), ("port", Node::from(u32::from(OPS_PORT)))]),
        ),
        ("periodSeconds", Node::from(period)),
        ("failureThreshold", Node::from(failures)),
    ])
}

/// The ops port, and the trigger endpoint's when it listens beyond the pod's loopback (so a
/// Service can send work-detected events to it).
fn ports(config: &Config) -> Vec<Node> {
    let mut ports = vec![map([
        ("name", s("ops")),
        ("containerPort", Node::from(u32::from(OPS_PORT))),
    ])];
    let http = &config.settings.triggers.http;
    if http.enabled && !http.bind.ip().is_loopback() {
        ports.push(map([
            ("name", s("triggers")),
            ("containerPort", Node::from(u32::from(http.bind.port()))),
        ]));
    }
    ports
}

fn deployment(config: &Config, plan: &Plan) -> Node {
    let d = &config.deploy;
    let mut pod_labels = vec![("app.kubernetes.io/name", s(d.name.as_str()))];
    if matches!(plan.auth, AuthPlan::Identity { .. }) {
        // The workload identity webhook injects the federated token only into labelled pods.
        pod_labels.push(("azure.workload.identity/use", s("true")));
    }
    let mut env = vec![env("EBBFLOW__OBSERVABILITY__BIND", &ops_bind())];
    env.extend(storage_env(config, plan));
    if config.settings.bus.is_shared() {
        // The Redis URL may carry a password: from a secret, like the storage's.
        env.push(map([
            ("name", s("EBBFLOW__BUS__URL")),
            (
                "valueFrom",
                map([(
                    "secretKeyRef",
                    map([
                        ("name", s(bus_secret_name(config))),
                        ("key", s(BUS_SECRET_KEY)),
                    ]),
                )]),
            ),
        ]));
    }
    // What the shell said when the manifests were checked (render refused any secret).
    let carried = super::carried(config).unwrap_or_default();
    env.extend(carried.iter().map(|(k, v)| self::env(k, v)));
    if config.ship_files {
        // The folder the settings were checked from, not the image's /app/config.
        env.push(self::env(ebbflow::config::DIR_VAR, MOUNT_DIR));
    }
    let memory = format!("{}Mi", d.memory_mib);
    let container = map([
        ("name", s(CONTAINER_NAME)),
        ("image", s(d.image())),
        ("ports", seq(ports(config))),
        ("env", seq(env)),
        (
            "resources",
            map([
                (
                    "requests",
                    map([
                        ("cpu", s(format!("{}m", d.cpu_millicores))),
                        ("memory", s(memory.as_str())),
                    ]),
                ),
                ("limits", map([("memory", s(memory.as_str()))])),
            ]),
        ),
    ]);
    let container = if config.ship_files {
        container.with(
            "volumeMounts",
            seq([map([
                ("name", s(CONFIG_VOLUME)),
                ("mountPath", s(MOUNT_DIR)),
                ("readOnly", Node::from(true)),
            ])]),
        )
    } else {
        container
    };
    let container = container
        .with("livenessProbe", probe("/healthz", 10, 3))
        .with("readinessProbe", probe("/readyz", 5, 1))
        .with(
            "securityContext",
            map([
                ("allowPrivilegeEscalation", Node::from(false)),
                ("readOnlyRootFilesystem", Node::from(true)),
                ("capabilities", map([("drop", seq([s("ALL")]))])),
            ]),
        );
    let mut pod_spec = Vec::new();
    if matches!(plan.auth, AuthPlan::Identity { .. }) {
        pod_spec.push(("serviceAccountName", s(d.name.as_str())));
    }
    pod_spec.extend([
        // SIGTERM starts the drain; the kubelet waits this long before SIGKILL.
        ("terminationGracePeriodSeconds", Node::from(plan.grace_secs)),
        ("securityContext", map([("runAsNonRoot", Node::from(true))])),
        ("containers", seq([container])),
    ]);
    if config.ship_files {
        pod_spec.push((
            "volumes",
            seq([map([
                ("name", s(CONFIG_VOLUME)),
                ("configMap", map([("name", s(config_map_name(config)))])),
            ])]),
        ));
    }
    let pod_template = map([
        (
            "metadata",
            map([
                ("labels", map(pod_labels)),
                (
                    "annotations",
                    map([
                        ("prometheus.io/scrape", s("true")),
                        ("prometheus.io/port", s(OPS_PORT.to_string())),
                        ("prometheus.io/path", s("/metrics")),
                    ]),
                ),
            ]),
        ),
        ("spec", map(pod_spec)),
    ]);
    map([
        ("apiVersion", s("apps/v1")),
        ("kind", s("Deployment")),
        ("metadata", metadata(config, d.name.as_str())),
        (
            // No `replicas`: KEDA owns the count.
            "spec",
            map([
                ("selector", map([("matchLabels", labels(config))])),
                ("template", pod_template),
            ]),
        ),
    ])
}

/// The TriggerAuthentication's name.
pub fn auth_name(config: &Config) -> String {
    format!("{}-queue-auth", config.deploy.name)
}

fn trigger_authentication(config: &Config, plan: &Plan) -> Node {
    let spec = match &plan.auth {
        AuthPlan::Secret => map([(
            "secretTargetRef",
            seq([map([
                ("parameter", s("connection")),
                ("name", s(secret_name(config))),
                ("key", s(SECRET_KEY)),
            ])]),
        )]),
        AuthPlan::Identity { client_id, .. } => {
            let mut identity = map([("provider", s("azure-workload"))]);
            if let Some(id) = client_id {
                identity = identity.with("identityId", s(id.as_str()));
            }
            map([("podIdentity", identity)])
        }
    };
    map([
        ("apiVersion", s("keda.sh/v1alpha1")),
        ("kind", s("TriggerAuthentication")),
        ("metadata", metadata(config, &auth_name(config))),
        ("spec", spec),
    ])
}

/// The `azure-queue` metadata shared by KEDA triggers and Container Apps custom rules. Every
/// value is text: both take a map of strings.
pub(super) fn queue_metadata(plan: &Plan, t: &QueueTrigger) -> Node {
    let mut m = map([
        ("queueName", s(t.queue.as_str())),
        ("queueLength", s(t.queue_length.to_string())),
        ("activationQueueLength", s("0")),
        ("queueLengthStrategy", s("all")),
    ]);
    if let AuthPlan::Identity { account, .. } = &plan.auth {
        m = m.with("accountName", s(account.as_str()));
    }
    m = m.with("cloud", s(plan.cloud.keda_name()));
    if let Cloud::Private(suffix) = &plan.cloud {
        m = m.with("endpointSuffix", s(suffix.as_str()));
    }
    m
}

fn scaled_object(config: &Config, plan: &Plan) -> Node {
    let triggers = plan.triggers.iter().map(|t| {
        map([
            ("type", s("azure-queue")),
            ("metadata", queue_metadata(plan, t)),
            ("authenticationRef", map([("name", s(auth_name(config)))])),
        ])
    });
    let behavior = map([(
        "scaleDown",
        map([
            (
                "stabilizationWindowSeconds",
                Node::from(plan.scale_down_window_secs),
            ),
            (
                "policies",
                seq([map([
                    ("type", s("Percent")),
                    ("value", Node::from(SCALE_DOWN_PERCENT)),
                    ("periodSeconds", Node::from(plan.scale_down_period_secs)),
                ])]),
            ),
        ]),
    )]);
    map([
        ("apiVersion", s("keda.sh/v1alpha1")),
        ("kind", s("ScaledObject")),
        ("metadata", metadata(config, config.deploy.name.as_str())),
        (
            "spec",
            map([
                (
                    "scaleTargetRef",
                    map([("name", s(config.deploy.name.as_str()))]),
                ),
                ("pollingInterval", Node::from(plan.polling_secs)),
                ("cooldownPeriod", Node::from(plan.cooldown_secs)),
                ("minReplicaCount", Node::from(plan.min_replicas)),
                ("maxReplicaCount", Node::from(plan.max_replicas)),
                (
                    "advanced",
                    map([(
                        "horizontalPodAutoscalerConfig",
                        map([("behavior", behavior)]),
                    )]),
                ),
                ("triggers", seq(triggers)),
            ]),
        ),
    ])
}
