//! Redis for the bus tests: the server `scripts/test` started, or one of the test's own (to
//! kill and restart), and bus settings for both.

use std::process::Command;
use std::time::Duration;

use ebbflow::bus::Bounded;
use ebbflow::bus::{BusKind, BusSettings, Member, Name, RedisUrl};

/// The URL of the Redis started by `scripts/test`.
pub fn redis_url() -> String {
    std::env::var("EBBFLOW_REDIS_URL").unwrap_or_else(|_| {
        panic!(
            "EBBFLOW_REDIS_URL is not set: the bus tests need the redis-server that \
             scripts/test installs and starts; run scripts/test (the README's test command)"
        )
    })
}

/// Bus settings for `url`, with a prefix of their own so tests never see each other's events.
pub fn settings(url: &str, prefix: &str, role: &str, claim_timeout: Duration) -> BusSettings {
    let mut bus = BusSettings::default();
    bus.kind = BusKind::Redis;
    bus.url = Some(RedisUrl::try_from(url.to_string()).unwrap());
    bus.role = Name::new(role).unwrap();
    bus.instance_id = None;
    bus.channel_prefix = Name::new(prefix).unwrap();
    bus.pulse_interval = Bounded::new(Duration::from_millis(200)).unwrap();
    bus.claim_timeout = Bounded::new(claim_timeout).unwrap();
    bus
}

/// A member named `id` of `role`.
pub fn member(id: &str, role: &str) -> Member {
    Member::new(id, role).unwrap()
}

/// A redis-server of the test's own, on a free loopback port, stopped when dropped.
pub struct RedisServer {
    port: u16,
    dir: super::TempDir,
    pid: Option<u32>,
}

impl RedisServer {
    /// Starts one (redis-server must be on PATH; scripts/test installs it).
    pub fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = Self {
            port,
            dir: super::TempDir::new("redis"),
            pid: None,
        };
        server.restart();
        server
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills it at once (SIGKILL): what a crash or a failover looks like to clients.
    pub fn kill(&mut self) {
        if let Some(pid) = self.pid.take() {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
            // Wait until the port is free again.
            for _ in 0..100 {
                if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Stops it (SIGSTOP) for `pause`, then lets it go on (SIGCONT, from a thread): a Redis
    /// too busy to answer for a while, as on a loaded machine.
    pub fn freeze(&self, pause: Duration) {
        let pid = self.pid.expect("the test's Redis runs").to_string();
        let status = Command::new("kill")
            .arg("-STOP")
            .arg(&pid)
            .status()
            .unwrap();
        assert!(status.success());
        std::thread::spawn(move || {
            std::thread::sleep(pause);
            let _ = Command::new("kill").arg("-CONT").arg(&pid).status();
        });
    }

    /// Starts it (again) on the same port, empty (no persistence), and waits until it answers.
    pub fn restart(&mut self) {
        let pidfile = self.dir.path().join("pid");
        let _ = std::fs::remove_file(&pidfile);
        let status = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "yes"])
            .arg("--pidfile")
            .arg(&pidfile)
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.dir.path().join("redis.log"))
            .status()
            .expect("redis-server on PATH (scripts/redis install)");
        assert!(status.success());
        for _ in 0..200 {
            if let Ok(pid) = std::fs::read_to_string(&pidfile) {
                if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                    self.pid = pid.trim().parse().ok();
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not start on port {}", self.port);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
