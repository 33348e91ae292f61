//! The replicas benchmark's arithmetic, apart from the processes so that it is tested alone:
//! where each stream sends, the backend's occupancy against its capacity, when a polled
//! condition first held, and the percentiles of propagation times and latencies.

use crate::harness::stats::percentile;

/// How a tenant's streams are spread over the replicas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Placement {
    /// Every stream of tenant `i` goes to replica `i mod n`.
    Pinned,
    /// Stream `s` of tenant `i` goes to replica `(i + s) mod n`: each tenant round-robin over
    /// all replicas, each starting at another one.
    Spread,
}

impl Placement {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Placement::Pinned => "pinned",
            Placement::Spread => "spread",
        }
    }

    /// The replica (of `n`) that stream `stream` of tenant `tenant` sends to.
    pub(crate) fn replica(self, tenant: usize, stream: usize, n: usize) -> usize {
        match self {
            Placement::Pinned => tenant % n,
            Placement::Spread => (tenant + stream) % n,
        }
    }
}

/// One poll of the backend: seconds since the phase started, running and waiting requests.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Occupancy {
    pub(crate) t: f64,
    pub(crate) running: f64,
    pub(crate) waiting: f64,
}

/// The largest running + waiting seen (0 without samples), and how far it went above
/// `capacity` (0 when it never did): the fleet's over-admission.
pub(crate) fn over_admission(samples: &[Occupancy], capacity: usize) -> (f64, f64) {
    let max = samples
        .iter()
        .map(|s| s.running + s.waiting)
        .fold(0.0, f64::max);
    (max, (max - capacity as f64).max(0.0))
}

/// Mean (running, waiting) of the samples inside [w0, w1] (NaN without any).
pub(crate) fn mean_occupancy(samples: &[Occupancy], w0: f64, w1: f64) -> (f64, f64) {
    let inside: Vec<&Occupancy> = samples.iter().filter(|s| s.t >= w0 && s.t <= w1).collect();
    if inside.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let n = inside.len() as f64;
    (
        inside.iter().map(|s| s.running).sum::<f64>() / n,
        inside.iter().map(|s| s.waiting).sum::<f64>() / n,
    )
}

/// The time of the first poll of a time-ordered series for which `ok` holds.
pub(crate) fn first_time<T>(series: &[(f64, T)], ok: impl Fn(&T) -> bool) -> Option<f64> {
    series.iter().find(|(_, v)| ok(v)).map(|(t, _)| *t)
}

/// p50 and max of the times seen, and how many changes were never seen (`None`).
pub(crate) fn seen_summary(times: &[Option<f64>]) -> (f64, f64, usize) {
    let mut seen: Vec<f64> = times.iter().flatten().copied().collect();
    seen.sort_by(f64::total_cmp);
    let max = seen.last().copied().unwrap_or(f64::NAN);
    (percentile(&seen, 0.5), max, times.len() - seen.len())
}

/// p50 and p99 (nearest rank) of unsorted values.
pub(crate) fn p50_p99(values: &[f64]) -> (f64, f64) {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    (percentile(&v, 0.50), percentile(&v, 0.99))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fairbench::driver::RunOut;
    use crate::fairbench::report::analyse;
    use crate::fairbench::scenarios::weighted_load;
    use crate::harness::stream::Rec;

    #[test]
    fn pinned_and_spread_placements() {
        // Pinned: tenant i on replica i (mod 3), whatever the stream.
        for s in 0..5 {
            assert_eq!(Placement::Pinned.replica(0, s, 3), 0);
            assert_eq!(Placement::Pinned.replica(2, s, 3), 2);
            assert_eq!(Placement::Pinned.replica(4, s, 3), 1);
        }
        // Spread: 24 streams of each tenant, 8 on every replica.
        for tenant in 0..3 {
            let mut per = [0; 3];
            for s in 0..24 {
                per[Placement::Spread.replica(tenant, s, 3)] += 1;
            }
            assert_eq!(per, [8, 8, 8]);
        }
        assert_eq!(Placement::Spread.replica(1, 0, 3), 1);
        assert_eq!(Placement::Spread.name(), "spread");
    }

    fn occ(t: f64, running: f64, waiting: f64) -> Occupancy {
        Occupancy {
            t,
            running,
            waiting,
        }
    }

    #[test]
    fn over_admission_is_what_exceeds_capacity() {
        let s = [occ(0.0, 16.0, 0.0), occ(0.1, 15.0, 0.0)];
        assert_eq!(over_admission(&s, 16), (16.0, 0.0));
        let s = [
            occ(0.0, 16.0, 0.0),
            occ(0.1, 16.0, 2.0),
            occ(0.2, 12.0, 0.0),
        ];
        assert_eq!(over_admission(&s, 16), (18.0, 2.0));
        assert_eq!(over_admission(&[], 16), (0.0, 0.0));
        let (r, w) = mean_occupancy(&s, 0.05, 1.0);
        assert_eq!((r, w), (14.0, 1.0));
        assert!(mean_occupancy(&s, 5.0, 6.0).0.is_nan());
    }

    #[test]
    fn first_time_a_condition_held() {
        let series = [(0.02, 11), (0.04, 11), (0.06, 16), (0.08, 15), (0.10, 16)];
        assert_eq!(first_time(&series, |&v| v >= 16), Some(0.06));
        assert_eq!(first_time(&series, |&v| v > 16), None);
    }

    #[test]
    fn propagation_and_latency_percentiles() {
        let (p50, max, missed) = seen_summary(&[Some(3.0), None, Some(1.0), Some(9.0), Some(2.0)]);
        assert_eq!((p50, max, missed), (2.0, 9.0, 1));
        let (p50, max, missed) = seen_summary(&[None]);
        assert!(p50.is_nan() && max.is_nan());
        assert_eq!(missed, 1);
        let v: Vec<f64> = (1..=200).rev().map(f64::from).collect();
        assert_eq!(p50_p99(&v), (100.0, 198.0));
    }

    /// The shares the benchmark reports are fairbench's: cost in + 2·out in the steady window,
    /// error relative to the weight share. Requests in exact 1:2:4 proportion have no error
    /// wherever they were sent; a tenant short of its share shows it.
    #[test]
    fn shares_over_replicas() {
        let load = weighted_load(20.0);
        // One request per tenant and replica running 0–20 s, 128 in / 128 out each; tenant i
        // has weight 1, 2, 4 and so k = 1, 2, 4 such requests per replica.
        let rec = |tenant: usize, gateway: usize| Rec {
            tenant,
            gateway,
            sent: 0.0,
            first: Some(0.0),
            end: 20.0,
            prompt: 128,
            completion: 128,
            chunks: 128,
            expected_prompt: 128,
            complete: true,
            ..Rec::default()
        };
        let mut recs = Vec::new();
        for (tenant, k) in [(0, 1), (1, 2), (2, 4)] {
            for gateway in 0..3 {
                for _ in 0..k {
                    recs.push(rec(tenant, gateway));
                }
            }
        }
        let run = |recs: Vec<Rec>| RunOut {
            mode: "spread",
            probe: Vec::new(),
            recs,
            sim_load: (16.0, 0.0),
        };
        let r = analyse(&load, &run(recs.clone()));
        for (t, want) in r.tenants.iter().zip([1.0 / 7.0, 2.0 / 7.0, 4.0 / 7.0]) {
            assert!((t.share - want).abs() < 1e-9, "{} {}", t.share, want);
            assert!(t.share_err < 1e-9);
        }
        // Without one of w4's twelve requests, w4 has 11 of the 20 left: 55% against 4/7.
        recs.retain({
            let mut dropped = false;
            move |r| {
                if r.tenant == 2 && !dropped {
                    dropped = true;
                    return false;
                }
                true
            }
        });
        let r = analyse(&load, &run(recs));
        let w4 = &r.tenants[2];
        assert!((w4.share - 11.0 / 20.0).abs() < 1e-9);
        let want = 4.0 / 7.0;
        assert!((w4.share_err - (want - 11.0 / 20.0) / want).abs() < 1e-9);
    }
}
