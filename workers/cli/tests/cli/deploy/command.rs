//! The `ebbflow deploy` command itself: what it prints and how it fails.

/// Runs `ebbflow <args>` with a clean environment; returns (exit code, stdout, stderr).
pub(super) fn ebbflow(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ebbflow"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        // The repository's top: `config/` (read without --config) and `deploy/`.
        .current_dir(crate::root("."))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_command_prints_the_committed_examples() {
    for (command, file) in [
        ("keda", "deploy/keda.yaml"),
        ("container-apps", "deploy/container-apps.yaml"),
    ] {
        let (code, stdout, stderr) = ebbflow(&["deploy", command, "--config", "config"]);
        assert_eq!(code, 0, "{stderr}");
        assert_eq!(
            stdout,
            std::fs::read_to_string(crate::root(file)).unwrap(),
            "{command}"
        );
    }
    // --out writes the same to a file.
    let out = std::env::temp_dir().join(format!("ebbflow-deploy-{}.yaml", uuid::Uuid::new_v4()));
    let (code, stdout, stderr) = ebbflow(&["deploy", "keda", "--out", out.to_str().unwrap()]);
    assert_eq!((code, stdout.as_str()), (0, ""), "{stderr}");
    let written = std::fs::read_to_string(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    assert_eq!(
        written,
        std::fs::read_to_string(crate::root("deploy/keda.yaml")).unwrap()
    );
}

#[test]
fn the_command_names_the_setting_that_makes_manifests_impossible() {
    let dir = std::env::temp_dir().join(format!("ebbflow-deploy-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("default.toml"),
        "[queues.orders]\n[deploy]\nmin_replicas = 0\n",
    )
    .unwrap();
    let (code, stdout, stderr) = ebbflow(&["deploy", "keda", "--config", dir.to_str().unwrap()]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(code, 2, "{stdout}{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.contains("deploy.min_replicas"), "{stderr}");
}
