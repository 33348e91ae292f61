//! A private PostgreSQL: `initdb` into a temp directory, `postgres` on a free loopback port as
//! a child process, trust auth, database `test`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::process;

const INSTALL_HINT: &str =
    "install the PostgreSQL server (Debian/Ubuntu: `apt-get install postgresql`; \
     Fedora: `dnf install postgresql-server`; macOS: `brew install postgresql`), \
     set FAIRGATE_TEST_PG_BINDIR to the directory holding initdb and postgres, \
     or point FAIRGATE_TEST_POSTGRES_URL at a running server";

/// How long a start may take before it is reported as failed (initdb on a loaded machine can be
/// slow; this bounds a hang, it is not a speed assertion).
const START_LIMIT: Duration = Duration::from_secs(90);

struct Bins {
    initdb: PathBuf,
    postgres: PathBuf,
    pg_isready: PathBuf,
    createdb: PathBuf,
}

fn find_bins() -> Result<Bins, String> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(d) = std::env::var_os("FAIRGATE_TEST_PG_BINDIR") {
        candidates.push(PathBuf::from(d));
    }
    // Debian/Ubuntu keep the server binaries off PATH, one directory per major version: newest
    // first.
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            Some((v, e.path().join("bin")))
        })
        .collect();
    versions.sort_by(|a, b| b.0.cmp(&a.0));
    candidates.extend(versions.into_iter().map(|(_, p)| p));
    // Elsewhere (and Debian's symlinks), the directory of the initdb on PATH, symlinks resolved
    // so that its sibling tools are found.
    if let Some(p) = process::which("initdb") {
        let real = std::fs::canonicalize(&p).unwrap_or(p);
        if let Some(d) = real.parent() {
            candidates.push(d.to_owned());
        }
    }
    for dir in &candidates {
        let initdb = dir.join("initdb");
        let postgres = dir.join("postgres");
        if process::is_executable(&initdb) && process::is_executable(&postgres) {
            let tool = |name: &str| {
                let p = dir.join(name);
                if process::is_executable(&p) {
                    p
                } else {
                    process::which(name).unwrap_or(p)
                }
            };
            return Ok(Bins {
                pg_isready: tool("pg_isready"),
                createdb: tool("createdb"),
                initdb,
                postgres,
            });
        }
    }
    Err(format!(
        "PostgreSQL server binaries (initdb, postgres) not found (looked in {}): {INSTALL_HINT}",
        if candidates.is_empty() {
            "/usr/lib/postgresql/*/bin and PATH".to_owned()
        } else {
            candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        }
    ))
}

/// A PostgreSQL server of one's own, in a temp directory, listening on 127.0.0.1 only.
///
/// When the tests run as root (CI containers), the server runs as the `postgres` OS user (the
/// server refuses to run as root); the directory is handed to that user.
///
/// Dropping it stops the server (immediate shutdown, then SIGKILL) and removes the directory.
pub struct PrivatePostgres {
    bins: Bins,
    dir: tempfile::TempDir,
    port: u16,
    user: Option<(u32, u32)>,
    child: Option<Child>,
}

impl PrivatePostgres {
    /// initdb + start + `CREATE DATABASE test`. Blocks until the server accepts connections.
    pub fn start() -> Result<PrivatePostgres, String> {
        let bins = find_bins()?;
        let user = if process::running_as_root() {
            Some(process::lookup_user("postgres").ok_or_else(|| {
                format!(
                    "running as root, and PostgreSQL refuses to run as root, but there is no \
                     `postgres` OS user to run it as: {INSTALL_HINT} (the package creates the user)"
                )
            })?)
        } else {
            None
        };
        let dir = tempfile::Builder::new()
            .prefix("fairgate-pg-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .map_err(|e| format!("chown {} to postgres: {e}", dir.path().display()))?;
        }
        let data = dir.path().join("data");
        let mut initdb = Command::new(&bins.initdb);
        initdb
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .env("LC_ALL", "C")
            .env_remove("PGDATA")
            .stdin(Stdio::null());
        let out = process::as_user(&mut initdb, user)
            .output()
            .map_err(|e| format!("running {}: {e}", bins.initdb.display()))?;
        if !out.status.success() {
            return Err(process::describe_output("initdb", &out));
        }

        let mut pg = PrivatePostgres {
            bins,
            dir,
            port: 0,
            user,
            child: None,
        };
        // The free port may be taken between choosing and binding it: try a few.
        let mut last = String::new();
        for _ in 0..5 {
            pg.port = process::free_port()?;
            match pg.launch() {
                Ok(()) => {
                    pg.create_test_database()?;
                    process::spawn_watchdog(
                        pg.dir.path(),
                        &pg.data_dir().join("postmaster.pid"),
                        "QUIT",
                    );
                    return Ok(pg);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// `postgres://postgres@127.0.0.1:<port>/test`
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/test", self.port)
    }

    /// URL of another database on the same server.
    pub fn url_for(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory (inside the temp directory).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// Whether the server process is running (it may still be starting up).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Fast shutdown (SIGINT: clients disconnected, a checkpoint written, so committed data
    /// survives); returns once the server has exited. A no-op if it is not running.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            process::stop_child(&mut child, "INT", Duration::from_secs(60));
        }
    }

    /// Starts the stopped server again: same port, same data. Blocks until it accepts
    /// connections.
    pub fn start_again(&mut self) -> Result<(), String> {
        if self.is_running() {
            return Err("PrivatePostgres::start_again: the server is already running".into());
        }
        self.launch()
    }

    fn launch(&mut self) -> Result<(), String> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| format!("open postgres log: {e}"))?;
        let log2 = log.try_clone().map_err(|e| format!("dup log: {e}"))?;
        let mut cmd = Command::new(&self.bins.postgres);
        cmd.arg("-D")
            .arg(self.data_dir())
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                self.dir.path().display()
            ))
            // Test data: no need to survive an OS crash; a fast shutdown still checkpoints.
            .args(["-c", "fsync=off"])
            .args(["-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off"])
            // Many test pools at once.
            .args(["-c", "max_connections=300"])
            .args(["-c", "shared_buffers=32MB"])
            .env("LC_ALL", "C")
            .env_remove("PGDATA")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2));
        let child = process::as_user(&mut cmd, self.user)
            .spawn()
            .map_err(|e| format!("running {}: {e}", self.bins.postgres.display()))?;
        self.child = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_LIMIT;
        loop {
            if !self.is_running() {
                self.child = None;
                return Err(format!(
                    "postgres exited while starting on port {}; its log ends:\n{}",
                    self.port,
                    process::log_tail(&self.log_path(), 2000)
                ));
            }
            let ok = Command::new(&self.bins.pg_isready)
                .args(["-q", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres"])
                .args(["-p", &self.port.to_string(), "-t", "2"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map_err(|e| format!("running {}: {e}", self.bins.pg_isready.display()))?;
            if ok.success() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let log = process::log_tail(&self.log_path(), 2000);
                self.stop();
                return Err(format!(
                    "postgres on port {} not ready after {START_LIMIT:?}; its log ends:\n{log}",
                    self.port
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn create_test_database(&self) -> Result<(), String> {
        let out = Command::new(&self.bins.createdb)
            .args(["-h", "127.0.0.1", "-U", "postgres", "-w"])
            .args(["-p", &self.port.to_string(), "test"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running {}: {e}", self.bins.createdb.display()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(process::describe_output("createdb test", &out))
        }
    }

    /// The temp directory (data, log, socket).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Immediate shutdown: the data is thrown away anyway.
            process::stop_child(&mut child, "QUIT", Duration::from_secs(10));
        }
        // The TempDir field then removes the directory.
    }
}
