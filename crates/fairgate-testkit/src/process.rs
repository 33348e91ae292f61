//! Process plumbing shared by the private servers: free ports, finding binaries, dropping root,
//! signals (through `kill(1)`: the workspace forbids `unsafe`, so no libc), bounded waits and
//! the orphan watchdog.

use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A loopback port nobody listens on right now (the OS picks it; it may be taken again before
/// the server binds it, so starters retry with a new one when binding fails).
pub fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind(("127.0.0.1", 0)).map_err(|e| format!("bind 127.0.0.1:0: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("local_addr: {e}"))
}

/// `name` on `PATH`, if present and executable.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

pub fn is_executable(p: &Path) -> bool {
    p.metadata()
        .map(|m| m.is_file() && m.mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Whether this process runs as root (the owner of `/proc/self` is the effective uid).
pub fn running_as_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// uid and gid of a local user, from /etc/passwd.
pub fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() >= 4 && f[0] == name {
            Some((f[2].parse().ok()?, f[3].parse().ok()?))
        } else {
            None
        }
    })
}

/// Runs `cmd` as `user` (uid, gid) when given; std drops supplementary groups when a root
/// process switches uid.
pub fn as_user(cmd: &mut Command, user: Option<(u32, u32)>) -> &mut Command {
    if let Some((uid, gid)) = user {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

/// Sends `signal` (a name such as `INT`) to `pid`.
pub fn signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Waits for `child` to exit, at most `limit`; true if it did.
pub fn wait_exit(child: &mut Child, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return true,
            Ok(None) if Instant::now() >= deadline => return false,
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Stops `child`: `first` signal, up to `grace` to exit, then SIGKILL; always reaps it.
pub fn stop_child(child: &mut Child, first: &str, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    signal(child.id(), first);
    if !wait_exit(child, grace) {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// The last `max` bytes of a log file, for error messages.
pub fn log_tail(path: &Path, max: usize) -> String {
    match std::fs::read(path) {
        Ok(b) => {
            let start = b.len().saturating_sub(max);
            String::from_utf8_lossy(&b[start..]).trim().to_owned()
        }
        Err(e) => format!("(no log at {}: {e})", path.display()),
    }
}

/// Output of a finished command, for error messages.
pub fn describe_output(what: &str, out: &std::process::Output) -> String {
    format!(
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

/// Starts a detached watchdog: once this process has exited while `dir` still exists (the
/// server's owner never dropped it), it stops the server whose pid is the first line of
/// `pid_file` (`signal`, then SIGKILL) and removes `dir`. When the owner drops the server
/// normally, `dir` disappears and the watchdog exits on its own.
pub fn spawn_watchdog(dir: &Path, pid_file: &Path, signal: &str) {
    let script = r#"(
        while kill -0 "$1" 2>/dev/null && [ -d "$2" ]; do sleep 1; done
        if [ -d "$2" ]; then
            pid=$(head -n1 "$3" 2>/dev/null)
            if [ -n "$pid" ]; then
                kill "-$4" "$pid" 2>/dev/null
                for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
                kill -KILL "$pid" 2>/dev/null
            fi
            rm -rf "$2"
        fi
    ) </dev/null >/dev/null 2>&1 &"#;
    // The outer shell exits at once (and is reaped here); the loop is re-parented to init.
    let _ = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("fairgate-testkit-watchdog")
        .arg(std::process::id().to_string())
        .arg(dir)
        .arg(pid_file)
        .arg(signal)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}
