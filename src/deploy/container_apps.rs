//! Azure Container Apps: the app's YAML for `az containerapp create|update --yaml`: one
//! `azure-queue` custom scale rule per queue (Container Apps runs KEDA), the probes, and the
//! termination grace. Field names follow the Microsoft.App `Template`, `Scale`, `ScaleRule` and
//! `CustomScaleRule` definitions.
//!
//! Container Apps does not expose the HPA's scale-down behaviour; its replicas get their drain
//! time from `terminationGracePeriodSeconds` alone.

use super::keda::{env, queue_metadata};
use super::plan::{AuthPlan, Plan};
use super::yaml::{map, s, seq, Node};
use super::{ops_bind, CONTAINER_NAME, OPS_PORT};
use crate::config::{ConfigError, Settings};

/// The app secret holding the connection string (secret auth).
pub const SECRET_NAME: &str = "storage-connection";

/// The app secret holding the bus's Redis URL (with `[bus] kind = "redis"`).
pub const BUS_SECRET_NAME: &str = "bus-url";

/// Container Apps' own rule for app names, stricter than a DNS label: 2..=32 characters, no
/// `--`.
pub fn check_name(settings: &Settings) -> Result<(), ConfigError> {
    let name = settings.deploy.name.as_str();
    if (2..=32).contains(&name.len()) && !name.contains("--") {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            "deploy.name",
            name,
            "a container app's name is 2-32 characters without \"--\"",
        ))
    }
}

/// The app's YAML document.
pub fn document(settings: &Settings, plan: &Plan) -> Node {
    let d = &settings.deploy;
    let identity = d.container_apps_identity.as_deref().unwrap_or("system");
    let mut env_vars = vec![env("EBBFLOW__OBSERVABILITY__BIND", &ops_bind())];
    match &plan.auth {
        AuthPlan::Secret => env_vars.push(map([
            ("name", s("EBBFLOW__STORAGE__CONNECTION_STRING")),
            ("secretRef", s(SECRET_NAME)),
        ])),
        AuthPlan::Identity { endpoint, .. } => {
            env_vars.push(env("EBBFLOW__STORAGE__QUEUE_ENDPOINT", endpoint));
            env_vars.push(env("EBBFLOW__STORAGE__CREDENTIAL", "managed_identity"));
        }
    }
    if settings.bus.is_shared() {
        env_vars.push(map([
            ("name", s("EBBFLOW__BUS__URL")),
            ("secretRef", s(BUS_SECRET_NAME)),
        ]));
    }
    let probe = |kind: &str, path: &str, period: u32, failures: u32| {
        map([
            ("type", s(kind)),
            (
                "httpGet",
                map([("path", s(path)), ("port", Node::from(u32::from(OPS_PORT)))]),
            ),
            ("periodSeconds", Node::from(period)),
            ("failureThreshold", Node::from(failures)),
        ])
    };
    let container = map([
        ("name", s(CONTAINER_NAME)),
        ("image", s(d.image.as_str())),
        ("env", seq(env_vars)),
        (
            "resources",
            map([
                ("cpu", Node::Float(f64::from(d.cpu_millicores) / 1000.0)),
                ("memory", s(memory(d.memory_mib))),
            ]),
        ),
        (
            "probes",
            seq([
                probe("Liveness", "/healthz", 10, 3),
                probe("Readiness", "/readyz", 5, 1),
            ]),
        ),
    ]);
    let rules = plan.triggers.iter().map(|t| {
        let mut custom = map([
            ("type", s("azure-queue")),
            ("metadata", queue_metadata(plan, t)),
        ]);
        custom = match &plan.auth {
            AuthPlan::Secret => custom.with(
                "auth",
                seq([map([
                    ("secretRef", s(SECRET_NAME)),
                    ("triggerParameter", s("connection")),
                ])]),
            ),
            AuthPlan::Identity { .. } => custom.with("identity", s(identity)),
        };
        map([
            ("name", s(format!("queue-{}", t.queue))),
            ("custom", custom),
        ])
    });
    let template = map([
        // SIGTERM starts the drain; the platform waits this long before SIGKILL.
        ("terminationGracePeriodSeconds", Node::from(plan.grace_secs)),
        ("containers", seq([container])),
        (
            "scale",
            map([
                ("minReplicas", Node::from(plan.min_replicas)),
                ("maxReplicas", Node::from(plan.max_replicas)),
                ("pollingInterval", Node::from(plan.polling_secs)),
                ("cooldownPeriod", Node::from(plan.cooldown_secs)),
                ("rules", seq(rules)),
            ]),
        ),
    ]);
    let properties = map([
        ("configuration", map([("activeRevisionsMode", s("Single"))])),
        ("template", template),
    ]);
    match &plan.auth {
        AuthPlan::Secret => map([("properties", properties)]),
        AuthPlan::Identity { .. } => {
            let identity_node = if identity.eq_ignore_ascii_case("system") {
                map([("type", s("SystemAssigned"))])
            } else {
                map([
                    ("type", s("UserAssigned")),
                    (
                        "userAssignedIdentities",
                        map([(identity, Node::Map(Vec::new()))]),
                    ),
                ])
            };
            map([("identity", identity_node), ("properties", properties)])
        }
    }
}

/// Container Apps writes memory in Gi (`1Gi`, `0.5Gi`); other sizes stay in Mi.
fn memory(mib: u32) -> String {
    if mib.is_multiple_of(256) {
        let gi = f64::from(mib) / 1024.0;
        format!("{gi}Gi")
    } else {
        format!("{mib}Mi")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn memory_in_gi_where_container_apps_expects_it() {
        for (mib, text) in [
            (1024, "1Gi"),
            (512, "0.5Gi"),
            (1536, "1.5Gi"),
            (256, "0.25Gi"),
            (700, "700Mi"),
        ] {
            assert_eq!(super::memory(mib), text);
        }
    }
}
