//! Reading Prometheus text pages (the simulator's vLLM-style gauges and counters, the
//! gateway's routing counters) without a parser dependency: the pages are our own and simple.

/// Value of a gauge in a Prometheus text page (its first series).
pub(crate) fn gauge(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Sum of every series of metric `name` whose labels contain `label` (e.g. `reason="cold"`;
/// "" for all) in a Prometheus text page; `None` when there is none.
pub(crate) fn metric_sum(page: &str, name: &str, label: &str) -> Option<f64> {
    let mut sum = None;
    for l in page.lines() {
        let Some(rest) = l.strip_prefix(name) else {
            continue;
        };
        let labels = match rest.strip_prefix('{') {
            Some(r) => r.split_once('}').map_or("", |(labels, _)| labels),
            None if rest.starts_with(' ') => "",
            None => continue,
        };
        if !labels.contains(label) {
            continue;
        }
        if let Some(v) = l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            *sum.get_or_insert(0.0) += v;
        }
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sums_over_series() {
        let page = "# HELP x\nvllm:request_success_total{finished_reason=\"length\"} 3\n\
            vllm:request_success_total{finished_reason=\"abort\"} 2\n\
            vllm:request_success_totalx 9\nplain 4.5\n";
        assert_eq!(
            metric_sum(page, "vllm:request_success_total", ""),
            Some(5.0)
        );
        assert_eq!(
            metric_sum(
                page,
                "vllm:request_success_total",
                "finished_reason=\"abort\""
            ),
            Some(2.0)
        );
        assert_eq!(metric_sum(page, "plain", ""), Some(4.5));
        assert_eq!(metric_sum(page, "missing", ""), None);
        assert_eq!(gauge(page, "plain"), Some(4.5));
    }
}
