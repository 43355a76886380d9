//! The manifests run what `ebbflow deploy` checked: the shell's `EBBFLOW__...` overrides reach
//! the pod, so the worker there loads the same settings (a bus and `min_tasks = 0` that made
//! the ScaledObject promise zero replicas are the pod's too).

use std::collections::BTreeMap;

use ebbflow_cli::deploy::{render, Config, Target};
use serde_json::Value;

use super::{docs, env_of, kind, worker_settings_under};

const PLAIN: &str = "[queues.orders]\n";

fn shell() -> BTreeMap<String, String> {
    [
        ("EBBFLOW__BUS__KIND", "redis"),
        (
            "EBBFLOW__BUS__URL",
            "redis://:s3cret-bus@cache.example:6380/0",
        ),
        ("EBBFLOW__QUEUES__ORDERS__SCALING__MIN_TASKS", "0"),
        ("EBBFLOW__QUEUES__ORDERS__CONCURRENCY", "4"),
        ("EBBFLOW__DEPLOY__IMAGE", "registry.example/orders:1.0"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The effective settings as JSON, secrets shown redacted (what `config check` prints).
fn effective(settings: &ebbflow::Settings) -> Value {
    serde_json::to_value(settings).unwrap()
}

#[test]
fn the_pod_loads_the_settings_deploy_checked() {
    let dir = std::env::temp_dir().join(format!("ebbflow-carry-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("default.toml"), PLAIN).unwrap();
    let checked = Config::load_from(&dir, &shell()).unwrap();
    assert!(checked.settings.bus.is_shared());
    let keda = docs(&render(Target::Keda, &checked).unwrap());
    // Zero replicas is promised because the bus can wake the queue...
    assert_eq!(kind(&keda, "ScaledObject")["spec"]["minReplicaCount"], 0);
    let k8s = &kind(&keda, "Deployment")["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(k8s["image"], "registry.example/orders:1.0");
    let aca = docs(&render(Target::ContainerApps, &checked).unwrap());
    let aca_container = &aca[0]["properties"]["template"]["containers"][0];
    for container in [k8s, aca_container] {
        // ...and the pod has the bus and the rules too: the same effective settings.
        let pod = worker_settings_under(&dir, container).unwrap();
        let mut want = effective(&checked.settings);
        let mut got = effective(&pod);
        // The secrets come from the platform's secret store (a stand-in here); the storage
        // secret is the manifests' own choice.
        for v in [&mut want, &mut got] {
            v["bus"]["url"] = Value::Null;
            v["storage"] = Value::Null;
            v["observability"]["bind"] = Value::Null;
        }
        assert_eq!(got, want, "{container}");
        let env = env_of(container);
        assert!(!env.contains_key("EBBFLOW__DEPLOY__IMAGE"), "deploy's own");
        assert_eq!(env["EBBFLOW__BUS__KIND"]["value"], "redis");
    }
    for target in [Target::Keda, Target::ContainerApps] {
        let yaml = render(target, &checked).unwrap();
        assert!(!yaml.contains("s3cret-bus"), "{yaml}");
        // Only variables ebbflow reads are named in the output.
        assert!(!yaml.contains("$EBBFLOW_BUS_URL"), "{yaml}");
        assert!(!yaml.contains("deploy.image is not set"), "{yaml}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_secret_only_the_shell_holds_is_refused_naming_it() {
    let mut env = shell();
    env.insert(
        "EBBFLOW__OBSERVABILITY__METRICS_TOKEN".into(),
        "tok-5ecret-value".into(),
    );
    let dir = std::env::temp_dir().join(format!("ebbflow-carry-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("default.toml"), PLAIN).unwrap();
    let checked = Config::load_from(&dir, &env).unwrap();
    let e = render(Target::Keda, &checked).unwrap_err().to_string();
    assert!(e.contains("EBBFLOW__OBSERVABILITY__METRICS_TOKEN"), "{e}");
    assert!(!e.contains("tok-5ecret-value"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_missing_image_is_said_loudly() {
    let dir = std::env::temp_dir().join(format!("ebbflow-carry-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("default.toml"), PLAIN).unwrap();
    let checked = Config::load_from(&dir, &BTreeMap::new()).unwrap();
    let yaml = render(Target::Keda, &checked).unwrap();
    assert!(
        yaml.starts_with("# WARNING: deploy.image is not set"),
        "{yaml}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `ebbflow deploy keda --config DIR` with DIR not in the image: the pod gets DIR's files (a
/// ConfigMap, `EBBFLOW_CONFIG_DIR` pointing at it), not the image's `/app/config`, and the
/// header says where the bus URL's secret value comes from without printing it.
#[test]
fn a_folder_the_image_does_not_carry_rides_with_the_manifests() {
    let dir = std::env::temp_dir().join(format!("ebbflow-carry-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("default.toml"),
        "[bus]\nkind = \"redis\"\nurl = \"redis://:s3cret-file@cache.example:6380/0\"\n\
         [queues.orders.scaling]\nmin_tasks = 0\n[deploy]\nimage = \"registry.example/o:1\"\n",
    )
    .unwrap();
    let (code, yaml, stderr) =
        super::command::ebbflow(&["deploy", "keda", "--config", dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(!yaml.contains("s3cret-file"), "{yaml}");
    let header: String = yaml.lines().take_while(|l| l.starts_with('#')).collect();
    assert!(!header.contains("$EBBFLOW__BUS__URL"), "{header}");
    assert!(header.contains("bus.url in"), "{header}");
    let docs = docs(&yaml);
    assert_eq!(kind(&docs, "ScaledObject")["spec"]["minReplicaCount"], 0);
    let container = &kind(&docs, "Deployment")["spec"]["template"]["spec"]["containers"][0];
    // The folder the pod loads: the shipped files where EBBFLOW_CONFIG_DIR points, else the
    // image's own (the repository's config/, which the Dockerfile copies).
    let pod_dir = std::env::temp_dir().join(format!("ebbflow-pod-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&pod_dir).unwrap();
    let pod_config = match env_of(container).get(ebbflow::config::DIR_VAR) {
        Some(_) => {
            let map = kind(&docs, "ConfigMap");
            for (name, text) in map["data"].as_object().unwrap() {
                std::fs::write(pod_dir.join(name), text.as_str().unwrap()).unwrap();
            }
            pod_dir.clone()
        }
        None => crate::root("config"),
    };
    let pod = worker_settings_under(&pod_config, container);
    let checked = ebbflow::Settings::load_from(&dir, &BTreeMap::new()).unwrap();
    // Container Apps has no ConfigMap: refused, naming the folder.
    let (code, _, stderr) = super::command::ebbflow(&[
        "deploy",
        "container-apps",
        "--config",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("no ConfigMap"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&pod_dir).unwrap();
    let pod = pod.unwrap_or_else(|e| panic!("the pod's worker refuses its config: {e}"));
    let (mut want, mut got) = (effective(&checked), effective(&pod));
    for v in [&mut want, &mut got] {
        v["bus"]["url"] = Value::Null;
        v["storage"] = Value::Null;
        v["observability"]["bind"] = Value::Null;
    }
    assert_eq!(got, want);
}
