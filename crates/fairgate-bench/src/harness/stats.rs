//! The arithmetic the benchmarks report with: percentiles, spreads across tenants or replicas,
//! trends, and service over time (a request's tokens spread uniformly over [first token, end],
//! so a window counts what was served inside it, not what finished inside it).

/// Nearest-rank percentile of sorted values (NaN when empty).
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Percentile of sorted microseconds, in milliseconds, at the rounded index `(n − 1) · p`
/// (NaN when empty). The overhead benchmark's published numbers use this definition, so it
/// stays beside [`percentile`] to keep them comparable.
pub(crate) fn rounded_index_ms(sorted_us: &[u64], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted_us.len() as f64 - 1.0) * p).round() as usize;
    sorted_us[idx.min(sorted_us.len() - 1)] as f64 / 1000.0
}

/// Mean (NaN when empty).
pub(crate) fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        f64::NAN
    } else {
        values.iter().sum::<f64>() / values.len() as f64
    }
}

/// p50, p90, p99 (nearest rank) and mean of unsorted values, in the values' unit.
pub(crate) fn summary(values: &[f64]) -> (f64, f64, f64, f64) {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    (
        percentile(&v, 0.50),
        percentile(&v, 0.90),
        percentile(&v, 0.99),
        mean(&v),
    )
}

/// max − min (0 for fewer than two values).
pub(crate) fn max_min_diff(values: &[f64]) -> f64 {
    if values.len() < 2 {
        return 0.0;
    }
    let max = values.iter().copied().fold(f64::MIN, f64::max);
    let min = values.iter().copied().fold(f64::MAX, f64::min);
    max - min
}

/// Mean over samples of max − min within each sample (0 without samples).
pub(crate) fn mean_spread(samples: &[Vec<f64>]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.iter().map(|s| max_min_diff(s)).sum::<f64>() / samples.len() as f64
}

/// Coefficient of variation (population standard deviation / mean); 0 for a zero mean.
pub(crate) fn cv(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    if mean == 0.0 {
        return 0.0;
    }
    let var = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
    var.sqrt() / mean
}

/// Least-squares slope of y over x (0 when x has no spread).
pub(crate) fn lsq_slope(xs: &[f64], ys: &[f64]) -> f64 {
    let n = xs.len().min(ys.len()) as f64;
    if n < 2.0 {
        return 0.0;
    }
    let mx = xs.iter().sum::<f64>() / n;
    let my = ys.iter().sum::<f64>() / n;
    let sxy: f64 = xs.iter().zip(ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let sxx: f64 = xs.iter().map(|x| (x - mx) * (x - mx)).sum();
    if sxx == 0.0 {
        0.0
    } else {
        sxy / sxx
    }
}

/// Part of `amount` served by `t` when it is spread uniformly over [first, end].
fn spread(amount: f64, first: f64, end: f64, t: f64) -> f64 {
    if t <= first {
        0.0
    } else if t >= end {
        amount
    } else {
        amount * (t - first) / (end - first)
    }
}

/// Sum of the spread `(amount, first, end)` items served by `t`.
pub(crate) fn service_at(items: &[(f64, f64, f64)], t: f64) -> f64 {
    items.iter().map(|&(a, f, e)| spread(a, f, e, t)).sum()
}

/// What the spread `(amount, first, end)` items served inside [w0, w1].
pub(crate) fn served_between(items: &[(f64, f64, f64)], w0: f64, w1: f64) -> f64 {
    service_at(items, w1) - service_at(items, w0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_uniform_over_first_to_end() {
        assert_eq!(spread(30.0, 1.0, 4.0, 0.5), 0.0);
        assert_eq!(spread(30.0, 1.0, 4.0, 2.0), 10.0);
        assert_eq!(spread(30.0, 1.0, 4.0, 9.0), 30.0);
        // A zero-length request is served at once.
        assert_eq!(spread(5.0, 2.0, 2.0, 2.0), 0.0);
        assert_eq!(spread(5.0, 2.0, 2.0, 2.1), 5.0);
        assert_eq!(served_between(&[(30.0, 1.0, 4.0)], 2.0, 3.0), 10.0);
    }

    #[test]
    fn accumulated_difference() {
        // Tenant a: 10 over [0,1] and 20 over [1,3]; tenant b: 40 over [0,4].
        let a = [(10.0, 0.0, 1.0), (20.0, 1.0, 3.0)];
        let b = [(40.0, 0.0, 4.0)];
        let at = |t| max_min_diff(&[service_at(&a, t), service_at(&b, t)]);
        assert_eq!(at(1.0), 0.0); // 10 vs 10
        assert_eq!(at(2.0), 0.0); // 20 vs 20
        assert_eq!(at(3.0), 0.0); // 30 vs 30
        assert_eq!(at(4.0), 10.0); // 30 vs 40
        assert_eq!(max_min_diff(&[3.0]), 0.0);
        assert_eq!(max_min_diff(&[3.0, 7.0, 5.0]), 4.0);
    }

    #[test]
    fn slope_of_a_line_and_of_noise() {
        let xs = [0.0, 1.0, 2.0, 3.0];
        assert!((lsq_slope(&xs, &[1.0, 3.0, 5.0, 7.0]) - 2.0).abs() < 1e-12);
        // y = 0, 1, 0, 1: mean x 1.5, Σ(dx·dy) = 1, Σdx² = 5 → 0.2.
        assert!((lsq_slope(&xs, &[0.0, 1.0, 0.0, 1.0]) - 0.2).abs() < 1e-12);
        assert_eq!(lsq_slope(&[1.0, 1.0], &[0.0, 5.0]), 0.0);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.50), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v[..10], 0.99), 10.0);
        assert_eq!(percentile(&[7.0], 0.0), 7.0);
        assert!(percentile(&[], 0.5).is_nan());
    }

    #[test]
    fn rounded_index_percentiles_in_ms() {
        let us: Vec<u64> = (1..=100).map(|i| i * 1000).collect();
        // Index round(99 · 0.5) = 50 (49.5 rounds away from zero), round(99 · 0.99) = 98.
        assert_eq!(rounded_index_ms(&us, 0.50), 51.0);
        assert_eq!(rounded_index_ms(&us, 0.99), 99.0);
        assert!(rounded_index_ms(&[], 0.5).is_nan());
    }

    #[test]
    fn summary_percentiles_and_mean() {
        let v: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        let (p50, p90, p99, mean) = summary(&v);
        assert_eq!((p50, p90, p99), (50.0, 90.0, 99.0));
        assert!((mean - 50.5).abs() < 1e-12);
        let (p50, _, _, mean) = summary(&[]);
        assert!(p50.is_nan() && mean.is_nan());
    }

    #[test]
    fn imbalance_and_cv() {
        assert_eq!(mean_spread(&[]), 0.0);
        // Spreads 4 and 0: mean 2.
        let s = vec![vec![1.0, 5.0, 3.0, 2.0], vec![2.0, 2.0, 2.0, 2.0]];
        assert_eq!(mean_spread(&s), 2.0);
        assert_eq!(cv(&[5.0, 5.0, 5.0, 5.0]), 0.0);
        // Mean 2, population std 1.
        assert!((cv(&[1.0, 3.0, 1.0, 3.0]) - 0.5).abs() < 1e-12);
        assert_eq!(cv(&[0.0, 0.0]), 0.0);
        assert_eq!(cv(&[]), 0.0);
    }
}
