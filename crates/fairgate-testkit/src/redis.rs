//! A private Redis: `redis-server` on a free loopback port as a child process, no persistence.

use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::process;

const INSTALL_HINT: &str = "install Redis (Debian/Ubuntu: `apt-get install redis-server`; \
     Fedora: `dnf install redis`; macOS: `brew install redis`) \
     or point FAIRGATE_TEST_REDIS_URL at a running server";

const START_LIMIT: Duration = Duration::from_secs(60);

fn find_bin() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("FAIRGATE_TEST_REDIS_SERVER") {
        return Ok(PathBuf::from(p));
    }
    process::which("redis-server")
        .or_else(|| {
            [
                "/usr/bin/redis-server",
                "/usr/sbin/redis-server",
                "/usr/local/bin/redis-server",
            ]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| process::is_executable(p))
        })
        .ok_or_else(|| format!("redis-server not found on PATH: {INSTALL_HINT}"))
}

/// A Redis server of one's own (no RDB/AOF: its data lives until it stops), bound to 127.0.0.1.
/// Dropping it kills the server and removes its directory.
pub struct PrivateRedis {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    /// Starts the server; blocks until it answers PING.
    pub fn start() -> Result<PrivateRedis, String> {
        let bin = find_bin()?;
        let dir = tempfile::Builder::new()
            .prefix("fairgate-redis-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        let mut r = PrivateRedis {
            bin,
            dir,
            port: 0,
            child: None,
        };
        let mut last = String::new();
        for _ in 0..5 {
            r.port = process::free_port()?;
            match r.launch() {
                Ok(()) => {
                    process::spawn_watchdog(r.dir.path(), &r.pid_path(), "TERM");
                    return Ok(r);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// `redis://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    fn pid_path(&self) -> PathBuf {
        self.dir.path().join("redis.pid")
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Stops the server (SIGTERM, then SIGKILL); returns once it has exited.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            process::stop_child(&mut child, "TERM", Duration::from_secs(20));
        }
    }

    /// Starts the stopped server again on the same port (empty: there is no persistence).
    pub fn start_again(&mut self) -> Result<(), String> {
        if self.is_running() {
            return Err("PrivateRedis::start_again: the server is already running".into());
        }
        self.launch()
    }

    fn launch(&mut self) -> Result<(), String> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| format!("open redis log: {e}"))?;
        let log2 = log.try_clone().map_err(|e| format!("dup log: {e}"))?;
        let child = Command::new(&self.bin)
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--pidfile")
            .arg(self.pid_path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .spawn()
            .map_err(|e| format!("running {}: {e}", self.bin.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + START_LIMIT;
        loop {
            if !self.is_running() {
                self.child = None;
                return Err(format!(
                    "redis-server exited while starting on port {}; its log ends:\n{}",
                    self.port,
                    process::log_tail(&self.log_path(), 2000)
                ));
            }
            if ping(self.port) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let log = process::log_tail(&self.log_path(), 2000);
                self.stop();
                return Err(format!(
                    "redis-server on port {} not answering after {START_LIMIT:?}; its log ends:\n{log}",
                    self.port
                ));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

/// PING over RESP; true on `+PONG`.
pub(crate) fn ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(1),
    ) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    let mut got = 0;
    while got < 7 {
        match s.read(&mut buf[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    buf[..got].starts_with(b"+PONG")
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
