//! Which backend a request goes to. The decision is made when the request leaves the
//! fair-share queue (late binding), from what the gateway knows at that instant: its own
//! in-flight counts, each backend's scraped vLLM metrics, health, and the prefix index.
//!
//! [`choose`] is the whole policy, a pure function over [`View`]s:
//! - only backends with a free slot are candidates (the caller has already left out drained,
//!   ejected and removed ones);
//! - for a LoRA adapter, backends where it is already running beat those with a free adapter
//!   slot, which beat those where it waits (GIE's lora-affinity order);
//! - `round_robin` takes the next candidate in rotation;
//! - `least_loaded` takes the lowest load: the gateway's in-flight requests plus the
//!   backend's own queue as last scraped minus what the gateway already counted, over
//!   capacity; KV-cache use breaks ties;
//! - `prefix_aware` (default) is "sticky until saturated" (llm-d's current default): among
//!   unsaturated candidates, the one holding the longest prefix of the prompt, load breaking
//!   ties; a request with no cached prefix anywhere goes to the least loaded. A backend is
//!   saturated when its slots are full, or its scraped queue or KV use passes a threshold;
//!   when every candidate is, the longest prefix still wins among those with a free slot.

pub mod health;
pub mod prefix;
pub mod scrape;

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    RoundRobin,
    LeastLoaded,
    #[default]
    PrefixAware,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::RoundRobin => "round_robin",
            Strategy::LeastLoaded => "least_loaded",
            Strategy::PrefixAware => "prefix_aware",
        }
    }
}

/// How well a backend fits a LoRA adapter request (higher is better); `Base` for requests to
/// the base model, where it does not matter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LoraFit {
    Waiting,
    Unknown,
    FreeSlot,
    Running,
    Base,
}

/// What the router knows about one candidate backend.
#[derive(Clone, Copy, Debug)]
pub struct View {
    /// Requests this gateway has in flight there.
    pub in_flight: usize,
    /// Requests this gateway may have in flight there (1 for a half-open trial).
    pub max_in_flight: usize,
    /// The backend's queue and batch as last scraped, minus this gateway's own requests at
    /// that moment (other clients' load); 0 when the scrape is stale.
    pub foreign: f64,
    /// Scraped queue length and KV use, when fresh.
    pub waiting: Option<f64>,
    pub kv_usage: Option<f64>,
    /// Leading prompt blocks this backend holds, by the prefix index.
    pub prefix_match: usize,
    pub lora: LoraFit,
}

impl View {
    fn has_room(&self) -> bool {
        self.in_flight < self.max_in_flight
    }

    /// Load relative to capacity.
    pub fn load(&self) -> f64 {
        (self.in_flight as f64 + self.foreign) / self.max_in_flight.max(1) as f64
    }

    fn saturated(&self, t: &Thresholds) -> bool {
        !self.has_room()
            || self.waiting.is_some_and(|w| w >= t.waiting)
            || self.kv_usage.is_some_and(|k| k >= t.kv_usage)
    }
}

/// When a backend counts as saturated for `prefix_aware`.
#[derive(Clone, Copy, Debug)]
pub struct Thresholds {
    pub waiting: f64,
    pub kv_usage: f64,
}

/// Why a backend was chosen (a metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    RoundRobin,
    LeastLoaded,
    /// The longest cached prefix.
    PrefixHit,
    /// The backend with the longest prefix was saturated; spilled to another.
    Spill,
    /// No backend holds any of the prompt: least loaded.
    Cold,
}

impl Reason {
    pub const ALL: [Reason; 5] = [
        Reason::RoundRobin,
        Reason::LeastLoaded,
        Reason::PrefixHit,
        Reason::Spill,
        Reason::Cold,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::RoundRobin => "round_robin",
            Reason::LeastLoaded => "least_loaded",
            Reason::PrefixHit => "prefix_hit",
            Reason::Spill => "spill",
            Reason::Cold => "cold",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Picks a backend among `views` (index into it), or `None` when none has a free slot.
/// `rotation` spreads ties (and is the round-robin position).
pub fn choose(
    strategy: Strategy,
    views: &[View],
    rotation: usize,
    t: &Thresholds,
) -> Option<(usize, Reason)> {
    let n = views.len();
    if n == 0 {
        return None;
    }
    // Candidates in rotation order, so ties go to the next one along.
    let best_fit = views
        .iter()
        .filter(|v| v.has_room())
        .map(|v| v.lora)
        .max()?;
    let order = (0..n)
        .map(|k| (rotation + k) % n)
        .filter(|&i| views[i].has_room() && views[i].lora == best_fit);
    let least = |it: &mut dyn Iterator<Item = usize>| -> Option<usize> {
        it.min_by(|&a, &b| {
            let (va, vb) = (&views[a], &views[b]);
            va.load().total_cmp(&vb.load()).then(
                va.kv_usage
                    .unwrap_or(0.0)
                    .total_cmp(&vb.kv_usage.unwrap_or(0.0)),
            )
        })
    };
    match strategy {
        Strategy::RoundRobin => {
            // Rotate over the candidates themselves, so a full backend's turn is not handed
            // to its neighbour twice.
            let cands: Vec<usize> = (0..n)
                .filter(|&i| views[i].has_room() && views[i].lora == best_fit)
                .collect();
            let i = *cands.get(rotation % cands.len().max(1))?;
            Some((i, Reason::RoundRobin))
        }
        Strategy::LeastLoaded => least(&mut order.clone()).map(|i| (i, Reason::LeastLoaded)),
        Strategy::PrefixAware => {
            let longest = order.clone().map(|i| views[i].prefix_match).max()?;
            let open: Vec<usize> = order.clone().filter(|&i| !views[i].saturated(t)).collect();
            let pool: &[usize] = if open.is_empty() {
                &order.clone().collect::<Vec<_>>()
            } else {
                &open
            };
            let best = pool.iter().map(|&i| views[i].prefix_match).max()?;
            if best == 0 {
                let reason = if longest > 0 {
                    Reason::Spill
                } else {
                    Reason::Cold
                };
                return least(&mut pool.iter().copied()).map(|i| (i, reason));
            }
            let pick = least(
                &mut pool
                    .iter()
                    .copied()
                    .filter(|&i| views[i].prefix_match == best),
            )?;
            let reason = if best < longest {
                Reason::Spill
            } else {
                Reason::PrefixHit
            };
            Some((pick, reason))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Thresholds = Thresholds {
        waiting: 5.0,
        kv_usage: 0.9,
    };

    fn v(in_flight: usize, max: usize, prefix: usize) -> View {
        View {
            in_flight,
            max_in_flight: max,
            foreign: 0.0,
            waiting: None,
            kv_usage: None,
            prefix_match: prefix,
            lora: LoraFit::Base,
        }
    }

    #[test]
    fn nothing_with_room_is_none() {
        assert!(choose(Strategy::PrefixAware, &[], 0, &T).is_none());
        let full = [v(2, 2, 0), v(1, 1, 5)];
        for s in [
            Strategy::RoundRobin,
            Strategy::LeastLoaded,
            Strategy::PrefixAware,
        ] {
            assert!(choose(s, &full, 0, &T).is_none());
        }
    }

    #[test]
    fn round_robin_rotates_and_skips_full() {
        let views = [v(0, 4, 0), v(4, 4, 0), v(0, 4, 0)];
        let even = [v(0, 4, 0), v(0, 4, 0)];
        let alternating: Vec<usize> = (0..4)
            .map(|r| choose(Strategy::RoundRobin, &even, r, &T).unwrap().0)
            .collect();
        assert_eq!(alternating, vec![0, 1, 0, 1]);
        let picks: Vec<usize> = (0..6)
            .map(|r| choose(Strategy::RoundRobin, &views, r, &T).unwrap().0)
            .collect();
        assert_eq!(picks, vec![0, 2, 0, 2, 0, 2]);
    }

    #[test]
    fn least_loaded_counts_foreign_load_and_capacity() {
        let mut views = [v(2, 8, 0), v(1, 2, 0), v(3, 16, 0)];
        assert_eq!(choose(Strategy::LeastLoaded, &views, 0, &T).unwrap().0, 2);
        // Other clients keep backend 2 busy: its queue shows up in the scrape.
        views[2].foreign = 10.0;
        assert_eq!(choose(Strategy::LeastLoaded, &views, 0, &T).unwrap().0, 0);
    }

    #[test]
    fn prefix_sticks_until_saturated_then_spills() {
        let mut views = [v(3, 8, 40), v(0, 8, 0), v(1, 8, 10)];
        assert_eq!(
            choose(Strategy::PrefixAware, &views, 1, &T),
            Some((0, Reason::PrefixHit))
        );
        views[0].waiting = Some(6.0);
        assert_eq!(
            choose(Strategy::PrefixAware, &views, 1, &T),
            Some((2, Reason::Spill))
        );
        views[2].in_flight = 8;
        assert_eq!(
            choose(Strategy::PrefixAware, &views, 1, &T),
            Some((1, Reason::Spill))
        );
        // Everything saturated: the longest prefix among those with a free slot.
        views[1].kv_usage = Some(0.95);
        assert_eq!(
            choose(Strategy::PrefixAware, &views, 1, &T),
            Some((0, Reason::PrefixHit))
        );
    }

    #[test]
    fn cold_requests_go_to_the_least_loaded_and_ties_rotate() {
        let views = [v(1, 8, 0), v(1, 8, 0), v(0, 8, 0)];
        assert_eq!(
            choose(Strategy::PrefixAware, &views, 0, &T),
            Some((2, Reason::Cold))
        );
        let even = [v(0, 8, 0), v(0, 8, 0), v(0, 8, 0)];
        let picks: Vec<usize> = (0..3)
            .map(|r| choose(Strategy::PrefixAware, &even, r, &T).unwrap().0)
            .collect();
        assert_eq!(picks, vec![0, 1, 2]);
    }

    #[test]
    fn equal_prefixes_break_ties_by_load() {
        let views = [v(5, 8, 20), v(2, 8, 20), v(0, 8, 3)];
        assert_eq!(
            choose(Strategy::PrefixAware, &views, 0, &T),
            Some((1, Reason::PrefixHit))
        );
    }

    #[test]
    fn lora_affinity_comes_first() {
        let mut views = [v(0, 8, 0), v(6, 8, 0), v(0, 8, 0)];
        views[0].lora = LoraFit::Waiting;
        views[1].lora = LoraFit::Running;
        views[2].lora = LoraFit::FreeSlot;
        for s in [
            Strategy::RoundRobin,
            Strategy::LeastLoaded,
            Strategy::PrefixAware,
        ] {
            assert_eq!(choose(s, &views, 0, &T).unwrap().0, 1, "{s:?}");
        }
        views[1].in_flight = 8;
        assert_eq!(choose(Strategy::LeastLoaded, &views, 0, &T).unwrap().0, 2);
    }
}
