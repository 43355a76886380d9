//! The bus connection of a worker process: bad bus settings stop start-up naming the key
//! without the secret; Redis killed and restarted under a running worker loses nothing;
//! `rediss://` with a password carries the bus; `config check` shows the URL redacted.

use crate::common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use crate::bus_replicas::Worker;
use common::redis::{redis_url, RedisServer};
use ebbflow::bus::RedisBus;
use ebbflow::bus::{Announcer, Bus, Member, QueueBusSettings};
use ebbflow::codec::Encoding;
use ebbflow::Publisher;

/// A wrong password and an unreachable Redis stop start-up with exit 2, naming `bus.url`,
/// never printing the password.
#[tokio::test]
async fn bad_bus_settings_stop_start_up_naming_the_key_without_the_secret() {
    // A user of the test Redis whose password is not the one given.
    let mut con = crate::redis_admin::admin(&redis_url()).await;
    let user = common::unique("user");
    let _: () = ::redis::cmd("ACL")
        .arg("SETUSER")
        .arg(&user)
        .arg("on")
        .arg(">the-right-one-1")
        .arg("~*")
        .arg("&*")
        .arg("+@all")
        .query_async(&mut con)
        .await
        .unwrap();
    let unused = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let host = redis_url().trim_start_matches("redis://").to_string();
    for url in [
        format!("redis://{user}:s3cret-pass-x@{host}"),
        format!("redis://:s3cret-pass-x@127.0.0.1:{unused}"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_loadtest"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("EBBFLOW_CONFIG_DIR", "/nonexistent")
            .env("EBBFLOW__BUS__KIND", "redis")
            .env("EBBFLOW__BUS__URL", &url)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}");
        assert!(text.contains("bus.url"), "{text}");
        assert!(
            !text.contains("s3cret-pass-x"),
            "the password leaked: {text}"
        );
    }
    // A URL that is not one: refused while parsing, naming the key.
    let out = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .env_clear()
        .env("EBBFLOW_CONFIG_DIR", "/nonexistent")
        .env("EBBFLOW__BUS__KIND", "redis")
        .env("EBBFLOW__BUS__URL", "http://user:s3cret-pass-x@host")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("bus.url") || text.contains("bus"), "{text}");
    assert!(!text.contains("s3cret-pass-x"), "{text}");
}

/// Redis killed and restarted (empty) under a worker at zero tasks whose producer is in
/// another process: nothing is lost (the outage probe finds what was sent meanwhile), the
/// readiness check shows the bus degraded, and work notices wake the worker again afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_mid_run_loses_nothing() {
    let mut server = RedisServer::start();
    let prefix = common::unique("bus");
    let bus_settings =
        common::redis::settings(&server.url(), &prefix, "worker", Duration::from_secs(1));
    let store = common::memory();
    let name = common::unique("kill");
    let mut settings = ebbflow::Settings::default();
    settings.bus = bus_settings;
    settings.observability.bind = Some("127.0.0.1:0".parse().unwrap());
    let mut q = ebbflow::config::QueueSettings::default();
    q.scaling.min_tasks = ebbflow::config::MinTasks::Zero;
    q.idle_backoff.max = Duration::from_millis(500);
    q.bus.outage_probe_interval = Some(ebbflow::bus::Bounded::new(Duration::from_secs(1)).unwrap());
    settings.queues.insert(name.clone(), q);
    let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    struct Record(Arc<std::sync::Mutex<Vec<String>>>);
    impl ebbflow::Handler for Record {
        type Message = String;
        async fn handle(
            &self,
            m: String,
            _: ebbflow::Context,
        ) -> Result<(), ebbflow::HandlerError> {
            self.0.lock().unwrap().push(m);
            Ok(())
        }
    }
    let worker = common::start(&store, settings, &name, Record(seen.clone())).await;
    let producer_bus: Arc<dyn Bus> = Arc::new(
        RedisBus::connect(
            &common::redis::settings(&server.url(), &prefix, "producer", Duration::from_secs(1)),
            Member::new("producer-1", "producer").unwrap(),
        )
        .await
        .unwrap(),
    );
    let queue = store.queue(&name).unwrap();
    let publisher = Publisher::new(queue, Encoding::Base64).with_announcer(Announcer::new(
        producer_bus.clone(),
        &name,
        QueueBusSettings::default(),
    ));
    let count = |seen: &Arc<std::sync::Mutex<Vec<String>>>| seen.lock().unwrap().len();
    common::wait_for(
        "the worker idles at zero tasks",
        Duration::from_secs(20),
        || worker.snapshot()[0].active_tasks == 0,
    )
    .await;
    for n in 0..5 {
        publisher
            .send_bytes(format!("before-{n}").as_bytes(), Default::default())
            .await
            .unwrap();
    }
    common::wait_for("sent before the outage", Duration::from_secs(20), || {
        count(&seen) == 5
    })
    .await;
    let notices_before = worker
        .bus_counters()
        .notices_received
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(notices_before > 0);
    common::wait_for("back at zero tasks", Duration::from_secs(20), || {
        worker.snapshot()[0].active_tasks == 0
    })
    .await;
    server.kill();
    common::wait_for(
        "the worker sees the outage",
        Duration::from_secs(20),
        || worker.bus().health() == ebbflow::bus::Health::Down,
    )
    .await;
    let report = worker.readiness().report();
    assert!(report.is_ready(), "degraded, not unready: {report:?}");
    let ops = format!("http://{}", worker.ops_addr().unwrap());
    let readyz = reqwest::get(format!("{ops}/readyz")).await.unwrap();
    assert_eq!(readyz.status(), 200);
    let body = readyz.text().await.unwrap();
    assert!(body.contains("degraded") && body.contains("bus"), "{body}");
    let metrics = reqwest::get(format!("{ops}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("ebbflow_bus_up 0"), "{metrics}");
    assert!(metrics.contains("ebbflow_bus_outages_total 1"), "{metrics}");
    assert!(
        format!("{:?}", report.checks.get("bus")).contains("Degraded"),
        "{report:?}"
    );
    for n in 0..5 {
        publisher
            .send_bytes(format!("during-{n}").as_bytes(), Default::default())
            .await
            .unwrap();
    }
    common::wait_for(
        "sent during the outage, found by the probe",
        Duration::from_secs(20),
        || count(&seen) == 10,
    )
    .await;
    assert!(
        worker
            .bus_counters()
            .outage_probes
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
    server.restart();
    common::wait_for(
        "the worker is back on the bus",
        Duration::from_secs(30),
        || worker.bus().health() == ebbflow::bus::Health::Up,
    )
    .await;
    assert_eq!(
        format!("{:?}", worker.readiness().report().checks.get("bus")),
        "Some(Ready)"
    );
    let metrics = reqwest::get(format!("{ops}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("ebbflow_bus_up 1"), "{metrics}");
    assert!(
        metrics.contains("ebbflow_bus_reconnects_total 1"),
        "{metrics}"
    );
    common::wait_for("back at zero tasks", Duration::from_secs(20), || {
        worker.snapshot()[0].active_tasks == 0
    })
    .await;
    // The producer reconnects on its next calls; notices flow again.
    for n in 0..5 {
        publisher
            .send_bytes(format!("after-{n}").as_bytes(), Default::default())
            .await
            .unwrap();
    }
    common::wait_for("sent after the outage", Duration::from_secs(30), || {
        count(&seen) == 15
    })
    .await;
    let mut all = seen.lock().unwrap().clone();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 15, "nothing lost, nothing twice: {all:?}");
    common::wait_for_async(
        "a notice woke the worker after the restart",
        Duration::from_secs(20),
        || {
            let n = worker
                .bus_counters()
                .notices_received
                .load(std::sync::atomic::Ordering::Relaxed);
            async move { n > notices_before }
        },
    )
    .await;
    let drain = worker.shutdown().await;
    assert!(drain.clean);
}

/// `rediss://` with a password: a Redis of the test's own serving TLS only, its certificate
/// issued by a test CA that the processes trust through `SSL_CERT_FILE` (the system store is
/// read with it). A worker connects and pulses; `ebbflow instances` reads it over TLS too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_password_carries_the_bus() {
    let dir = common::TempDir::new("tls");
    let d = dir.path();
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(d)
            .output()
            .expect("openssl (scripts/redis installs it)");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=ebbflow-test-ca",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "srv.key",
        "-out",
        "srv.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(d.join("ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "srv.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "srv.pem",
        "-days",
        "2",
        "-extfile",
        "ext",
    ]);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let status = Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .args(["--tls-cert-file", "srv.pem", "--tls-key-file", "srv.key"])
        .args(["--tls-ca-cert-file", "ca.pem", "--tls-auth-clients", "no"])
        .args([
            "--requirepass",
            "tls-pass-1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args(["--daemonize", "yes", "--pidfile", "pid", "--logfile", "log"])
        .current_dir(d)
        .status()
        .unwrap();
    assert!(status.success());
    struct Stop(std::path::PathBuf);
    impl Drop for Stop {
        fn drop(&mut self) {
            if let Ok(pid) = std::fs::read_to_string(&self.0) {
                let _ = Command::new("kill").arg(pid.trim()).status();
            }
        }
    }
    let _stop = Stop(d.join("pid"));
    common::wait_for("the TLS port", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
    .await;
    let url = format!("rediss://:tls-pass-1@127.0.0.1:{port}");
    let prefix = common::unique("tls");
    let env = |cmd: &mut Command| {
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("SSL_CERT_FILE", d.join("ca.pem"))
            .env("EBBFLOW_CONFIG_DIR", "/nonexistent")
            .env("EBBFLOW__BUS__KIND", "redis")
            .env("EBBFLOW__BUS__URL", &url)
            .env("EBBFLOW__BUS__CHANNEL_PREFIX", &prefix)
            .env("EBBFLOW__BUS__INSTANCE_ID", "tls-worker-1")
            .env("EBBFLOW__BUS__PULSE_INTERVAL", "200ms");
    };
    let mut worker = Command::new(env!("CARGO_BIN_EXE_loadtest"));
    env(&mut worker);
    let worker = Worker(Some(
        worker
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    let mut listed = String::new();
    for _ in 0..50 {
        let mut cli = Command::new(common::bins::ebbflow_cli());
        env(&mut cli);
        let out = cli.args(["instances", "--json"]).output().unwrap();
        listed = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        if listed.contains("tls-worker-1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(listed.contains("tls-worker-1"), "{listed}");
    let (code, log) = worker.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("bus connected (redis)"), "{log}");
    assert!(log.contains("rediss://:<redacted>@127.0.0.1"), "{log}");
    assert!(!log.contains("tls-pass-1"), "{log}");
}

/// `ebbflow config check` prints the bus URL with its password redacted.
#[test]
fn config_check_shows_the_bus_url_without_its_password() {
    let out = Command::new(common::bins::ebbflow_cli())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env(
            "EBBFLOW_CONFIG_DIR",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config"),
        )
        .env("EBBFLOW__BUS__KIND", "redis")
        .env("EBBFLOW__BUS__URL", "redis://app:Sup3r-S3cret@cache:6380/1")
        .args(["config", "check"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{out:?}");
    assert!(
        text.contains("url = \"redis://app:<redacted>@cache:6380/1\""),
        "{text}"
    );
    assert!(!text.contains("Sup3r-S3cret"), "{text}");
}
