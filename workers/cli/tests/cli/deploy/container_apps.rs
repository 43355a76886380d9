//! `ebbflow deploy --target container-apps`: the app's scale rules, probes, resources and grace,
//! its system- or user-assigned identity matching the one the worker asks a token for, and a
//! mismatch between the two refused naming the key.

use ebbflow_cli::deploy::{render, Target};

use super::{docs, env_of, load_toml, IDENTITY_SAMPLE};

/// IDENTITY_SAMPLE with the app's own (system-assigned) identity: no client id anywhere.
fn system_assigned_sample() -> String {
    IDENTITY_SAMPLE
        .lines()
        .filter(|l| {
            !l.starts_with("managed_identity_client_id")
                && !l.starts_with("container_apps_identity")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn container_apps_rules_probes_and_grace() {
    let settings = load_toml(&system_assigned_sample()).unwrap();
    let yaml = render(Target::ContainerApps, &settings).unwrap();
    let app = &docs(&yaml)[0];
    assert_eq!(app["identity"]["type"], "SystemAssigned");
    let template = &app["properties"]["template"];
    assert!(template["terminationGracePeriodSeconds"].as_u64().unwrap() > 125);
    let container = &template["containers"][0];
    let probes: Vec<_> = container["probes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["type"].as_str().unwrap(),
                p["httpGet"]["path"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(probes, [("Liveness", "/healthz"), ("Readiness", "/readyz")]);
    assert_eq!(container["resources"]["cpu"], 0.5);
    assert_eq!(container["resources"]["memory"], "1Gi");
    assert_eq!(
        env_of(container)["EBBFLOW__STORAGE__CREDENTIAL"]["value"],
        "managed_identity"
    );
    let scale = &template["scale"];
    assert_eq!(
        (&scale["minReplicas"], &scale["maxReplicas"]),
        (&1.into(), &30.into())
    );
    let rules = scale["rules"].as_array().unwrap();
    let names: Vec<_> = rules.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "queue-clicks-0",
            "queue-clicks-1",
            "queue-clicks-2",
            "queue-clicks-3",
            "queue-orders",
            "queue-reports"
        ]
    );
    let custom = &rules[4]["custom"];
    assert_eq!(custom["type"], "azure-queue");
    assert_eq!(custom["identity"], "system");
    assert_eq!(custom["metadata"]["queueLength"], "528");
    assert_eq!(custom["metadata"]["accountName"], "ordersacct");

    let yaml = render(Target::ContainerApps, &load_toml(IDENTITY_SAMPLE).unwrap()).unwrap();
    let app = &docs(&yaml)[0];
    assert_eq!(app["identity"]["type"], "UserAssigned");
    let ids = app["identity"]["userAssignedIdentities"]
        .as_object()
        .unwrap();
    assert_eq!(ids.len(), 1);
    assert!(ids.keys().all(|k| k.ends_with("/userAssignedIdentities/w")));
    // The worker asks for the token of the identity the app carries.
    let container = &app["properties"]["template"]["containers"][0];
    assert_eq!(
        env_of(container)["EBBFLOW__STORAGE__MANAGED_IDENTITY_CLIENT_ID"]["value"],
        "11111111-2222-3333-4444-555555555555"
    );
}

#[test]
fn container_apps_refuses_an_app_identity_the_worker_would_not_use() {
    // A system-assigned app, but the worker asks for a user-assigned client id.
    let mismatched = IDENTITY_SAMPLE
        .lines()
        .filter(|l| !l.starts_with("container_apps_identity"))
        .collect::<Vec<_>>()
        .join("\n");
    let err = render(Target::ContainerApps, &load_toml(&mismatched).unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("deploy.container_apps_identity"), "{err}");
    // A user-assigned app whose client id the worker does not know.
    let unknown = IDENTITY_SAMPLE
        .lines()
        .filter(|l| !l.starts_with("managed_identity_client_id"))
        .collect::<Vec<_>>()
        .join("\n");
    let err = render(Target::ContainerApps, &load_toml(&unknown).unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("deploy.identity_client_id"), "{err}");
    // KEDA's manifests are unaffected.
    assert!(render(Target::Keda, &load_toml(&mismatched).unwrap()).is_ok());
}
