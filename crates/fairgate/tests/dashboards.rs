//! The Grafana dashboard (`deploy/grafana/fairgate.json`) and every PromQL query shipped in the
//! Helm chart name only metrics — and labels of them — that the gateway really exports, checked
//! against `/metrics` after real traffic (issue 14).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::cluster::metrics_text;
use common::*;
use fairgate_sim::SimConfig;
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every PromQL string of a dashboard: panel targets' `expr` and templating queries.
fn dashboard_queries(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr" | "definition", Value::String(s)) => out.push(s.clone()),
                    ("query", Value::String(s)) if s.contains("fairgate_") => out.push(s.clone()),
                    _ => dashboard_queries(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| dashboard_queries(x, out)),
        _ => {}
    }
}

/// PromQL in the chart's templates: the values of `query:` keys (KEDA triggers, rules).
fn chart_queries() -> Vec<(String, String)> {
    let dir = repo().join("deploy/helm/fairgate/templates");
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return out;
    };
    for e in entries.flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        for line in text.lines() {
            if let Some(q) = line.trim().strip_prefix("query:") {
                // Templated queries are checked in their rendered form (see `rendered_chart_queries`).
                if q.contains("fairgate_") && !q.contains("{{") {
                    out.push((
                        e.file_name().to_string_lossy().into_owned(),
                        q.trim().to_owned(),
                    ));
                }
            }
        }
    }
    out
}

/// Labels Prometheus adds to every scraped series (from the target), which a query may use
/// though the gateway does not export them.
const TARGET_LABELS: [&str; 6] = ["namespace", "service", "pod", "job", "instance", "endpoint"];

/// PromQL of the chart as rendered by `helm template` for its CI and example values (the KEDA
/// triggers are templated per model). `None` when helm is not installed
/// (`scripts/test_deploy.sh` installs it under `.tools/deploy`; `FAIRGATE_HELM` names another).
fn rendered_chart_queries() -> Option<Vec<(String, String)>> {
    let helm = std::env::var_os("FAIRGATE_HELM")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".tools/deploy/helm/helm"));
    if !helm.exists() {
        return None;
    }
    let chart = repo().join("deploy/helm/fairgate");
    let mut out = Vec::new();
    for values in ["ci/cluster-values.yaml", "examples/vllm-values.yaml"] {
        let o = std::process::Command::new(&helm)
            .arg("template")
            .arg("fg")
            .arg(&chart)
            .arg("-f")
            .arg(chart.join(values))
            .output()
            .expect("running helm");
        assert!(
            o.status.success(),
            "helm template -f {values}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        for line in String::from_utf8_lossy(&o.stdout).lines() {
            if let Some(q) = line.trim().strip_prefix("query:") {
                let q = q.trim().trim_matches('"').replace("\\\"", "\"");
                if q.contains("fairgate_") {
                    out.push((format!("chart with {values}"), q));
                }
            }
        }
    }
    Some(out)
}

/// Identifiers of `fairgate_*` metrics in a query.
fn metric_names(q: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let b = q.as_bytes();
    let mut i = 0;
    while let Some(at) = q[i..].find("fairgate_") {
        let start = i + at;
        let before_ok =
            start == 0 || !(b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_');
        let mut end = start;
        while end < b.len()
            && (b[end].is_ascii_lowercase() || b[end].is_ascii_digit() || b[end] == b'_')
        {
            end += 1;
        }
        if before_ok {
            names.insert(q[start..end].to_owned());
        }
        i = end;
    }
    names
}

/// Label names a query relies on: in `by (...)` / `without (...)` and in selectors `{...}`.
fn label_names(q: &str) -> BTreeSet<String> {
    let mut labels = BTreeSet::new();
    let mut rest = q;
    while let Some(at) = rest.find(['{', '(']) {
        let open = rest.as_bytes()[at];
        let before = rest[..at].trim_end();
        let close = if open == b'{' { '}' } else { ')' };
        let Some(len) = rest[at + 1..].find(close) else {
            break;
        };
        let inner = &rest[at + 1..at + 1 + len];
        if open == b'{' {
            for part in inner.split(',') {
                if let Some(name) = part.split(['=', '!']).next() {
                    let name = name.trim();
                    if !name.is_empty() {
                        labels.insert(name.to_owned());
                    }
                }
            }
        } else if before.ends_with(" by") || before.ends_with(" without") || before == "by" {
            for name in inner.split(',') {
                labels.insert(name.trim().to_owned());
            }
        }
        rest = &rest[at + 1..];
    }
    labels
}

/// `/metrics` as series name → the label names seen on it.
fn exposition(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (name, labels) = match line.find('{') {
            Some(i) => (
                &line[..i],
                &line[i + 1..line.rfind('}').unwrap_or(line.len())],
            ),
            None => (line.split(' ').next().unwrap_or(""), ""),
        };
        let entry = out.entry(name.to_owned()).or_default();
        for pair in labels.split("\",").filter(|p| !p.is_empty()) {
            if let Some((k, _)) = pair.split_once('=') {
                entry.insert(k.trim().to_owned());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_dashboard_and_chart_query_names_exported_metrics_and_labels() {
    let path = repo().join("deploy/grafana/fairgate.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut queries: Vec<(String, String)> = Vec::new();
    let mut d = Vec::new();
    dashboard_queries(&dashboard, &mut d);
    queries.extend(
        d.into_iter()
            .map(|q| ("deploy/grafana/fairgate.json".to_owned(), q)),
    );
    queries.extend(chart_queries());
    match rendered_chart_queries() {
        Some(q) => {
            assert!(q.len() >= 2, "no KEDA queries rendered: {q:?}");
            queries.extend(q);
        }
        None => fairgate_testkit::require(
            "helm",
            "not installed; run scripts/test_deploy.sh (installs it under .tools/deploy)",
        ),
    }
    assert!(queries.len() > 20, "{queries:?}");
    // The chart ships the same dashboard, when it ships one.
    let shipped = repo().join("deploy/helm/fairgate/dashboards/fairgate.json");
    if shipped.exists() {
        assert_eq!(
            std::fs::read_to_string(&shipped).unwrap(),
            std::fs::read_to_string(&path).unwrap(),
            "the chart's dashboard differs from deploy/grafana/fairgate.json"
        );
    }

    // Real traffic: priced model, prefix-aware routing over two backends (scraped), streamed
    // and whole answers, a queue, a refused request.
    let a = Sim::start(SimConfig {
        decode_step_base: Duration::from_millis(2),
        ..SimConfig::instant("m")
    })
    .await;
    let b = Sim::start(SimConfig::instant("m")).await;
    let db = fresh_db(Db::Sqlite).await.unwrap();
    let setup = Setup::many("m", &[&a.url, &b.url], 1).with(|c| {
        c.models[0].price = fairgate_types::Price::tokens(1_000_000, 2_000_000);
        c.routing.scrape_interval_ms = 100;
    });
    let gw = TestGateway::start(setup, &db.url).await;
    gw.tenant("t", 2).await;
    let (_, key) = gw.key("t", None).await;
    let runs: Vec<_> = (0..6)
        .map(|i| {
            let (base, key) = (gw.base.clone(), key.clone());
            tokio::spawn(async move {
                reqwest::Client::new()
                    .post(format!("{base}/v1/chat/completions"))
                    .bearer_auth(&key)
                    .json(&chat("m", 20, i % 2 == 0))
                    .send()
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap()
            })
        })
        .collect();
    for r in runs {
        r.await.unwrap();
    }
    let _ = gw
        .post("wrong-key", "/v1/chat/completions", chat("m", 1, false))
        .await;

    let mut missing = Vec::new();
    for _ in 0..100 {
        let series = exposition(&metrics_text(&gw).await);
        missing.clear();
        for (file, q) in &queries {
            let names = metric_names(q);
            assert!(!names.is_empty(), "{file}: `{q}` names no fairgate metric");
            let mut seen: BTreeSet<String> = BTreeSet::new();
            for n in &names {
                match series.get(n) {
                    Some(labels) => seen.extend(labels.iter().cloned()),
                    None => missing.push(format!("{file}: metric {n} (in `{q}`)")),
                }
            }
            for l in label_names(q) {
                if TARGET_LABELS.contains(&l.as_str()) {
                    continue;
                }
                if names.iter().any(|n| series.contains_key(n)) && !seen.contains(&l) {
                    missing.push(format!("{file}: label {l} (in `{q}`)"));
                }
            }
        }
        if missing.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(missing.is_empty(), "not exported:\n{}", missing.join("\n"));
    gw.shutdown().await;
}

#[test]
fn the_query_parsers_find_names_and_labels() {
    let q = r#"histogram_quantile(0.95, sum by (le, model) (rate(fairgate_time_to_first_token_seconds_bucket{model=~"$model",status!="200"}[5m]))) / scalar(sum(fairgate_x_total))"#;
    assert_eq!(
        metric_names(q),
        BTreeSet::from([
            "fairgate_time_to_first_token_seconds_bucket".to_owned(),
            "fairgate_x_total".to_owned()
        ])
    );
    assert_eq!(
        label_names(q),
        BTreeSet::from(["le".to_owned(), "model".to_owned(), "status".to_owned()])
    );
    let e = exposition("# HELP x\nfoo_total{a=\"1\",b=\"x,y\"} 3\nbar 1\n");
    assert_eq!(
        e["foo_total"],
        BTreeSet::from(["a".to_owned(), "b".to_owned()])
    );
    assert!(e["bar"].is_empty());
}
