//! The benchmarks' child processes: simulators and one gateway in front of them, started from
//! this same binary (`fairgate sim`, `fairgate serve`) so a benchmark needs nothing installed.
//!
//! Every gateway gets the same config head (listen address, a SQLite ledger in a scratch dir,
//! the admin token) and one model whose backends are the simulators; what differs per benchmark
//! (admission mode, routing strategy, body limit) is passed in as extra config.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The admin token of every bench gateway (it only ever listens on 127.0.0.1).
pub(crate) const ADMIN_TOKEN: &str = "bench-admin-token-0123456789";
/// The model name the overhead, fair-share and routing benchmarks serve.
pub(crate) const MODEL: &str = "bench";

/// Child processes of one run, stopped in order (the gateway first, then the simulators, so
/// the gateway does not see its backends vanish).
pub(crate) struct Procs {
    children: Vec<Child>,
}

impl Procs {
    /// The gateway's pid, for reading its `/proc` entry.
    pub(crate) fn gateway_pid(&self) -> Option<u32> {
        self.children.first().and_then(Child::id)
    }

    /// The pid of the first backend (simulator or fixed-answer server).
    pub(crate) fn backend_pid(&self) -> Option<u32> {
        self.children.get(1).and_then(Child::id)
    }

    pub(crate) async fn stop(mut self) {
        for c in &mut self.children {
            let _ = c.start_kill();
            let _ = c.wait().await;
        }
    }

    /// Stops the gateway with SIGTERM, so it flushes its ledger, waits for it up to `grace`,
    /// then stops the rest.
    pub(crate) async fn stop_gracefully(mut self, grace: Duration) {
        if let Some(gw) = self.children.first_mut() {
            #[cfg(unix)]
            if let Some(pid) = gw.id() {
                let _ = std::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status();
            }
            let _ = tokio::time::timeout(grace, gw.wait()).await;
        }
        self.stop().await;
    }
}

/// A port that was free a moment ago (the child binds it right after).
pub(crate) fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Waits (up to 15 s) until `url` answers 2xx.
pub(crate) async fn wait_http(client: &reqwest::Client, url: &str) -> anyhow::Result<()> {
    for _ in 0..300 {
        if let Ok(r) = client.get(url).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{url} did not come up")
}

/// `[("--flag", value), …]` as command-line arguments.
pub(crate) fn flags(pairs: &[(&str, String)]) -> Vec<String> {
    pairs
        .iter()
        .flat_map(|(k, v)| [(*k).to_owned(), v.clone()])
        .collect()
}

/// A fresh scratch directory for one run (SQLite file, config).
pub(crate) fn scratch_dir(name: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("fairgate-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The gateway's SQLite ledger inside a run's scratch dir.
pub(crate) fn ledger_path(dir: &Path) -> PathBuf {
    dir.join("bench.db")
}

/// The flags of a "simulator" replica that is the fixed-answer server of [`super::fixed`]
/// (`fairgate bench-backend`) instead.
pub(crate) const FIXED_BACKEND: &str = "--fixed-backend";

/// Starts `fairgate sim` serving `model` on `port` with extra flags `args`, or the fixed-answer
/// server when `args` is just [`FIXED_BACKEND`].
pub(crate) fn spawn_sim(model: &str, port: u16, args: &[String]) -> anyhow::Result<Child> {
    let exe = std::env::current_exe().context("locating the fairgate binary")?;
    let fixed = matches!(args, [a] if a == FIXED_BACKEND);
    let (cmd, args) = if fixed {
        ("bench-backend", &[][..])
    } else {
        ("sim", args)
    };
    Command::new(&exe)
        .args([cmd, "--model", model, "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .args(args)
        .env("FAIRGATE_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting the simulator")
}

/// Writes `config` into `dir` and starts `fairgate serve` on it; with `log`, its log lines
/// (warnings and up) are copied to stderr, each after `[log]`.
pub(crate) fn spawn_gateway(dir: &Path, config: &str, log: Option<&str>) -> anyhow::Result<Child> {
    let exe = std::env::current_exe().context("locating the fairgate binary")?;
    let cfg_path = dir.join("gateway.toml");
    std::fs::write(&cfg_path, config)?;
    let mut gateway = Command::new(&exe)
        .arg("serve")
        .arg("--config")
        .arg(&cfg_path)
        .env("FAIRGATE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(if log.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .kill_on_drop(true)
        .spawn()
        .context("starting the gateway")?;
    if let (Some(err), Some(label)) = (gateway.stderr.take(), log) {
        let label = label.to_owned();
        tokio::spawn(async move {
            let mut lines = BufReader::new(err).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                eprintln!("[{label}] {l}");
            }
        });
    }
    Ok(gateway)
}

/// What to start: simulator replicas and a gateway serving one model from all of them.
pub(crate) struct StackSpec<'a> {
    pub(crate) model: &'a str,
    /// Extra flags of each simulator replica, one entry a replica.
    pub(crate) sims: Vec<Vec<String>>,
    /// Gateway config after the shared head and before the model: top-level keys first, then
    /// tables (`[admission]`, `[routing]`).
    pub(crate) config: String,
    /// `max_in_flight` of every backend.
    pub(crate) max_in_flight: usize,
    /// More lines of every `[[models.backends]]` entry (engine settings).
    pub(crate) backend_extra: String,
    /// Copy the gateway's warnings to stderr.
    pub(crate) gateway_log: bool,
}

/// A started stack: its processes, root URLs and scratch dir.
pub(crate) struct Stack {
    pub(crate) procs: Procs,
    pub(crate) gateway: String,
    pub(crate) sims: Vec<String>,
    pub(crate) dir: PathBuf,
}

impl Stack {
    /// Stops the processes and removes the scratch dir.
    pub(crate) async fn stop(self) {
        self.procs.stop().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts the simulators and the gateway in a fresh scratch dir `fairgate-{name}-{pid}` and
/// waits until all answer their health checks; on failure whatever was started is stopped.
pub(crate) async fn start(
    name: &str,
    spec: StackSpec<'_>,
    client: &reqwest::Client,
) -> anyhow::Result<Stack> {
    let dir = scratch_dir(name)?;
    let dir = dir.as_path();
    let mut procs = Procs {
        children: Vec::new(),
    };
    let mut sims = Vec::new();
    let started = async {
        let mut backends = String::new();
        for args in &spec.sims {
            let port = free_port()?;
            procs.children.push(spawn_sim(spec.model, port, args)?);
            let url = format!("http://127.0.0.1:{port}");
            backends.push_str(&format!(
                "[[models.backends]]\nurl = \"{url}\"\nmax_in_flight = {}\n{}",
                spec.max_in_flight, spec.backend_extra
            ));
            sims.push(url);
        }
        let gw_port = free_port()?;
        let config = format!(
            "listen = \"127.0.0.1:{gw_port}\"\ndatabase = \"sqlite://{db}\"\ndata_dir = \"{d}\"\n\
             admin_token = \"{ADMIN_TOKEN}\"\n{extra}[[models]]\nname = \"{model}\"\n{backends}",
            db = ledger_path(dir).display(),
            d = dir.display(),
            extra = spec.config,
            model = spec.model,
        );
        procs.children.insert(
            0,
            spawn_gateway(dir, &config, spec.gateway_log.then_some("gateway"))?,
        );
        let gw = format!("http://127.0.0.1:{gw_port}");
        for s in &sims {
            wait_http(client, &format!("{s}/health")).await?;
        }
        wait_http(client, &format!("{gw}/healthz")).await?;
        anyhow::Ok(gw)
    }
    .await;
    match started {
        Ok(gateway) => Ok(Stack {
            procs,
            gateway,
            sims,
            dir: dir.to_owned(),
        }),
        Err(e) => {
            procs.stop().await;
            let _ = std::fs::remove_dir_all(dir);
            Err(e)
        }
    }
}

/// The text of `/proc/<pid>/status`.
pub(crate) fn proc_status(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/status")).ok()
}

/// The number of a field of `/proc/<pid>/status` text (`VmRSS:  1234 kB`, `Threads: 7`).
pub(crate) fn status_number(status: &str, field: &str) -> Option<f64> {
    let line = status
        .lines()
        .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`, …) in MiB.
pub(crate) fn status_mib(pid: u32, field: &str) -> Option<f64> {
    Some(status_number(&proc_status(pid)?, field)? / 1024.0)
}

/// Open file descriptors of `pid`.
pub(crate) fn open_fds(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// CPU time (user + system, all threads, live and exited) `pid` has used so far, in seconds;
/// clock-tick resolution (10 ms), so compare it over runs of seconds.
pub(crate) fn cpu_seconds(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = s.get(s.rfind(')')? + 2..)?;
    let mut f = rest.split_whitespace();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after `state`.
    let utime: f64 = f.nth(11)?.parse().ok()?;
    let stime: f64 = f.next()?.parse().ok()?;
    Some((utime + stime) / CLOCK_TICKS)
}

/// `sysconf(_SC_CLK_TCK)`, which is 100 on every Linux architecture fairgate builds for.
const CLOCK_TICKS: f64 = 100.0;
