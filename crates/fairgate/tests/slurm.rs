//! Models served from Slurm jobs (issue 15).
//!
//! Against a real single-node Slurm (`scripts/slurm/local-slurm.sh`, started by `.ci/run` and
//! `scripts/test.sh`; 4 fake GPUs), with jobs from `deploy/slurm/vllm.sbatch` running
//! `fairgate sim`: scale from zero to two under queued load and back to zero when idle; a job
//! cancelled with `scancel` is replaced with no failed request; a job near its time limit is
//! replaced before it ends with no failed request; provisioning through slurmrestd as well as
//! the commands.
//!
//! With a fake Slurm (no scheduler needed): a multi-node job is healthy only while every node
//! answers (two simulators stand in for two nodes), and a job that stops answering is retired
//! and replaced.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use fairgate_gateway::config::slurm::SlurmApi;
use fairgate_gateway::config::SlurmModelConfig;
use fairgate_sim::SimConfig;
use fairgate_slurm::api::{JobInfo, JobState, Slurm, SlurmError, Submission};
use futures_util::future::BoxFuture;
use serde_json::{json, Value};

/// Real-Slurm tests share 4 fake GPUs: one at a time.
static SLURM: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Whether a Slurm answers here (`sinfo`); under CI its absence fails the test.
fn slurm_up() -> bool {
    let ok = std::process::Command::new("sinfo")
        .arg("-h")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        fairgate_testkit::require(
            "Slurm",
            "`sinfo` does not answer: start one with `eval \"$(scripts/slurm/local-slurm.sh)\"`",
        );
    }
    ok
}

fn endpoints_dir(test: &str) -> PathBuf {
    let base = std::env::var("FAIRGATE_SLURM_ENDPOINTS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir().join("fairgate-slurm-endpoints"));
    let d = base.join(format!("{test}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // Jobs submitted through slurmrestd run as its user and write here.
        let _ = std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o1777));
    }
    d
}

/// The model's settings for a test: the single-node template running the simulator.
fn model_cfg(decode_ms: u32) -> SlurmModelConfig {
    let mut c: SlurmModelConfig = toml::from_str(&format!(
        "template = \"{}\"",
        repo().join("deploy/slurm/vllm.sbatch").display()
    ))
    .unwrap();
    c.server_cmd = Some(format!(
        "{} sim --listen 127.0.0.1:$PORT --model $FAIRGATE_MODEL --decode-step-ms {decode_ms} --prefill-overhead-ms 2",
        env!("CARGO_BIN_EXE_fairgate")
    ));
    c.env = BTreeMap::from([("FAIRGATE_ADVERTISE_HOST".into(), "127.0.0.1".into())]);
    c.partition = Some("gpu".into());
    c.time_limit_min = 10;
    c.renew_before_s = 60;
    c.start_timeout_s = 60;
    c.max_in_flight = 2;
    c.retry_backoff_s = 1;
    c.max_submits_per_hour = 30;
    c
}

fn setup(model: &str, m: SlurmModelConfig, api: SlurmApi, dir: PathBuf) -> Setup {
    let model = model.to_owned();
    let mut s = Setup::one(&model, "http://127.0.0.1:9", 1).with(move |c| {
        c.models[0].backends.clear();
        c.models[0].slurm = Some(m.clone());
        c.slurm.api = api;
        c.slurm.endpoints_dir = dir.clone();
        c.slurm.poll_interval_ms = 300;
        c.slurm.probe_timeout_ms = 1_000;
        if api == SlurmApi::Rest {
            c.slurm.rest_url = std::env::var("FAIRGATE_SLURM_REST").ok();
        }
    });
    s.queue_timeout_ms = 60_000;
    s.first_byte_timeout_ms = 30_000;
    s
}

/// Cancels every job of `prefix` (the tests' jobs outlive the gateway, by design).
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Ok(o) = std::process::Command::new("squeue")
            .args(["-h", "-o", "%i %j"])
            .output()
        {
            for line in String::from_utf8_lossy(&o.stdout).lines() {
                let mut f = line.split_whitespace();
                if let (Some(id), Some(name)) = (f.next(), f.next()) {
                    if name.starts_with(&self.0) {
                        let _ = std::process::Command::new("scancel").arg(id).status();
                    }
                }
            }
        }
    }
}

/// The model's backends as the admin API lists them: (name, url).
async fn backends(gw: &TestGateway, model: &str) -> Vec<(String, String)> {
    let (s, v) = gw
        .admin(
            reqwest::Method::GET,
            &format!("/models/{model}/backends"),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    v["backends"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| !b["removing"].as_bool().unwrap_or(false))
        .map(|b| {
            (
                b["name"].as_str().unwrap_or("").to_owned(),
                b["url"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

/// The running or pending jobs named `prefix*`: (id, state).
fn squeue(prefix: &str) -> Vec<(String, String)> {
    let o = std::process::Command::new("squeue")
        .args(["-h", "-o", "%i %j %T"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 3 && f[1].starts_with(prefix)).then(|| (f[0].to_owned(), f[2].to_owned()))
        })
        .collect()
}

async fn until<F: FnMut() -> Fut, Fut: std::future::Future<Output = bool>>(
    what: &str,
    limit: Duration,
    mut f: F,
) {
    let t = Instant::now();
    while !f().await {
        assert!(t.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `n` clients sending requests back to back until `stop`; returns (ok, failed, failures).
fn load(
    gw: &TestGateway,
    key: &str,
    model: &str,
    n: usize,
    max_tokens: u64,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<(usize, usize, Vec<String>)> {
    let (base, key, model) = (gw.base.clone(), key.to_owned(), model.to_owned());
    tokio::spawn(async move {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(90))
            .build()
            .unwrap();
        let runs = (0..n).map(|_| {
            let (http, base, key, model, stop) = (
                http.clone(),
                base.clone(),
                key.clone(),
                model.clone(),
                stop.clone(),
            );
            tokio::spawn(async move {
                let (mut ok, mut bad, mut why) = (0, 0, Vec::new());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let r = http
                        .post(format!("{base}/v1/chat/completions"))
                        .bearer_auth(&key)
                        .json(&chat(&model, max_tokens, true))
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status() == 200 => {
                            let text = r.text().await.unwrap_or_default();
                            if text.contains("[DONE]") && !text.contains("\"error\"") {
                                ok += 1;
                            } else {
                                bad += 1;
                                why.push(text.chars().take(300).collect());
                            }
                        }
                        Ok(r) => {
                            bad += 1;
                            let s = r.status();
                            why.push(format!("{s}: {}", r.text().await.unwrap_or_default()));
                        }
                        Err(e) => {
                            bad += 1;
                            why.push(e.to_string());
                        }
                    }
                }
                (ok, bad, why)
            })
        });
        let mut total = (0, 0, Vec::new());
        for r in futures_util::future::join_all(runs).await {
            let (o, b, w) = r.unwrap();
            total.0 += o;
            total.1 += b;
            total.2.extend(w);
        }
        total
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scales_from_zero_to_two_under_load_and_back_to_zero_when_idle() {
    if !slurm_up() {
        return;
    }
    let _one = SLURM.lock().await;
    let model = "slurm-scale";
    let _clean = Cleanup(fairgate_slurm::provisioner::prefix_of(model));
    let mut m = model_cfg(15);
    m.min_replicas = 0;
    m.max_replicas = 2;
    m.scale_up_queued = 2;
    m.scale_up_after_s = 1;
    m.scale_down_idle_s = 3;
    let db = fresh_db(Db::Sqlite).await.unwrap();
    let gw = TestGateway::start(
        setup(model, m, SlurmApi::Cli, endpoints_dir("scale")),
        &db.url,
    )
    .await;
    gw.tenant("t", 1).await;
    let (_, key) = gw.key("t", None).await;
    assert!(backends(&gw, model).await.is_empty());
    assert!(squeue(&fairgate_slurm::provisioner::prefix_of(model)).is_empty());

    // Zero backends: requests wait in the queue while the first job starts.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let run = load(&gw, &key, model, 8, 30, stop.clone());
    until("a second job serves", Duration::from_secs(90), || async {
        backends(&gw, model).await.len() == 2
    })
    .await;
    let names: Vec<String> = backends(&gw, model)
        .await
        .into_iter()
        .map(|b| b.0)
        .collect();
    assert!(names.iter().all(|n| n.starts_with("slurm-")), "{names:?}");
    assert_eq!(
        squeue(&fairgate_slurm::provisioner::prefix_of(model)).len(),
        2
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, bad, why) = run.await.unwrap();
    assert_eq!(bad, 0, "failed requests: {why:?}");
    assert!(ok >= 8, "{ok} answers");

    // Idle: one job leaves after scale_down_idle_s, the other after as long again.
    until("scaled back to zero", Duration::from_secs(60), || async {
        backends(&gw, model).await.is_empty()
            && squeue(&fairgate_slurm::provisioner::prefix_of(model)).is_empty()
    })
    .await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_cancelled_outside_the_gateway_is_replaced_with_no_failed_request() {
    if !slurm_up() {
        return;
    }
    let _one = SLURM.lock().await;
    let model = "slurm-cancel";
    let prefix = fairgate_slurm::provisioner::prefix_of(model);
    let _clean = Cleanup(prefix.clone());
    let mut m = model_cfg(5);
    m.min_replicas = 2;
    m.max_replicas = 2;
    let db = fresh_db(Db::Sqlite).await.unwrap();
    let gw = TestGateway::start(
        setup(model, m, SlurmApi::Cli, endpoints_dir("cancel")),
        &db.url,
    )
    .await;
    gw.tenant("t", 1).await;
    let (_, key) = gw.key("t", None).await;
    until("two jobs serve", Duration::from_secs(90), || async {
        backends(&gw, model).await.len() == 2
    })
    .await;
    let before = squeue(&prefix);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let run = load(&gw, &key, model, 3, 8, stop.clone());
    tokio::time::sleep(Duration::from_millis(800)).await;
    let victim = before[0].0.clone();
    assert!(std::process::Command::new("scancel")
        .arg(&victim)
        .status()
        .unwrap()
        .success());
    until("a replacement serves", Duration::from_secs(90), || async {
        let b = backends(&gw, model).await;
        b.len() == 2
            && b.iter()
                .all(|(n, _)| !n.starts_with(&format!("slurm-{victim}@")))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, bad, why) = run.await.unwrap();
    assert_eq!(bad, 0, "failed requests: {why:?}");
    assert!(ok > 0);
    assert!(!squeue(&prefix).iter().any(|(id, _)| *id == victim));
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_near_its_time_limit_is_replaced_before_it_ends() {
    if !slurm_up() {
        return;
    }
    let _one = SLURM.lock().await;
    let model = "slurm-renew";
    let prefix = fairgate_slurm::provisioner::prefix_of(model);
    let _clean = Cleanup(prefix.clone());
    let mut m = model_cfg(5);
    m.min_replicas = 1;
    m.max_replicas = 1;
    // One-minute jobs, renewed 45 s before their end: the first is replaced ~15 s in.
    m.time_limit_min = 1;
    m.renew_before_s = 45;
    let db = fresh_db(Db::Sqlite).await.unwrap();
    let gw = TestGateway::start(
        setup(model, m, SlurmApi::Cli, endpoints_dir("renew")),
        &db.url,
    )
    .await;
    gw.tenant("t", 1).await;
    let (_, key) = gw.key("t", None).await;
    until("the first job serves", Duration::from_secs(60), || async {
        backends(&gw, model).await.len() == 1
    })
    .await;
    let first = backends(&gw, model).await[0].0.clone();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let run = load(&gw, &key, model, 2, 8, stop.clone());
    until(
        "a replacement serves and the first job is gone",
        Duration::from_secs(50),
        || async {
            let b = backends(&gw, model).await;
            b.len() == 1 && b[0].0 != first && squeue(&prefix).len() == 1
        },
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, bad, why) = run.await.unwrap();
    assert_eq!(bad, 0, "failed requests: {why:?}");
    assert!(ok > 0);
    // It left before its time limit: cancelled by the gateway, not timed out by Slurm.
    let id = first
        .trim_start_matches("slurm-")
        .split('@')
        .next()
        .unwrap()
        .to_owned();
    let row = Arc::new(Mutex::new(Value::Null));
    until(
        "the first job's end is recorded",
        Duration::from_secs(10),
        || {
            let row = row.clone();
            let id = id.clone();
            let gw = &gw;
            async move {
                let (s, v) = gw.admin(reqwest::Method::GET, "/slurm/jobs", None).await;
                assert_eq!(s, 200, "{v}");
                let r = v["data"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|j| j["job_id"] == id.as_str())
                    .cloned()
                    .unwrap_or(Value::Null);
                let done = r["ended_at"].is_number();
                *row.lock().unwrap() = r;
                done
            }
        },
    )
    .await;
    let row = row.lock().unwrap().clone();
    assert_eq!(row["reason"], "renewal", "{row}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisions_through_slurmrestd() {
    if !slurm_up() {
        return;
    }
    if std::env::var("FAIRGATE_SLURM_REST").is_err() {
        fairgate_testkit::require(
            "slurmrestd",
            "FAIRGATE_SLURM_REST is not set: start Slurm with `eval \"$(scripts/slurm/local-slurm.sh)\"`",
        );
        return;
    }
    let _one = SLURM.lock().await;
    let model = "slurm-rest";
    let _clean = Cleanup(fairgate_slurm::provisioner::prefix_of(model));
    let mut m = model_cfg(5);
    m.min_replicas = 1;
    let db = fresh_db(Db::Sqlite).await.unwrap();
    let gw = TestGateway::start(
        setup(model, m, SlurmApi::Rest, endpoints_dir("rest")),
        &db.url,
    )
    .await;
    gw.tenant("t", 1).await;
    let (_, key) = gw.key("t", None).await;
    until("the job serves", Duration::from_secs(60), || async {
        backends(&gw, model).await.len() == 1
    })
    .await;
    let r = gw
        .post(&key, "/v1/chat/completions", chat(model, 5, false))
        .await;
    assert_eq!(r.status(), 200);
    let (s, v) = gw.admin(reqwest::Method::GET, "/slurm", None).await;
    assert_eq!(s, 200, "{v}");
    assert!(
        v["api"].as_str().unwrap().starts_with("slurmrestd v0.0."),
        "{v}"
    );
    gw.shutdown().await;
}

// ---- a fake Slurm, for what one machine cannot run ------------------------------------------

/// Runs every job at once on the "nodes" the test names: writes its endpoint file with one
/// probe per node, and reports it running until cancelled.
#[derive(Default)]
struct Fake {
    jobs: Mutex<Vec<(String, String, bool)>>,
    /// The probe URLs the next job gets (one per node), and its server URL.
    next: Mutex<(String, Vec<String>)>,
    dir: Mutex<PathBuf>,
    cancelled: Mutex<Vec<String>>,
    /// When set, every submission is refused with this message.
    refuse: Mutex<Option<String>>,
    attempts: std::sync::atomic::AtomicUsize,
}

impl Slurm for Fake {
    fn submit<'a>(&'a self, job: &'a Submission) -> BoxFuture<'a, Result<String, SlurmError>> {
        Box::pin(async move {
            self.attempts
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if let Some(why) = self.refuse.lock().unwrap().clone() {
                return Err(SlurmError::Refused(why));
            }
            let mut jobs = self.jobs.lock().unwrap();
            let id = (100 + jobs.len()).to_string();
            let (url, probes) = self.next.lock().unwrap().clone();
            let file = self.dir.lock().unwrap().join(format!("{}.json", job.name));
            std::fs::write(
                file,
                json!({"job_id": id, "url": url, "probes": probes, "nodes": ["node1", "node2"]})
                    .to_string(),
            )
            .unwrap();
            jobs.push((id.clone(), job.name.clone(), true));
            Ok(id)
        })
    }

    fn jobs<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<JobInfo>, SlurmError>> {
        Box::pin(async move {
            let now = fairgate_types::now_millis() / 1000;
            Ok(self
                .jobs
                .lock()
                .unwrap()
                .iter()
                .filter(|(_, n, live)| *live && n.starts_with(prefix))
                .map(|(id, n, _)| JobInfo {
                    id: id.clone(),
                    name: n.clone(),
                    state: JobState::Running,
                    slurm_state: "RUNNING".into(),
                    nodes: "node[1-2]".into(),
                    start_time: now,
                    end_time: now + 3_600,
                })
                .collect())
        })
    }

    fn cancel<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), SlurmError>> {
        Box::pin(async move {
            for j in self.jobs.lock().unwrap().iter_mut() {
                if j.0 == id {
                    j.2 = false;
                }
            }
            self.cancelled.lock().unwrap().push(id.to_owned());
            Ok(())
        })
    }

    fn describe(&self) -> String {
        "fake".into()
    }
}

#[tokio::test]
async fn a_multi_node_job_serves_only_while_every_node_answers() {
    // Two simulators stand in for the two nodes of one job: the head serves, the other only
    // answers its health probe.
    let head = Sim::start(SimConfig::instant("mn")).await;
    let mut worker = Sim::start(SimConfig::instant("mn")).await;
    let spare = Sim::start(SimConfig::instant("mn")).await;
    let fake = Arc::new(Fake::default());
    let dir = endpoints_dir("multinode");
    *fake.dir.lock().unwrap() = dir.clone();
    *fake.next.lock().unwrap() = (
        head.url.clone(),
        vec![
            format!("{}/health", head.url),
            format!("{}/health", worker.url),
        ],
    );
    let mut m = model_cfg(1);
    m.nodes = 2;
    m.min_replicas = 1;
    m.max_replicas = 1;
    let mut s = setup("mn", m, SlurmApi::Cli, dir);
    s.slurm = Some(fake.clone());
    let db = fresh_db(Db::Sqlite).await.unwrap();
    let gw = TestGateway::start(s, &db.url).await;
    gw.tenant("t", 1).await;
    let (_, key) = gw.key("t", None).await;
    until(
        "the two-node job serves",
        Duration::from_secs(20),
        || async { backends(&gw, "mn").await.len() == 1 },
    )
    .await;
    assert_eq!(backends(&gw, "mn").await[0].0, "slurm-100@node1");
    let r = gw
        .post(&key, "/v1/chat/completions", chat("mn", 3, false))
        .await;
    assert_eq!(r.status(), 200);

    // The second node dies; its head still answers, but the job is broken: retired and
    // replaced by one whose nodes both answer.
    *fake.next.lock().unwrap() = (
        head.url.clone(),
        vec![
            format!("{}/health", head.url),
            format!("{}/health", spare.url),
        ],
    );
    worker.stop();
    until(
        "the broken job is replaced",
        Duration::from_secs(20),
        || async {
            let b = backends(&gw, "mn").await;
            b.len() == 1 && b[0].0 == "slurm-101@node1"
        },
    )
    .await;
    assert_eq!(*fake.cancelled.lock().unwrap(), vec!["100".to_owned()]);
    let (s, v) = gw.admin(reqwest::Method::GET, "/slurm", None).await;
    assert_eq!(s, 200, "{v}");
    let job = &v["models"][0]["jobs"][0];
    assert_eq!(job["id"], "101", "{v}");
    assert_eq!(job["phase"], "serving", "{v}");
    assert_eq!(job["probe_nodes"], json!(["node1", "node2"]), "{v}");

    // Operators see the job ids and nodes on the backends page.
    let (s, u) = gw
        .admin(
            reqwest::Method::POST,
            "/users",
            Some(json!({"email": "ops@example.org", "password": "correct horse battery staple", "role": "operator"})),
        )
        .await;
    assert_eq!(s, 201, "{u}");
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let login = browser
        .post(format!("{}/portal/login", gw.base))
        .form(&[
            ("email", "ops@example.org"),
            ("password", "correct horse battery staple"),
        ])
        .send()
        .await
        .unwrap();
    let cookie = login.headers()[reqwest::header::SET_COOKIE]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let page = browser
        .get(format!("{}/portal/operator/backends", gw.base))
        .header(reqwest::header::COOKIE, cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let slurm = &page[page.find("id=\"slurm\"").expect("a Slurm section")..];
    assert!(!slurm.contains(">100<"), "the replaced job is gone");
    for want in [">101<", ">serving<", "node[1-2]", "slurm-101@node1"] {
        assert!(
            slurm.contains(want),
            "{want} missing from the Slurm section"
        );
    }
    gw.shutdown().await;
}

/// Two replicas: one runs the provisioner (one job submitted, not two), both serve the job's
/// backend, and when the leader leaves the other takes the lease and adopts the running job
/// instead of submitting another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_provisions_and_another_takes_over_when_it_leaves() {
    let Some(db) = fresh_db(Db::Postgres).await else {
        return;
    };
    let Some(redis) = fairgate_testkit::redis_url() else {
        return;
    };
    // Every replica derives the jobs' keys from the same secret.
    std::env::set_var(
        "FAIRGATE_SLURM_KEY_SECRET",
        "a-test-secret-shared-by-replicas",
    );
    let sim = Sim::start(SimConfig::instant("lead")).await;
    let fake = Arc::new(Fake::default());
    let dir = endpoints_dir("lease");
    *fake.dir.lock().unwrap() = dir.clone();
    *fake.next.lock().unwrap() = (sim.url.clone(), vec![format!("{}/health", sim.url)]);
    let prefix = format!("fgtest:slurm-lease:{}", std::process::id());
    let replica = |name: &str| {
        let mut m = model_cfg(1);
        m.min_replicas = 1;
        m.max_replicas = 1;
        let mut s = setup("lead", m, SlurmApi::Cli, dir.clone());
        let (redis, prefix, name) = (redis.clone(), prefix.clone(), name.to_owned());
        s = s.with(move |c| {
            c.slurm.leader_ttl_ms = 1_000;
            c.cluster = Some(fairgate::config::ClusterSection {
                redis_url: fairgate::config::Secret::new(redis.clone()),
                replica_id: Some(name.clone()),
                key_prefix: prefix.clone(),
                heartbeat_ms: 100,
                member_ttl_ms: 500,
                redis_timeout_ms: 500,
                lease_interval_ms: 50,
            });
        });
        s.slurm = Some(fake.clone());
        s
    };
    let a = TestGateway::start(replica("a"), &db.url).await;
    let b = TestGateway::start(replica("b"), &db.url).await;
    for gw in [&a, &b] {
        until(
            "the job's backend on every replica",
            Duration::from_secs(20),
            || async { backends(gw, "lead").await.len() == 1 },
        )
        .await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        fake.jobs.lock().unwrap().len(),
        1,
        "one leader, one submission"
    );
    let (_, v) = a.admin(reqwest::Method::GET, "/slurm", None).await;
    let leader = v["member"].as_str().unwrap_or_default().to_owned();
    assert!(leader.starts_with('a') || leader.starts_with('b'), "{v}");
    let (_, w) = b.admin(reqwest::Method::GET, "/slurm", None).await;
    assert_eq!(
        w["member"], v["member"],
        "both replicas show the leader's status"
    );
    let (leaving, staying) = if leader.starts_with('a') {
        (a, b)
    } else {
        (b, a)
    };
    leaving.shutdown().await;
    until(
        "the other replica leads",
        Duration::from_secs(10),
        || async {
            let (_, v) = staying.admin(reqwest::Method::GET, "/slurm", None).await;
            v["member"].as_str().is_some_and(|m| m != leader)
                && v["models"][0]["jobs"][0]["phase"] == "serving"
        },
    )
    .await;
    assert_eq!(
        fake.jobs.lock().unwrap().len(),
        1,
        "the job was adopted, not replaced"
    );
    assert!(fake.cancelled.lock().unwrap().is_empty());
    staying.shutdown().await;
}

/// A cluster that refuses every submission: the reason shows in the status, submissions back
/// off, and no more than `max_submits_per_hour` are tried; requests wait, then time out with a
/// clear error rather than hanging.
#[tokio::test]
async fn refused_submissions_back_off_within_the_hourly_limit() {
    let fake = Arc::new(Fake::default());
    *fake.refuse.lock().unwrap() = Some(
        "Job violates accounting/QOS policy (job submit limit, user's size and/or time limits)"
            .into(),
    );
    let dir = endpoints_dir("refused");
    *fake.dir.lock().unwrap() = dir.clone();
    let mut m = model_cfg(1);
    m.min_replicas = 1;
    m.retry_backoff_s = 1;
    m.max_submits_per_hour = 3;
    let mut s = setup("refused", m, SlurmApi::Cli, dir);
    s.slurm = Some(fake.clone());
    s.queue_timeout_ms = 1_000;
    let db = fresh_db(Db::Sqlite).await.unwrap();
    let gw = TestGateway::start(s, &db.url).await;
    gw.tenant("t", 1).await;
    let (_, key) = gw.key("t", None).await;
    // Back-off 1 s, then 2 s: the third try comes about 3 s in, then the hourly limit holds.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        fake.attempts.load(std::sync::atomic::Ordering::Relaxed),
        3,
        "three tries in 6 s: back-off, then the hourly limit"
    );
    let (st, v) = gw.admin(reqwest::Method::GET, "/slurm", None).await;
    assert_eq!(st, 200);
    let m = &v["models"][0];
    assert!(m["failures_in_row"].as_u64().unwrap() >= 3, "{v}");
    assert!(
        m["last_error"]
            .as_str()
            .unwrap()
            .contains("submissions in the last hour")
            && m["last_error"].as_str().unwrap().contains("QOS policy"),
        "{v}"
    );
    // Nothing serves: a request waits its queue time, then gets a clear error.
    let r = gw
        .post(&key, "/v1/chat/completions", chat("refused", 3, false))
        .await;
    assert!(r.status() == 503 || r.status() == 429, "{}", r.status());
    let body: Value = r.json().await.unwrap();
    assert!(body["error"]["message"].is_string(), "{body}");
    gw.shutdown().await;
}
