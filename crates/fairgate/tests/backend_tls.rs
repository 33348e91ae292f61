//! Backend credentials and TLS (issue 10): a backend's API key goes with every request the
//! gateway sends it (vLLM's `--api-key`), and `https://` backends are verified against the
//! configured CA, so a vLLM port reachable by others is useless without the key.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use fairgate::config::{Config, Secret};
use fairgate_sim::SimConfig;
use reqwest::Method;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

const KEY: &str = "sk-backend-0123456789";

fn sim_with_key() -> SimConfig {
    SimConfig {
        api_key: Some(KEY.to_owned()),
        ..SimConfig::instant("m")
    }
}

#[tokio::test]
async fn simulator_requires_its_api_key_like_vllm() {
    let sim = Sim::start(sim_with_key()).await;
    let http = reqwest::Client::new();
    let chat_url = format!("{}/v1/chat/completions", sim.url);
    let resp = http
        .post(&chat_url)
        .json(&chat("m", 4, false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.text().await.unwrap(), r#"{"error":"Unauthorized"}"#);
    let resp = http
        .post(&chat_url)
        .bearer_auth("sk-wrong")
        .json(&chat("m", 4, false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let resp = http
        .get(format!("{}/v1/models", sim.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let resp = http
        .post(&chat_url)
        .bearer_auth(KEY)
        .json(&chat("m", 4, false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // As in vLLM, only /v1/* is guarded.
    for path in ["/health", "/metrics"] {
        let resp = http.get(format!("{}{path}", sim.url)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
    }
}

#[tokio::test]
async fn gateway_sends_the_backend_key_from_config_or_environment() {
    let a = Sim::start(sim_with_key()).await;
    let b = Sim::start(sim_with_key()).await;
    // A variable name of this test only: tests in this binary run in parallel threads.
    let var = format!("FAIRGATE_TEST_BACKEND_KEY_{}", std::process::id());
    std::env::set_var(&var, KEY);
    let db = fresh_db(Db::Sqlite).await.unwrap();
    let var2 = var.clone();
    let gw = TestGateway::start(
        Setup::many("m", &[&a.url, &b.url], 4).with(move |c| {
            c.routing.strategy = fairgate::router::Strategy::RoundRobin;
            c.routing.max_attempts = 1;
            c.models[0].backends[0].api_key = Some(Secret::new(KEY));
            c.models[0].backends[1].api_key_env = Some(var2.clone());
        }),
        &db.url,
    )
    .await;
    gw.tenant("t", 1).await;
    let (_, key) = gw.key("t", None).await;
    for _ in 0..6 {
        let resp = gw
            .post(&key, "/v1/chat/completions", chat("m", 4, false))
            .await;
        assert_eq!(resp.status(), 200);
    }
    // Both backends served (each with its own way of getting the key).
    assert!(a.sim.stats().prompt_tokens_total > 0 && b.sim.stats().prompt_tokens_total > 0);
    // The key is never shown: not in the admin API, not in the config's Debug.
    let (s, v) = gw.admin(Method::GET, "/models/m/backends", None).await;
    assert_eq!(s, 200);
    assert!(!v.to_string().contains(KEY), "{v}");
    for be in v["backends"].as_array().unwrap() {
        assert_eq!(be["state"], "healthy", "{v}");
    }
    let mut c = Config::load(None, Vec::<(String, String)>::new()).unwrap();
    c.models = vec![fairgate::config::ModelConfig::new(
        "m",
        vec![fairgate::config::BackendConfig {
            api_key: Some(Secret::new(KEY)),
            ..fairgate::config::BackendConfig::new(a.url.clone(), 1)
        }],
    )];
    c.metrics_token = Some(Secret::new("metrics-token-0123456789"));
    let dump = format!("{c:?}");
    assert!(
        !dump.contains(KEY) && !dump.contains("metrics-token-0123456789"),
        "{dump}"
    );
    gw.shutdown().await;
    std::env::remove_var(&var);
}

#[test]
fn key_settings_are_validated() {
    let base = |extra: &str| {
        format!(
            "[[models]]\nname = \"m\"\n[[models.backends]]\nurl = \"http://127.0.0.1:8000\"\n{extra}\n"
        )
    };
    let load = |t: &str| {
        Config::from_toml_str(
            t,
            std::path::Path::new("t.toml"),
            Vec::<(String, String)>::new(),
        )
    };
    let e = load(&base("api_key_env = \"FAIRGATE_TEST_SURELY_UNSET_VAR\""))
        .unwrap_err()
        .to_string();
    assert!(e.contains("models[0].backends[0].api_key_env"), "{e}");
    let e = load(&base("api_key = \"k1\"\napi_key_env = \"PATH\""))
        .unwrap_err()
        .to_string();
    assert!(e.contains("not both"), "{e}");
    let e = load(&base("ca_file = \"/nonexistent/ca.pem\""))
        .unwrap_err()
        .to_string();
    assert!(e.contains("ca_file"), "{e}");
    let e = load(&base("name = \"has space\"")).unwrap_err().to_string();
    assert!(e.contains("models[0].backends[0].name"), "{e}");
    // Credentials in the URL are refused without echoing them.
    let e =
        load("[[models]]\nname = \"m\"\n[[models.backends]]\nurl = \"https://u:hunter2@h:1\"\n")
            .unwrap_err()
            .to_string();
    assert!(e.contains("credentials") && !e.contains("hunter2"), "{e}");
    let c = load(&base("api_key = \"k1\"")).unwrap();
    assert_eq!(c.models[0].backends[0].display_name(), "127.0.0.1:8000");
    let c = Config::from_toml_str(
        "",
        std::path::Path::new("t.toml"),
        vec![(
            "FAIRGATE_METRICS_TOKEN".to_owned(),
            "metrics-token-from-env-0123".to_owned(),
        )],
    )
    .unwrap();
    assert_eq!(
        c.metrics_token.as_ref().map(Secret::expose),
        Some("metrics-token-from-env-0123")
    );
    let c = load("metrics_token = \"short\"\n");
    assert!(c.unwrap_err().to_string().contains("metrics_token"));
}

/// A CA and a server certificate for 127.0.0.1 / localhost signed by it.
struct Pki {
    ca_pem: String,
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "fairgate test CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let leaf =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf_cert = leaf.signed_by(&leaf_key, &ca_cert, &ca_key).unwrap();
    Pki {
        ca_pem: ca_cert.pem(),
        cert: leaf_cert.der().clone(),
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
    }
}

/// TLS in front of a plain-HTTP simulator, counting handshakes.
struct Terminator {
    url: String,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Terminator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn terminate(sim_url: &str, pki: &Pki) -> Terminator {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![pki.cert.clone()], pki.key.clone_key())
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let target = sim_url.trim_start_matches("http://").to_owned();
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (ok2, failed2) = (ok.clone(), failed.clone());
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, target, ok, failed) = (
                acceptor.clone(),
                target.clone(),
                ok2.clone(),
                failed2.clone(),
            );
            conns.spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    failed.fetch_add(1, Ordering::SeqCst);
                    return;
                };
                ok.fetch_add(1, Ordering::SeqCst);
                if let Ok(mut up) = tokio::net::TcpStream::connect(&target).await {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
                }
            });
        }
    });
    Terminator {
        url,
        ok,
        failed,
        task,
    }
}

#[tokio::test]
async fn https_backend_works_with_the_right_ca_and_fails_with_a_wrong_one() {
    let right = pki();
    let wrong = pki();
    let dir = tempfile::tempdir().unwrap();
    let ca_right = dir.path().join("ca.pem");
    let ca_wrong = dir.path().join("other-ca.pem");
    std::fs::write(&ca_right, &right.ca_pem).unwrap();
    std::fs::write(&ca_wrong, &wrong.ca_pem).unwrap();

    // Three models, each behind its own TLS terminator (certificates from `right`):
    // `own` trusts the CA per backend, `shared` through upstream.ca_file, `bad` a wrong CA
    // (and the API key travels over TLS too).
    let sims = [
        Sim::start(SimConfig::instant("own")).await,
        Sim::start(SimConfig::instant("shared")).await,
        Sim::start(SimConfig {
            api_key: Some(KEY.to_owned()),
            ..SimConfig::instant("bad")
        })
        .await,
    ];
    let mut terms = Vec::new();
    for s in &sims {
        terms.push(terminate(&s.url, &right).await);
    }
    let db = fresh_db(Db::Sqlite).await.unwrap();
    let mut setup = Setup::one("own", &terms[0].url, 4);
    setup
        .models
        .push(("shared".into(), vec![(terms[1].url.clone(), 4)]));
    setup
        .models
        .push(("bad".into(), vec![(terms[2].url.clone(), 4)]));
    let (r, w) = (ca_right.clone(), ca_wrong.clone());
    let gw = TestGateway::start(
        setup.with(move |c| {
            c.routing.max_attempts = 1;
            c.upstream.ca_file = Some(r.clone());
            c.models[0].backends[0].ca_file = Some(r.clone());
            c.models[2].backends[0].ca_file = Some(w.clone());
            c.models[2].backends[0].api_key = Some(Secret::new(KEY));
        }),
        &db.url,
    )
    .await;
    gw.tenant("t", 1).await;
    let (_, key) = gw.key("t", None).await;
    for model in ["own", "shared"] {
        let resp = gw
            .post(&key, "/v1/chat/completions", chat(model, 4, false))
            .await;
        assert_eq!(resp.status(), 200, "{model}");
        let v: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(v["model"], model);
    }
    assert!(terms[0].ok.load(Ordering::SeqCst) > 0);
    assert!(terms[1].ok.load(Ordering::SeqCst) > 0);

    let resp = gw
        .post(&key, "/v1/chat/completions", chat("bad", 4, false))
        .await;
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap();
    // 502 when the request itself met the bad certificate, 503 when the health probe had
    // already ejected the backend for it: never an answer from behind an unverified peer.
    assert!(status == 502 || status == 503, "{status} {body}");
    assert!(
        !body.contains("127.0.0.1") && !body.contains("https://"),
        "{body}"
    );
    assert_eq!(sims[2].sim.stats().prompt_tokens_total, 0);
    assert_eq!(terms[2].ok.load(Ordering::SeqCst), 0);
    // The handshake was tried (the request or the probe) and refused by the gateway.
    for _ in 0..100 {
        if terms[2].failed.load(Ordering::SeqCst) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(terms[2].failed.load(Ordering::SeqCst) > 0);
    gw.shutdown().await;
}

/// A gateway serving from a config file, reloaded through the admin API.
async fn gateway_from_file(path: &std::path::Path) -> (String, tokio::sync::oneshot::Sender<()>) {
    let config = Config::load(Some(path), std::env::vars()).unwrap();
    let gw = fairgate::server::Gateway::build_with_path(config, Some(path.to_owned()))
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(gw.serve(listener, async move {
        let _ = rx.await;
    }));
    (base, tx)
}

#[tokio::test]
async fn reload_rereads_the_key_and_drops_the_series_of_backends_that_left() {
    let a = Sim::start(sim_with_key()).await;
    let b = Sim::start(SimConfig::instant("m")).await;
    let var = format!("FAIRGATE_TEST_RELOAD_KEY_{}", std::process::id());
    std::env::set_var(&var, "sk-not-the-right-one");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fairgate.toml");
    let file = |with_b: bool| {
        let mut t = format!(
            "listen = \"127.0.0.1:0\"\ndatabase = \"sqlite://{db}\"\ndata_dir = \"{data}\"\n\
             admin_token = \"{ADMIN}\"\n[routing]\nmax_attempts = 1\nstrategy = \"round_robin\"\n\
             [[models]]\nname = \"m\"\n\
             [[models.backends]]\nurl = \"{a}\"\nname = \"keyed\"\napi_key_env = \"{var}\"\n",
            db = dir.path().join("fg.db").display(),
            data = dir.path().display(),
            a = a.url,
        );
        if with_b {
            t.push_str(&format!(
                "[[models.backends]]\nurl = \"{}\"\nname = \"open\"\n",
                b.url
            ));
        }
        t
    };
    std::fs::write(&path, file(true)).unwrap();
    let (base, stop) = gateway_from_file(&path).await;
    let http = reqwest::Client::new();
    let admin = |method: Method, p: &str| {
        http.request(method, format!("{base}/admin/v1{p}"))
            .bearer_auth(ADMIN)
    };
    let resp = admin(Method::POST, "/tenants")
        .json(&serde_json::json!({"name": "t"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let v: serde_json::Value = admin(Method::POST, "/keys")
        .json(&serde_json::json!({"tenant": "t", "name": "k"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = v["key"].as_str().unwrap().to_owned();
    let send = || {
        http.post(format!("{base}/v1/chat/completions"))
            .bearer_auth(&key)
            .json(&chat("m", 4, false))
            .send()
    };
    let metrics = || async {
        http.get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    // The wrong key: the keyed backend refuses the gateway.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(send().await.unwrap().status().as_u16());
    }
    // The backend's 401 is the gateway's fault, not the client's: a 502.
    assert!(statuses.contains(&502), "{statuses:?}");
    assert!(!statuses.contains(&401), "{statuses:?}");
    assert_eq!(a.sim.stats().prompt_tokens_total, 0);
    assert!(metrics().await.contains(r#"backend="open""#));

    // The key rotated in the environment and `open` dropped from the file: after a reload
    // every request is served by `keyed`, and `open`'s series are gone.
    std::env::set_var(&var, KEY);
    std::fs::write(&path, file(false)).unwrap();
    let resp = admin(Method::POST, "/reload").send().await.unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    let mut text = String::new();
    for _ in 0..100 {
        text = metrics().await;
        if !text.contains(r#"backend="open""#) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!text.contains(r#"backend="open""#), "{text}");
    // The probe may have ejected `keyed` meanwhile (401 is not a health failure, but be
    // patient with a trial): within a few tries it serves.
    let mut ok = false;
    for _ in 0..150 {
        if send().await.unwrap().status() == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok);
    assert!(a.sim.stats().prompt_tokens_total > 0);
    let _ = stop.send(());
    std::env::remove_var(&var);
}
