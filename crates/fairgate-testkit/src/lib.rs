//! Test-only helpers for every test binary of the workspace (a dev-dependency, never a runtime
//! one):
//!
//! - [`in_ci`] is the one rule for "are we under CI": any non-empty `CI` other than `false`/`0`.
//! - [`require`] is what a test calls when something it needs is missing: under CI it panics
//!   (CI must never go green without having run the test), elsewhere it prints a loud `SKIP`
//!   line to the real stderr (not captured by the test harness) and returns.
//! - [`PrivatePostgres`] / [`PrivateRedis`]: a server of one's own in a temp directory on a
//!   free loopback port, which a fault test may stop and start again without disturbing anyone.
//! - [`postgres_url`] / [`redis_url`]: the URL a test should use: the one given in the
//!   environment, else a process-wide private instance (started once per test binary).
//!
//! Servers started here are also watched by a small detached shell loop: if the test process
//! dies without running destructors (a panic under `panic = abort`, SIGKILL, or the
//! process-wide instance, which lives in a static and is never dropped), the loop stops the
//! server and removes its directory, so no test leaves a database behind.

mod postgres;
mod process;
mod redis;

use std::io::Write;
use std::sync::OnceLock;

pub use postgres::PrivatePostgres;
pub use redis::PrivateRedis;

/// Environment variable naming an existing PostgreSQL for the tests.
pub const POSTGRES_URL_ENV: &str = "FAIRGATE_TEST_POSTGRES_URL";
/// Environment variable naming an existing Redis for the tests.
pub const REDIS_URL_ENV: &str = "FAIRGATE_TEST_REDIS_URL";

/// Whether the tests run under CI: `CI` is set to anything non-empty other than `false` or `0`
/// (`CI=true`, `CI=1`, `CI=yes`, GitLab's `CI=true`, ... all count).
pub fn in_ci() -> bool {
    ci_value_means_ci(std::env::var("CI").ok().as_deref())
}

/// The rule behind [`in_ci`], for one value of `CI` (`None` = unset). The Python suites
/// (tests/python, tests/browser) implement the same rule.
pub fn ci_value_means_ci(value: Option<&str>) -> bool {
    match value.map(str::trim) {
        None | Some("") | Some("0") => false,
        Some(v) => !v.eq_ignore_ascii_case("false"),
    }
}

/// Declares that the calling test cannot run because `what` is unavailable (`why` says how it
/// failed and what to install). Under CI this panics, so the run fails; elsewhere it prints a
/// loud SKIP line and returns, and the caller should return early.
#[track_caller]
pub fn require(what: &str, why: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("<unnamed test>")
        .to_owned();
    if in_ci() {
        panic!("{what} is required under CI (CI is set), but it is unavailable for {test}: {why}");
    }
    // Straight to the process's stderr: eprintln! output is captured (and hidden) for passing
    // tests, and a skip must be seen.
    let _ = writeln!(
        std::io::stderr(),
        "\n**** SKIP {test}: {what} unavailable: {why}\n**** (this test did NOT run; under CI it would fail)\n"
    );
}

fn from_env(var: &str) -> Option<String> {
    std::env::var(var)
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// The PostgreSQL URL for tests: `FAIRGATE_TEST_POSTGRES_URL` if set; else a private instance
/// shared by every test of this process (started on first use: `initdb` takes a few seconds,
/// and this call blocks meanwhile); else `None`, after [`require`] (which panics under CI).
///
/// The URL points at database `test` as user `postgres` with trust auth. Tests isolate
/// themselves with their own schema or database.
pub fn postgres_url() -> Option<String> {
    if let Some(url) = from_env(POSTGRES_URL_ENV) {
        return Some(url);
    }
    static SHARED: OnceLock<Result<PrivatePostgres, String>> = OnceLock::new();
    match SHARED.get_or_init(PrivatePostgres::start) {
        Ok(pg) => Some(pg.url()),
        Err(e) => {
            require(
                "PostgreSQL",
                &format!("{POSTGRES_URL_ENV} is not set and a private instance did not start: {e}"),
            );
            None
        }
    }
}

/// The Redis URL for tests: `FAIRGATE_TEST_REDIS_URL` if set; else a private instance shared by
/// every test of this process; else `None`, after [`require`].
pub fn redis_url() -> Option<String> {
    if let Some(url) = from_env(REDIS_URL_ENV) {
        return Some(url);
    }
    static SHARED: OnceLock<Result<PrivateRedis, String>> = OnceLock::new();
    match SHARED.get_or_init(PrivateRedis::start) {
        Ok(r) => Some(r.url()),
        Err(e) => {
            require(
                "Redis",
                &format!("{REDIS_URL_ENV} is not set and a private instance did not start: {e}"),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ci_rule() {
        for (v, want) in [
            (None, false),
            (Some(""), false),
            (Some("  "), false),
            (Some("0"), false),
            (Some("false"), false),
            (Some("FALSE"), false),
            (Some("true"), true),
            (Some("1"), true),
            (Some("yes"), true),
            (Some("woodpecker"), true),
        ] {
            assert_eq!(ci_value_means_ci(v), want, "CI={v:?}");
        }
    }
}
