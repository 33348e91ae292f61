//! A backend's health: a circuit breaker fed by request outcomes (passive) and `/health`
//! probes (active).
//!
//! - **Healthy**: routable. `eject_after` consecutive failures (connection refused, timeout
//!   before the first byte, 5xx before the first byte, a failed probe) eject it.
//! - **Ejected** until a deadline: no traffic. The ejection time doubles each time a backend
//!   is ejected again without having recovered in between, up to [`MAX_EJECTION`].
//! - **Half-open** after the deadline: one trial request at a time (the router only picks a
//!   half-open backend with nothing in flight). A success, or a passing probe, closes the
//!   breaker; a failure ejects it again for longer.
//!
//! Pure state: the caller passes the time in, so every transition is unit-tested without
//! sleeping.

use std::time::{Duration, Instant};

/// Longest ejection, however often a backend keeps failing.
pub const MAX_EJECTION: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Healthy,
    Ejected { until: Instant },
    HalfOpen,
}

/// How a backend may be used right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Routable {
    /// Up to its capacity.
    Full,
    /// One trial request, when nothing else is in flight there.
    Trial,
    No,
}

#[derive(Debug)]
pub struct Breaker {
    state: State,
    consecutive_failures: u32,
    /// Ejection length for the next ejection.
    backoff: Duration,
    base: Duration,
    eject_after: u32,
    /// Ejections so far (for metrics).
    pub ejections: u64,
    /// Why it last failed, for the operator.
    pub last_error: Option<String>,
}

impl Breaker {
    pub fn new(eject_after: u32, base: Duration) -> Breaker {
        Breaker {
            state: State::Healthy,
            consecutive_failures: 0,
            backoff: base,
            base,
            eject_after: eject_after.max(1),
            ejections: 0,
            last_error: None,
        }
    }

    /// The state at `now` (an elapsed ejection becomes half-open).
    pub fn state(&mut self, now: Instant) -> State {
        if let State::Ejected { until } = self.state {
            if now >= until {
                self.state = State::HalfOpen;
            }
        }
        self.state
    }

    pub fn routable(&mut self, now: Instant) -> Routable {
        match self.state(now) {
            State::Healthy => Routable::Full,
            State::HalfOpen => Routable::Trial,
            State::Ejected { .. } => Routable::No,
        }
    }

    /// A request got its response head (any status below 500).
    pub fn on_success(&mut self) {
        self.consecutive_failures = 0;
        if self.state != State::Healthy {
            self.state = State::Healthy;
            self.backoff = self.base;
        }
    }

    /// A request or probe failed. Returns true when this failure ejected the backend.
    pub fn on_failure(&mut self, now: Instant, why: String) -> bool {
        self.last_error = Some(why);
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        let eject = match self.state(now) {
            State::Healthy => self.consecutive_failures >= self.eject_after,
            // The trial failed: back out, for longer.
            State::HalfOpen => true,
            State::Ejected { .. } => false,
        };
        if eject {
            self.state = State::Ejected {
                until: now + self.backoff,
            };
            self.backoff = (self.backoff * 2).min(MAX_EJECTION);
            self.ejections += 1;
        }
        eject
    }

    /// A `/health` probe passed. An ejected backend waits out its ejection first (a flapping
    /// backend must not come straight back); after that a passing probe closes the breaker
    /// without risking a client request on the trial.
    pub fn on_probe_ok(&mut self, now: Instant) {
        match self.state(now) {
            State::Healthy => self.consecutive_failures = 0,
            State::HalfOpen => self.on_success(),
            State::Ejected { .. } => {}
        }
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn ejects_after_consecutive_failures_only() {
        let t0 = Instant::now();
        let mut b = Breaker::new(3, S);
        assert!(!b.on_failure(t0, "x".into()));
        assert!(!b.on_failure(t0, "x".into()));
        b.on_success(); // not consecutive any more
        assert!(!b.on_failure(t0, "x".into()));
        assert!(!b.on_failure(t0, "x".into()));
        assert_eq!(b.routable(t0), Routable::Full);
        assert!(b.on_failure(t0, "refused".into()));
        assert_eq!(b.routable(t0), Routable::No);
        assert_eq!(b.ejections, 1);
        assert_eq!(b.last_error.as_deref(), Some("refused"));
    }

    #[test]
    fn half_open_trial_closes_or_reopens_with_backoff() {
        let t0 = Instant::now();
        let mut b = Breaker::new(1, S);
        assert!(b.on_failure(t0, "x".into()));
        assert_eq!(b.routable(t0 + S / 2), Routable::No);
        assert_eq!(b.routable(t0 + S), Routable::Trial);
        // The trial fails: ejected again for twice as long.
        let t1 = t0 + S;
        assert!(b.on_failure(t1, "x".into()));
        assert_eq!(b.routable(t1 + S + S / 2), Routable::No);
        assert_eq!(b.routable(t1 + 2 * S), Routable::Trial);
        b.on_success();
        assert_eq!(b.routable(t1 + 2 * S), Routable::Full);
        // Recovered: the next ejection starts from the base length again.
        let t2 = t1 + 10 * S;
        assert!(b.on_failure(t2, "x".into()));
        assert_eq!(b.routable(t2 + S), Routable::Trial);
        assert_eq!(b.ejections, 3);
    }

    #[test]
    fn probes_respect_the_ejection_then_close() {
        let t0 = Instant::now();
        let mut b = Breaker::new(1, S);
        b.on_failure(t0, "x".into());
        b.on_probe_ok(t0 + S / 2);
        assert_eq!(b.routable(t0 + S / 2), Routable::No);
        b.on_probe_ok(t0 + S);
        assert_eq!(b.routable(t0 + S), Routable::Full);
    }

    #[test]
    fn backoff_is_capped() {
        let mut now = Instant::now();
        let mut b = Breaker::new(1, S);
        for _ in 0..20 {
            b.on_failure(now, "x".into());
            let State::Ejected { until } = b.state(now) else {
                panic!("not ejected")
            };
            assert!(until - now <= MAX_EJECTION);
            now = until;
        }
    }
}
