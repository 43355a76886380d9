//! Help, usage and config errors, completions: no storage needed.

use crate::{common, ebbflow};

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
        &["enqueue"],
        &["peek"],
        &["stats"],
        &["config"],
        &["config", "check"],
        &["deploy"],
        &["deploy", "keda"],
        &["deploy", "container-apps"],
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
        // Zero would print "0 message(s)" without even asking whether the queue exists.
        (
            &["poison", "list", "--queue", "q", "--limit", "0"],
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
        (&["enqueue", "orders", "x", "--count", "0"], "--count"),
        (
            &["enqueue", "orders", "x", "--delay", "8d"],
            "--delay 8days: at most 7d",
        ),
        (&["enqueue", "orders", "x", "--delay", "soon"], "--delay"),
        (&["enqueue", "orders", "x", "--ttl", "0s"], "--ttl 0s"),
        (
            &["enqueue", "orders", "x", "--ttl", "1000y"],
            "--ttl 1000years",
        ),
        (
            &["enqueue", "orders", "x", "--delay", "7d"],
            "shorter than the time to live",
        ),
        (&["enqueue", "orders"], "give the message text or --file"),
        (&["enqueue", "orders", "x", "--file", "f"], "--file"),
        (
            &["enqueue", "orders", "--file", "/no/such/file"],
            "--file /no/such/file",
        ),
        (
            &["enqueue", "orders", "x", "--trigger-url", "10.0.0.12:7075"],
            "--trigger-url",
        ),
        (
            &[
                "enqueue",
                "orders",
                "x",
                "--no-trigger",
                "--trigger-url",
                "http://h",
            ],
            "--no-trigger",
        ),
        (&["peek", "orders", "--count", "33"], "--count"),
        (&["peek", "orders", "--count", "0"], "--count"),
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

/// Every command `ebbflow --help` lists has its entry in the book's command-line chapter (a
/// paragraph starting in bold, `` **`ebbflow <command>`** ``, or a heading), so a new command
/// cannot ship undocumented (a mention in passing does not count).
#[test]
fn every_command_is_in_the_books_command_line_chapter() {
    let chapter = std::fs::read_to_string(crate::root("docs/src/cli.md")).unwrap();
    let run = ebbflow(&["--help"], &[]);
    let commands: Vec<&str> = run
        .stdout
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    assert!(commands.contains(&"blobs"), "{}", run.stdout);
    let missing: Vec<&&str> = commands
        .iter()
        .filter(|c| {
            !chapter.contains(&format!("**`ebbflow {c}"))
                && !chapter.contains(&format!("## `ebbflow {c}"))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "commands missing from docs/src/cli.md: {missing:?}"
    );
}
