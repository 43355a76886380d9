//! The `ebbflow` command line as a user runs it: every command against the test Azurite (the
//! `EBBFLOW_AZURITE_URL` that scripts/test starts), exit codes, help and errors.

mod common;

use std::process::Command;

/// What a run of `ebbflow` printed and how it exited.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn both(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Runs `ebbflow args` with a clean environment plus `env`.
fn ebbflow(args: &[&str], env: &[(&str, &str)]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_ebbflow"))
        .env_clear()
        .envs(env.iter().copied())
        .args(args)
        .output()
        .unwrap();
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn every_command_has_help_that_exits_0() {
    let commands: &[&[&str]] = &[
        &[],
        &["simulate"],
        &["poison"],
        &["poison", "list"],
        &["poison", "show"],
        &["poison", "requeue"],
        &["completions"],
    ];
    for command in commands {
        let mut args = command.to_vec();
        args.push("--help");
        let run = ebbflow(&args, &[]);
        assert_eq!(run.code, Some(0), "{args:?}: {}", run.both());
        assert!(
            run.stdout.contains("Usage: ebbflow"),
            "{args:?}: {}",
            run.stdout
        );
        assert!(
            run.stdout.contains("--config <DIR>"),
            "{args:?}: {}",
            run.stdout
        );
    }
}

#[test]
fn usage_errors_exit_2_and_name_the_culprit() {
    let cases: &[(&[&str], &str)] = &[
        (&[], "Usage: ebbflow"),
        (&["frobnicate"], "frobnicate"),
        (&["poison", "list"], "--queue"),
        (
            &["poison", "list", "--queue", "q", "--limit", "x"],
            "--limit",
        ),
        (
            &["poison", "requeue", "--queue", "q"],
            "requeue needs either --all or --id",
        ),
        (
            &["poison", "requeue", "--queue", "q", "--all", "--id", "a"],
            "--all",
        ),
        (&["completions", "tcsh"], "tcsh"),
        (&["simulate", "--profile", "nope.toml"], "nope.toml"),
    ];
    for (args, culprit) in cases {
        let run = ebbflow(args, &[]);
        assert_eq!(run.code, Some(2), "{args:?}: {}", run.both());
        assert!(run.stderr.contains(culprit), "{args:?}: {}", run.stderr);
    }
}

#[test]
fn a_missing_config_folder_and_the_embedded_store_are_config_errors() {
    let run = ebbflow(
        &[
            "poison",
            "list",
            "--queue",
            "orders",
            "--config",
            "/no/such/dir",
        ],
        &[],
    );
    assert_eq!(run.code, Some(2), "{}", run.both());
    assert!(
        run.stderr.contains("--config /no/such/dir"),
        "{}",
        run.stderr
    );
    let dir = common::TempDir::new("cli-embedded");
    std::fs::write(dir.path().join("default.toml"), "[queues.orders]\n").unwrap();
    let config = dir.path().to_str().unwrap();
    let run = ebbflow(
        &["poison", "list", "--queue", "orders", "--config", config],
        &[],
    );
    assert_eq!(run.code, Some(2), "{}", run.both());
    assert!(
        run.stderr.contains("embedded in-process backend"),
        "{}",
        run.stderr
    );
    let run = ebbflow(
        &["poison", "list", "--queue", "nope", "--config", config],
        &[],
    );
    assert_eq!(run.code, Some(2), "{}", run.both());
    assert!(
        run.stderr.contains("queue nope is not configured") && run.stderr.contains("orders"),
        "{}",
        run.stderr
    );
}

#[test]
fn completions_are_printed_for_each_shell() {
    for shell in ["bash", "zsh", "fish", "powershell", "elvish"] {
        let run = ebbflow(&["completions", shell], &[]);
        assert_eq!(run.code, Some(0), "{shell}: {}", run.both());
        assert!(run.stdout.contains("ebbflow"), "{shell}");
        assert!(run.stdout.contains("requeue"), "{shell}");
    }
}
