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
use ebbflow::config::ConfigError;

use super::load::{invalid, Config};

/// The app secret holding the connection string (secret auth).
pub const SECRET_NAME: &str = "storage-connection";

/// The app secret holding the bus's Redis URL (with `[bus] kind = "redis"`).
pub const BUS_SECRET_NAME: &str = "bus-url";

/// Container Apps' own rule for app names, stricter than a DNS label: 2..=32 characters, no
/// `--`.
pub fn check_name(config: &Config) -> Result<(), ConfigError> {
    let name = config.deploy.name.as_str();
    if (2..=32).contains(&name.len()) && !name.contains("--") {
        Ok(())
    } else {
        Err(invalid(
            "deploy.name",
            name,
            "a container app's name is 2-32 characters without \"--\"",
        ))
    }
}

/// The app's identity and the worker's must be one: with Entra ID the worker asks for a token
/// of the identity whose client id the config names (`deploy.identity_client_id`, else
/// `storage.managed_identity_client_id`), or of the app's system-assigned identity when none
/// is named. A system-assigned app whose worker asks for a user-assigned client id, or a
/// user-assigned app whose worker does not know that identity's client id, could never
/// authenticate: refused, naming the key to set.
pub fn check_identity(config: &Config, plan: &Plan) -> Result<(), ConfigError> {
    let AuthPlan::Identity { client_id, .. } = &plan.auth else {
        return Ok(());
    };
    let identity = config
        .deploy
        .container_apps_identity
        .as_deref()
        .unwrap_or("system");
    let system = identity.eq_ignore_ascii_case("system");
    match (system, client_id) {
        (true, Some(id)) => Err(invalid(
            "deploy.container_apps_identity",
            identity,
            format!(
                "the worker asks for the user-assigned identity with client id {id} \
                 (deploy.identity_client_id or storage.managed_identity_client_id), which a \
                 system-assigned app does not have: set deploy.container_apps_identity to that \
                 identity's resource id, or remove the client id to use the app's own identity"
            ),
        )),
        (false, None) => Err(invalid(
            "deploy.identity_client_id",
            "(unset)",
            "a user-assigned deploy.container_apps_identity needs its client id, so the worker \
             asks for that identity's token",
        )),
        _ => Ok(()),
    }
}

/// The app's YAML document.
pub fn document(config: &Config, plan: &Plan) -> Node {
    let d = &config.deploy;
    let identity = d.container_apps_identity.as_deref().unwrap_or("system");
    let mut env_vars = vec![env("EBBFLOW__OBSERVABILITY__BIND", &ops_bind())];
    match &plan.auth {
        AuthPlan::Secret => env_vars.push(map([
            ("name", s("EBBFLOW__STORAGE__CONNECTION_STRING")),
            ("secretRef", s(SECRET_NAME)),
        ])),
        AuthPlan::Identity {
            endpoint,
            client_id,
            ..
        } => {
            env_vars.push(env("EBBFLOW__STORAGE__QUEUE_ENDPOINT", endpoint));
            env_vars.push(env("EBBFLOW__STORAGE__CREDENTIAL", "managed_identity"));
            // The user-assigned identity the app carries (check_identity): the worker asks
            // for its token whatever config the image holds.
            if let Some(id) = client_id {
                env_vars.push(env("EBBFLOW__STORAGE__MANAGED_IDENTITY_CLIENT_ID", id));
            }
            // The claim check's blob side, on the same identity.
            if let Some(blob) = super::keda::plain_blob_endpoint(config) {
                env_vars.push(env("EBBFLOW__STORAGE__CLAIM_CHECK__BLOB_ENDPOINT", blob));
            }
        }
    }
    if config.settings.bus.is_shared() {
        env_vars.push(map([
            ("name", s("EBBFLOW__BUS__URL")),
            ("secretRef", s(BUS_SECRET_NAME)),
        ]));
    }
    // What the shell said when the manifests were checked (render refused any secret).
    let carried = super::carried(config).unwrap_or_default();
    env_vars.extend(carried.iter().map(|(k, v)| env(k, v)));
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
        ("image", s(d.image())),
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
