//! The `[deploy]` section: the book's reference table lists its keys, the worker ignores it while
//! the command line reads it (environment over files), bad values and impossible plans are
//! refused naming the key, and settings at their limits still make manifests the engines accept.

use std::collections::BTreeMap;

use ebbflow::Settings;
use ebbflow_cli::deploy::{render, Target};

use super::{docs, kind, load_toml, load_toml_with, table};
use crate::root;

#[test]
fn settings_at_their_limits_still_make_manifests_the_engines_accept() {
    let name = format!("w{}", "x".repeat(62));
    let toml = format!(
        r#"
[worker]
drain_timeout = "1h"
[queues.big]
shards = 100
concurrency = 10000
[queues.big.scaling]
max_tasks = 256
messages_per_task = 1000000
[deploy]
name = "{name}"
max_replicas = 1000
polling_interval = "1h"
cooldown_period = "24h"
cpu_millicores = 64000
memory_mib = 262144
"#
    );
    let settings = load_toml(&toml).unwrap();
    let docs = docs(&render(Target::Keda, &settings).unwrap());
    let pod = &kind(&docs, "Deployment")["spec"]["template"]["spec"];
    assert_eq!(pod["terminationGracePeriodSeconds"], 3610);
    let spec = &kind(&docs, "ScaledObject")["spec"];
    let down = &spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"];
    // The HPA refuses windows over 3600 s and periods over 1800 s.
    assert_eq!(down["stabilizationWindowSeconds"], 3600);
    assert_eq!(down["policies"][0]["periodSeconds"], 1800);
    let triggers = spec["triggers"].as_array().unwrap();
    assert_eq!(triggers.len(), 100);
    // (10,000 + 256 x 1,000,000) / 100 shards.
    assert_eq!(triggers[99]["metadata"]["queueName"], "big-99");
    assert_eq!(triggers[99]["metadata"]["queueLength"], "2560100");
    // Too long for a container app's name: refused, naming the key.
    let err = render(Target::ContainerApps, &settings)
        .unwrap_err()
        .to_string();
    assert!(err.contains("deploy.name"), "{err}");
}

/// The book's `[deploy]` table (docs/src/configuration.md, region `deploy-reference`) lists
/// every key of [`ebbflow_cli::deploy::DeploySettings`] with its default, and no other.
#[test]
fn the_deploy_reference_lists_every_deploy_key_with_its_default() {
    let value = serde_json::to_value(ebbflow_cli::deploy::DeploySettings::default())
        .expect("deploy settings serialize");
    let mut keys = BTreeMap::new();
    table::flatten("deploy", &value, &mut keys);
    let reference = std::fs::read_to_string(root("docs/src/configuration.md")).unwrap();
    let problems = table::disagreements(&reference, "deploy-reference", &keys);
    assert!(
        problems.is_empty(),
        "docs/src/configuration.md's [deploy] table and DeploySettings disagree:\n  {}",
        problems.join("\n  ")
    );
}

/// One config folder serves both: a worker ignores `[deploy]` (even a value the command line
/// refuses), and the command line reads it, with `EBBFLOW__DEPLOY__...` over the files.
#[test]
fn the_deploy_section_is_the_command_lines_and_the_worker_ignores_it() {
    let toml = "[queues.orders]\n[deploy]\nname = \"orders-worker\"\nmax_replicas = 0\n";
    let dir = std::env::temp_dir().join(format!("ebbflow-deploy-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("default.toml"), toml).unwrap();
    let env = BTreeMap::from([("EBBFLOW__DEPLOY__UNKNOWN_KEY".to_string(), "1".to_string())]);
    let worker = Settings::load_from(&dir, &env);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(worker.unwrap().queues.contains_key("orders"));
    let err = load_toml(toml).unwrap_err();
    assert!(err.contains("deploy.max_replicas"), "{err}");
    let env = BTreeMap::from([
        ("EBBFLOW__DEPLOY__MAX_REPLICAS".to_string(), "7".to_string()),
        ("EBBFLOW__DEPLOY__NAME".to_string(), "from-env".to_string()),
    ]);
    let config = load_toml_with(toml, &env).unwrap();
    assert_eq!(config.deploy.max_replicas.get(), 7);
    assert_eq!(config.deploy.name.as_str(), "from-env");
    assert!(config.settings.queues.contains_key("orders"));
    let env = BTreeMap::from([("EBBFLOW__DEPLOY__REPLICAS".to_string(), "3".to_string())]);
    let err = load_toml_with("[queues.orders]", &env).unwrap_err();
    assert!(err.contains("replicas"), "{err}");
}

#[test]
fn bad_deploy_settings_name_their_key() {
    for (toml, key) in [
        ("[deploy]\nname = \"Orders_Worker\"", "deploy.name"),
        ("[deploy]\nimage = \"has space:1\"", "deploy.image"),
        ("[deploy]\nmax_replicas = 0", "deploy.max_replicas"),
        ("[deploy]\nmax_replicas = 1001", "deploy.max_replicas"),
        (
            "[deploy]\npolling_interval = \"1500ms\"",
            "deploy.polling_interval",
        ),
        (
            "[deploy]\ncooldown_period = \"0s\"",
            "deploy.cooldown_period",
        ),
        ("[deploy]\nmin_replicas = 11", "deploy.min_replicas"),
        ("[deploy]\nauth = \"password\"", "deploy.auth"),
        ("[deploy]\ncpu_millicores = 5", "deploy.cpu_millicores"),
        ("[deploy]\nreplicas = 3", "replicas"),
    ] {
        let err = load_toml(toml).unwrap_err();
        assert!(err.contains(key), "{toml}: {err}");
    }
    // An unknown choice lists the values, in the key's words.
    let err = load_toml("[deploy]\nauth = \"key\"").unwrap_err();
    assert!(
        err.contains("deploy.auth = \"key\"")
            && err.contains("`identity`")
            && !err.contains("variant constructor"),
        "{err}"
    );
}

#[test]
fn impossible_plans_are_refused_with_the_reason() {
    let no_queues = load_toml("[worker]\ndrain_timeout = \"10s\"").unwrap();
    let err = render(Target::Keda, &no_queues).unwrap_err().to_string();
    assert!(err.contains("no queues"), "{err}");
    let zero = load_toml("[queues.orders]\n[deploy]\nmin_replicas = 0").unwrap();
    let err = render(Target::Keda, &zero).unwrap_err().to_string();
    assert!(err.contains("queues.orders.scaling.min_tasks"), "{err}");
    let identity_without_endpoint =
        load_toml("[queues.orders]\n[deploy]\nauth = \"identity\"").unwrap();
    let err = render(Target::ContainerApps, &identity_without_endpoint)
        .unwrap_err()
        .to_string();
    assert!(err.contains("storage.queue_endpoint"), "{err}");
    // A DNS label Kubernetes takes, but longer than a container app's name may be.
    let long =
        load_toml("[queues.orders]\n[deploy]\nname = \"orders-worker-for-the-eu-west-region\"")
            .unwrap();
    render(Target::Keda, &long).unwrap();
    let err = render(Target::ContainerApps, &long)
        .unwrap_err()
        .to_string();
    assert!(err.contains("deploy.name"), "{err}");
}
