//! `config check`: the effective settings, secrets redacted, bad keys named.

use crate::{common, ebbflow, json, with};

/// Without secrets (which print redacted), the output of `config check` is itself a config
/// with the same effective settings.
#[test]
fn config_check_prints_a_config_that_loads_back() {
    let dir = common::TempDir::new("cli-check");
    std::fs::write(
        dir.path().join("default.toml"),
        "[queues.orders]\nbatch_size = 16\nheartbeat.interval = \"1m\"\n\n[queues.orders.scaling]\n\
         depth_rules = [{ from = 0, tasks = 1 }, { from = 100, tasks = 4 }]\n\n[queues.emails]\nencoding = \"none\"\n",
    )
    .unwrap();
    let env = [("EBBFLOW__QUEUES__ORDERS__CONCURRENCY", "3")];
    let run = ebbflow(
        &["config", "check", "--config", dir.path().to_str().unwrap()],
        &env,
    );
    assert_eq!(run.code, Some(0), "{}", run.both());
    let again = common::TempDir::new("cli-again");
    std::fs::write(again.path().join("default.toml"), &run.stdout).unwrap();
    let reloaded = ebbflow::Settings::load_from(again.path(), &Default::default())
        .unwrap_or_else(|e| panic!("{e}: {}", run.stdout));
    let orders = &reloaded.queues["orders"];
    assert_eq!((orders.batch_size.get(), orders.concurrency.get()), (16, 3));
    assert_eq!(orders.scaling.depth_rules.len(), 2);
    assert_eq!(
        orders.heartbeat.interval,
        Some(std::time::Duration::from_secs(60))
    );
    let rerun = ebbflow(
        &[
            "config",
            "check",
            "--config",
            again.path().to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(rerun.code, Some(0), "{}", rerun.both());
    let body = |text: &str| text.split_once('\n').unwrap().1.to_string();
    assert_eq!(body(&rerun.stdout), body(&run.stdout));
}

#[test]
fn config_check_names_a_bad_key_and_prints_no_secret() {
    let dir = common::TempDir::new("cli-check");
    let file = dir.path().join("default.toml");
    for (body, key) in [
        (
            "[queues.orders]\nbatch_size = 64\n",
            "queues.orders.batch_size",
        ),
        ("[queues.orders]\nbach_size = 8\n", "bach_size"),
        (
            "[triggers.http]\nenabled = true\ntoken = \"short\"\n",
            "triggers.http.token",
        ),
        (
            "[storage]\nconnection_string = \"AccountName=a;AccountKey=not base64!!\"\n",
            "storage.connection_string",
        ),
    ] {
        std::fs::write(&file, body).unwrap();
        let run = with(&dir, &["config", "check"]);
        assert_eq!(run.code, Some(2), "{body}: {}", run.both());
        assert!(run.stderr.contains(key), "{body}: {}", run.stderr);
        assert!(run.stdout.is_empty(), "{body}: {}", run.stdout);
    }
    let key = ebbflow::store::DEV_KEY;
    let token = "trigger-token-0123456789";
    std::fs::write(
        &file,
        format!(
            "[storage]\nconnection_string = \"AccountName=acct;AccountKey={key};EndpointSuffix=core.windows.net\"\n\n\
             [triggers.http]\nenabled = true\ntoken = \"{token}\"\n\n[queues.orders]\nbatch_size = 16\n"
        ),
    )
    .unwrap();
    // An environment override takes part, as in a worker.
    let config = dir.path().to_str().unwrap();
    let metrics_token = "metrics-token-0123456789";
    let env = [
        ("EBBFLOW__QUEUES__ORDERS__CONCURRENCY", "3"),
        ("EBBFLOW__OBSERVABILITY__METRICS_TOKEN", metrics_token),
    ];
    for format in [&[][..], &["--json"][..]] {
        let mut args = vec!["config", "check", "--config", config];
        args.extend(format);
        let run = ebbflow(&args, &env);
        assert_eq!(run.code, Some(0), "{}", run.both());
        for secret in [key, token, &key[..20], metrics_token] {
            assert!(
                !run.both().contains(secret),
                "a secret was printed: {}",
                run.both()
            );
        }
        assert!(
            run.stdout
                .contains("AccountName=acct;AccountKey=<redacted>"),
            "{}",
            run.stdout
        );
        if format.is_empty() {
            assert!(
                run.stdout
                    .contains("[queues.orders]\nbatch_size = 16\nconcurrency = 3\n"),
                "{}",
                run.stdout
            );
        } else {
            let settings = json(&run);
            assert_eq!(settings["queues"]["orders"]["batch_size"], 16);
            assert_eq!(settings["queues"]["orders"]["concurrency"], 3);
            assert_eq!(settings["queues"]["orders"]["visibility_timeout"], "30s");
            assert_eq!(settings["triggers"]["http"]["token"], "<redacted>");
        }
    }
}
