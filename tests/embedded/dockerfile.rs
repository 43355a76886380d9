//! The Dockerfile's invariants, checked without a Docker engine: a multi-stage build of a bin
//! target this package defines, with `--release --locked`; a runtime stage that runs it as a
//! non-root user, in exec form (so SIGTERM reaches the worker as PID 1), exposing the ops
//! endpoint's port and binding it on every interface; and a `.dockerignore` that keeps build
//! outputs out without hiding what the build needs.

use std::collections::BTreeMap;
use std::process::Command;

/// The ops endpoint's port in the image; the manifests `ebbflow deploy` writes use the same
/// (`ebbflow_cli::deploy::OPS_PORT`, checked against this Dockerfile in the CLI's tests).
const OPS_PORT: u16 = 9464;

/// One instruction: its keyword (upper case) and its arguments, continuation lines joined.
#[derive(Debug, Clone)]
struct Instruction {
    keyword: String,
    args: String,
}

fn parse(text: &str) -> Vec<Instruction> {
    let mut out = Vec::new();
    let mut pending = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if pending.is_empty() && (trimmed.starts_with('#') || trimmed.is_empty()) {
            continue;
        }
        if trimmed.starts_with('#') {
            continue; // a comment inside a continued instruction
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        pending.push_str(trimmed);
        let (keyword, args) = pending
            .split_once(char::is_whitespace)
            .unwrap_or((&pending, ""));
        out.push(Instruction {
            keyword: keyword.to_ascii_uppercase(),
            args: args.trim().to_string(),
        });
        pending.clear();
    }
    assert!(pending.is_empty(), "dangling continuation: {pending}");
    out
}

/// The build stages, each as (its FROM arguments, its instructions).
fn stages(instructions: &[Instruction]) -> Vec<(String, Vec<Instruction>)> {
    let mut stages: Vec<(String, Vec<Instruction>)> = Vec::new();
    for i in instructions {
        if i.keyword == "FROM" {
            stages.push((i.args.clone(), Vec::new()));
        } else if let Some(stage) = stages.last_mut() {
            stage.1.push(i.clone());
        }
    }
    stages
}

/// `ARG NAME=default` values, global and per stage alike.
fn arg_defaults(instructions: &[Instruction]) -> BTreeMap<String, String> {
    instructions
        .iter()
        .filter(|i| i.keyword == "ARG")
        .filter_map(|i| i.args.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('"').to_string()))
        .collect()
}

/// This package's bin targets that build without extra features.
fn plain_bin_targets() -> Vec<String> {
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let package = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == env!("CARGO_PKG_NAME"))
        .expect("this package in the workspace's metadata");
    package["targets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["kind"].as_array().unwrap().iter().any(|k| k == "bin"))
        .filter(|t| {
            t["required-features"]
                .as_array()
                .is_none_or(|f| f.is_empty())
        })
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect()
}

fn dockerfile() -> Vec<Instruction> {
    parse(&std::fs::read_to_string("Dockerfile").expect("Dockerfile at the top level"))
}

#[test]
fn the_build_stage_compiles_a_bin_target_of_this_package_locked() {
    let instructions = dockerfile();
    let stages = stages(&instructions);
    assert!(stages.len() >= 2, "multi-stage: {stages:?}");
    let (from, build) = &stages[0];
    assert!(from.starts_with("rust:"), "official Rust image: {from}");
    assert!(from.to_ascii_lowercase().contains(" as build"), "{from}");
    let bin = arg_defaults(&instructions)
        .get("BIN")
        .cloned()
        .expect("ARG BIN=<default>");
    let bins = plain_bin_targets();
    assert!(bins.contains(&bin), "BIN={bin} is not one of {bins:?}");
    let run = build
        .iter()
        .find(|i| i.keyword == "RUN" && i.args.contains("cargo build"))
        .expect("a RUN cargo build");
    for flag in ["--release", "--locked"] {
        assert!(run.args.contains(flag), "{flag} missing: {}", run.args);
    }
    assert!(
        run.args.contains("--bin \"${BIN}\"") || run.args.contains("--bin ${BIN}"),
        "{}",
        run.args
    );
    // The build copies the binary it built to where the runtime stage takes it from.
    assert!(
        run.args.contains("target/release/${BIN}") && run.args.contains("/out/worker"),
        "{}",
        run.args
    );
}

#[test]
fn the_runtime_stage_runs_the_worker_as_pid_1_and_not_as_root() {
    let instructions = dockerfile();
    let stages = stages(&instructions);
    let (from, runtime) = stages.last().unwrap();
    assert!(
        from.contains("distroless/cc") || from.contains("-slim"),
        "small runtime base: {from}"
    );
    let last = |kw: &str| runtime.iter().rev().find(|i| i.keyword == kw);

    let user = last("USER").expect("a USER in the runtime stage");
    let uid = user.args.split(':').next().unwrap();
    assert!(
        uid.parse::<u32>().is_ok_and(|n| n != 0),
        "USER must be a numeric non-root uid (Kubernetes' runAsNonRoot can only check numbers): {}",
        user.args
    );

    let entrypoint = last("ENTRYPOINT").expect("an ENTRYPOINT");
    let argv: Vec<String> = serde_json::from_str(&entrypoint.args).unwrap_or_else(|_| {
        panic!(
            "ENTRYPOINT must be exec form (a JSON array): {}",
            entrypoint.args
        )
    });
    assert!(!argv.is_empty());
    assert!(
        !["sh", "/bin/sh", "bash", "/bin/bash"].contains(&argv[0].as_str()),
        "a shell as PID 1 does not pass SIGTERM on: {argv:?}"
    );
    // The entrypoint is the binary the build stage made.
    let copy = runtime
        .iter()
        .find(|i| i.keyword == "COPY" && i.args.starts_with("--from=build"))
        .expect("COPY --from=build");
    let parts: Vec<&str> = copy.args.split_whitespace().collect();
    assert_eq!(parts[1], "/out/worker");
    assert_eq!(parts.last().unwrap(), &argv[0]);
    // No shell-form CMD appended as arguments.
    if let Some(cmd) = last("CMD") {
        assert!(
            cmd.args.starts_with('['),
            "CMD must be exec form: {}",
            cmd.args
        );
    }
    if let Some(signal) = last("STOPSIGNAL") {
        assert_eq!(signal.args, "SIGTERM");
    }
}

#[test]
fn the_image_exposes_and_binds_the_ops_endpoint() {
    let instructions = dockerfile();
    let stages = stages(&instructions);
    let runtime = &stages.last().unwrap().1;
    let exposed: Vec<&str> = runtime
        .iter()
        .filter(|i| i.keyword == "EXPOSE")
        .flat_map(|i| i.args.split_whitespace())
        .collect();
    assert_eq!(exposed, [OPS_PORT.to_string()]);
    let env = runtime
        .iter()
        .find(|i| i.keyword == "ENV" && i.args.starts_with("EBBFLOW__OBSERVABILITY__BIND"))
        .expect("ENV EBBFLOW__OBSERVABILITY__BIND");
    assert_eq!(
        env.args,
        format!("EBBFLOW__OBSERVABILITY__BIND=0.0.0.0:{OPS_PORT}")
    );
    // The worker accepts that environment over the config the image carries.
    let (key, value) = env.args.split_once('=').unwrap();
    let env = BTreeMap::from([(key.to_string(), value.to_string())]);
    let settings = ebbflow::Settings::load_from(std::path::Path::new("config"), &env).unwrap();
    assert_eq!(
        settings.observability.bind,
        Some(std::net::SocketAddr::from(([0, 0, 0, 0], OPS_PORT)))
    );
    // The config folder the worker reads from its working directory.
    assert!(runtime
        .iter()
        .any(|i| i.keyword == "WORKDIR" && i.args == "/app"));
    assert!(runtime
        .iter()
        .any(|i| i.keyword == "COPY" && i.args.ends_with("config/ /app/config/")));
}

/// A deployed replica is a pure consumer. The image builds the demo worker by default, whose
/// built-in producer (20 messages/s per queue and 2,000-order bursts unless `DEMO_RATE=0`) would
/// run in every replica: the README's "docker build, deploy keda" then feeds KEDA the replicas'
/// own load, and each added replica adds more, up to `max_replicas`.
#[test]
fn the_image_runs_the_demo_worker_without_its_producer() {
    let instructions = dockerfile();
    let stages = stages(&instructions);
    let runtime = &stages.last().unwrap().1;
    let env: BTreeMap<&str, &str> = runtime
        .iter()
        .filter(|i| i.keyword == "ENV")
        .flat_map(|i| i.args.split_whitespace())
        .filter_map(|kv| kv.split_once('='))
        .collect();
    assert_eq!(env.get("DEMO_RATE"), Some(&"0"), "runtime ENV: {env:?}");
}

#[test]
fn dockerignore_keeps_outputs_out_and_sources_in() {
    let text = std::fs::read_to_string(".dockerignore").expect(".dockerignore");
    let rules: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for out in ["target/", ".git/"] {
        assert!(rules.contains(&out), "{out} should be ignored: {rules:?}");
    }
    // Cargo checks every declared target's file, so tests and benches must reach the build.
    for needed in [
        "src",
        "workers",
        "config",
        "tests",
        "benches",
        "Cargo.toml",
        "Cargo.lock",
        ".cargo",
    ] {
        assert!(
            !rules
                .iter()
                .any(|r| r.trim_matches('/') == needed || *r == "*" || *r == "**"),
            "{needed} must reach the build: {rules:?}"
        );
    }
}

#[test]
fn the_parser_reads_continuations_and_exec_form() {
    let parsed = parse(
        "# c\nFROM a AS build\nRUN one \\\n    # inner comment\n    two\nENTRYPOINT [\"/x\"]\n",
    );
    let kw: Vec<_> = parsed.iter().map(|i| i.keyword.as_str()).collect();
    assert_eq!(kw, ["FROM", "RUN", "ENTRYPOINT"]);
    assert_eq!(parsed[1].args, "one  two");
}
