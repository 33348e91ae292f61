//! OpenID Connect sign-in against a real OpenID provider: `oidc-provider` (npm) started from
//! `tests/oidc/provider.mjs`, driven over plain HTTP with manual redirects and cookies: the
//! authorization-code flow with PKCE creates the user (tenant from the `groups` claim),
//! signs them in and finds them again by subject; a tampered, replayed or unbound `state`
//! gets a 4xx and no session.
//!
//! Needs `node` and `npm` (`npm ci` runs in `tests/oidc` when `node_modules` is missing).
//! Without them the test is skipped with a loud message, except under CI
//! (`fairgate_testkit::in_ci`), where it fails.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use common::portal::browser;
use common::*;
use fairgate::portal::oidc::OidcConfig;
use fairgate_sim::SimConfig;
use reqwest::{header, Method, Url};
use serde_json::Value;

const CLIENT_ID: &str = "fairgate-portal";
const CLIENT_SECRET: &str = "test-secret-3b1f0c9e2d7a4f56";
/// The gateway's public callback URL as registered at the provider; the "browser" below
/// reaches it at the gateway's real address, as through a reverse proxy.
const PUBLIC: &str = "http://gateway.test";
const EMAIL: &str = "sso.user@example.org";

fn provider_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/oidc")
}

/// `Some(reason)` when the provider cannot run here.
/// Installs the provider's packages once per test process: the tests run in parallel, and
/// two `npm ci` in one directory remove each other's files.
fn prepare_provider() -> Option<String> {
    static PREPARED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    PREPARED.get_or_init(prepare_provider_once).clone()
}

fn prepare_provider_once() -> Option<String> {
    let node = Command::new("node").arg("--version").output();
    if !node.is_ok_and(|o| o.status.success()) {
        return Some("`node` is not installed".into());
    }
    let dir = provider_dir();
    if !dir.join("node_modules/oidc-provider").exists() {
        let out = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                return Some(format!(
                    "`npm ci` in tests/oidc failed: {}",
                    String::from_utf8_lossy(&o.stderr)
                ))
            }
            Err(e) => return Some(format!("`npm` could not run: {e}")),
        }
    }
    None
}

/// The running provider; killed on drop.
struct Provider {
    child: Child,
    issuer: String,
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_provider() -> Option<Provider> {
    start_provider_with("true")
}

/// `email_verified`: what the provider says in that claim (`true`, `false`), or `omit`.
fn start_provider_with(email_verified: &str) -> Option<Provider> {
    if let Some(why) = prepare_provider() {
        fairgate_testkit::require("node and npm (for the OIDC provider)", &why);
        return None;
    }
    let mut child = Command::new("node")
        .arg("provider.mjs")
        .current_dir(provider_dir())
        .env("CLIENT_ID", CLIENT_ID)
        .env("CLIENT_SECRET", CLIENT_SECRET)
        .env("REDIRECT_URI", format!("{PUBLIC}/portal/oidc/callback"))
        .env("ACCOUNT_ID", "acct-42")
        .env("ACCOUNT_EMAIL", EMAIL)
        .env("GROUPS", "staff,lab")
        .env("EMAIL_VERIFIED", email_verified)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let issuer = loop {
        match lines.next() {
            Some(Ok(l)) => {
                if let Some(i) = l.strip_prefix("READY ") {
                    break i.trim().to_owned();
                }
            }
            other => panic!("the provider exited before it was ready: {other:?}"),
        }
    };
    // Keep draining its stdout: a closed pipe would kill it at its next log line.
    std::thread::spawn(move || {
        for l in lines.map_while(Result::ok) {
            eprintln!("[oidc-provider] {l}");
        }
    });
    Some(Provider { child, issuer })
}

/// The portal's OIDC settings for the test provider, plus `extra` TOML lines.
fn oidc_config(issuer: &str, extra: &str) -> OidcConfig {
    toml::from_str::<OidcConfig>(&format!(
        "issuer = \"{issuer}\"\nclient_id = \"{CLIENT_ID}\"\n\
         client_secret = \"{CLIENT_SECRET}\"\n\
         redirect_url = \"{PUBLIC}/portal/oidc/callback\"\n\
         scopes = [\"openid\", \"email\", \"profile\", \"groups\"]\n{extra}"
    ))
    .unwrap()
}

/// A cookie jar that ignores paths and domains (one provider, one gateway: one jar each).
#[derive(Default)]
struct Jar(BTreeMap<String, String>);

impl Jar {
    fn take(&mut self, resp: &reqwest::Response) {
        for v in resp.headers().get_all(header::SET_COOKIE) {
            let v = v.to_str().unwrap();
            let first = v.split(';').next().unwrap();
            let (name, value) = first.split_once('=').unwrap();
            let lower = v.to_ascii_lowercase();
            if value.is_empty() || lower.contains("max-age=0") || lower.contains("1970") {
                self.0.remove(name.trim());
            } else {
                self.0
                    .insert(name.trim().to_owned(), value.trim().to_owned());
            }
        }
    }
    fn header(&self) -> String {
        self.0
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }
    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }
}

fn location(resp: &reqwest::Response) -> String {
    resp.headers()
        .get(header::LOCATION)
        .unwrap_or_else(|| panic!("no Location on {} {}", resp.status(), resp.url()))
        .to_str()
        .unwrap()
        .to_owned()
}

/// Starts a sign-in at the gateway and walks the provider's redirects (login and consent
/// finish at once) until it sends the browser back to the gateway. Returns the gateway
/// jar (holding the state cookie) and the callback URL at the gateway's real address.
async fn to_callback(gw: &TestGateway, idp: &Provider) -> (Jar, String) {
    let b = browser();
    let mut gw_jar = Jar::default();
    let r = b
        .get(format!("{}/portal/oidc/start", gw.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303, "{}", r.text().await.unwrap());
    gw_jar.take(&r);
    let set = r.headers()[header::SET_COOKIE].to_str().unwrap().to_owned();
    assert!(set.starts_with("fg_oidc_state="), "{set}");
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Lax"),
        "{set}"
    );
    let mut url = location(&r);
    assert!(url.starts_with(&format!("{}/auth?", idp.issuer)), "{url}");
    assert!(url.contains("code_challenge_method=S256"), "{url}");
    assert!(url.contains("nonce="), "{url}");

    let mut idp_jar = Jar::default();
    let base = Url::parse(&idp.issuer).unwrap();
    for _ in 0..12 {
        if let Some(rest) = url.strip_prefix(PUBLIC) {
            return (gw_jar, format!("{}{rest}", gw.base));
        }
        let r = b
            .get(&url)
            .header(header::COOKIE, idp_jar.header())
            .send()
            .await
            .unwrap();
        idp_jar.take(&r);
        assert!(
            r.status().is_redirection(),
            "provider answered {} at {url}: {}",
            r.status(),
            r.text().await.unwrap()
        );
        url = base.join(&location(&r)).unwrap().to_string();
    }
    panic!("the provider never redirected back to the gateway");
}

async fn get_with(url: &str, cookie: &str) -> reqwest::Response {
    browser()
        .get(url)
        .header(header::COOKIE, cookie)
        .send()
        .await
        .unwrap()
}

fn has_session(resp: &reqwest::Response) -> bool {
    resp.headers().get_all(header::SET_COOKIE).iter().any(|v| {
        v.to_str().unwrap().starts_with("fg_session=")
            && !v.to_str().unwrap().starts_with("fg_session=;")
    })
}

async fn sso_users(gw: &TestGateway) -> Vec<Value> {
    let (s, v) = gw.admin(Method::GET, "/users", None).await;
    assert_eq!(s, 200, "{v}");
    v["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|u| u["email"] == EMAIL)
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_with_a_real_openid_provider() {
    let Some(idp) = start_provider() else {
        return;
    };
    let sim = Sim::start(SimConfig::instant("m")).await;
    let db = fresh_db(Db::Sqlite).await.unwrap();
    let issuer = idp.issuer.clone();
    let gw = TestGateway::start(
        Setup::one("m", &sim.url, 8).with(move |cfg| {
            cfg.portal.oidc = Some(oidc_config(
                &issuer,
                "tenant_claim = \"groups\"\noperator_values = [\"fairgate-operators\"]",
            ));
        }),
        &db.url,
    )
    .await;
    gw.tenant("lab", 1).await;

    // The sign-in page offers SSO.
    let page = browser()
        .get(format!("{}/portal/login", gw.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("/portal/oidc/start"), "{page}");

    // Tampered state: the cookie names one sign-in, the parameter another.
    let (jar, cb) = to_callback(&gw, &idp).await;
    let tampered = cb.replace("state=", "state=x");
    let r = get_with(&tampered, &jar.header()).await;
    assert_eq!(r.status(), 400);
    assert!(!has_session(&r));
    assert!(r.text().await.unwrap().contains("state mismatch"));
    // No state cookie at all (a callback link opened in another browser).
    let r = get_with(&cb, "").await;
    assert_eq!(r.status(), 400);
    assert!(!has_session(&r));
    assert!(sso_users(&gw).await.is_empty(), "no user without a sign-in");

    // The real thing.
    let (jar, cb) = to_callback(&gw, &idp).await;
    assert!(jar.get("fg_oidc_state").is_some());
    let r = get_with(&cb, &jar.header()).await;
    assert_eq!(r.status(), 303, "{}", r.text().await.unwrap());
    assert_eq!(r.headers()[header::LOCATION], "/portal");
    assert!(has_session(&r));
    let mut gw_jar = jar;
    gw_jar.take(&r);
    assert!(
        gw_jar.get("fg_oidc_state").is_none(),
        "state cookie cleared"
    );
    let session = format!("fg_session={}", gw_jar.get("fg_session").unwrap());
    let r = get_with(&format!("{}/portal", gw.base), &session).await;
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains(EMAIL));

    let users = sso_users(&gw).await;
    assert_eq!(users.len(), 1, "{users:?}");
    assert_eq!(
        users[0]["tenant"], "lab",
        "first group naming a tenant: {users:?}"
    );
    assert_eq!(users[0]["role"], "user");
    assert_eq!(
        users[0]["oidc_subject"],
        format!("{}|acct-42", idp.issuer),
        "{users:?}"
    );

    // Replaying the used callback: refused (one-time state), no new session.
    let r = get_with(&cb, &format!("fg_oidc_state={}", state_of(&cb))).await;
    assert_eq!(r.status(), 400);
    assert!(!has_session(&r));

    // Signing in again finds the same user by subject (the provider session is reused).
    let (jar, cb) = to_callback(&gw, &idp).await;
    let r = get_with(&cb, &jar.header()).await;
    assert_eq!(r.status(), 303);
    assert!(has_session(&r));
    assert_eq!(sso_users(&gw).await.len(), 1);

    gw.shutdown().await;
}

fn state_of(url: &str) -> String {
    Url::parse(url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "state")
        .map(|(_, v)| v.into_owned())
        .unwrap()
}

/// An IdP that omits `email_verified` (or says false) vouches for nothing: its e-mail neither
/// finds an existing account (a stranger could otherwise take over an operator's) nor creates
/// one. The sign-in is refused with a page that says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unverified_email_never_links_or_creates_an_account() {
    for claim in ["omit", "false"] {
        let Some(idp) = start_provider_with(claim) else {
            return;
        };
        let sim = Sim::start(SimConfig::instant("m")).await;
        let db = fresh_db(Db::Sqlite).await.unwrap();
        let issuer = idp.issuer.clone();
        let gw = TestGateway::start(
            Setup::one("m", &sim.url, 8).with(move |cfg| {
                cfg.portal.oidc = Some(oidc_config(&issuer, ""));
            }),
            &db.url,
        )
        .await;

        // No account with that e-mail: none is created.
        let (jar, cb) = to_callback(&gw, &idp).await;
        let r = get_with(&cb, &jar.header()).await;
        assert_eq!(r.status(), 400, "email_verified {claim}");
        assert!(!has_session(&r));
        let page = r.text().await.unwrap();
        assert!(page.contains("does not confirm"), "{page}");
        assert!(sso_users(&gw).await.is_empty(), "email_verified {claim}");

        // An operator's password account with that e-mail: never linked.
        let (s, v) = gw
            .admin(
                Method::POST,
                "/users",
                Some(serde_json::json!({"email": EMAIL, "password": "operator password 123", "role": "operator"})),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        let (jar, cb) = to_callback(&gw, &idp).await;
        let r = get_with(&cb, &jar.header()).await;
        assert_eq!(r.status(), 400, "email_verified {claim}");
        assert!(!has_session(&r));
        let users = sso_users(&gw).await;
        assert_eq!(users.len(), 1, "{users:?}");
        assert!(users[0]["oidc_subject"].is_null(), "linked: {users:?}");
        assert_eq!(users[0]["role"], "operator");
        gw.shutdown().await;
    }
}

/// With `[cluster]`, a sign-in started on one replica finishes on another (the load balancer
/// may send the provider's redirect anywhere), and only once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_in_started_on_one_replica_finishes_on_another() {
    let Some(idp) = start_provider() else {
        return;
    };
    let Some(db) = fresh_db(Db::Postgres).await else {
        return;
    };
    let Some(redis) = fairgate_testkit::redis_url() else {
        return;
    };
    let sim = Sim::start(SimConfig::instant("m")).await;
    let prefix = format!("fgtest:oidc:{}", std::process::id());
    let replica = |name: &str| {
        let (issuer, redis, prefix, name) = (
            idp.issuer.clone(),
            redis.clone(),
            prefix.clone(),
            name.to_owned(),
        );
        Setup::one("m", &sim.url, 8).with(move |cfg| {
            cfg.portal.oidc = Some(oidc_config(&issuer, "tenant_claim = \"groups\""));
            cfg.cluster = Some(fairgate::config::ClusterSection {
                redis_url: fairgate::config::Secret::new(redis.clone()),
                replica_id: Some(name.clone()),
                key_prefix: prefix.clone(),
                heartbeat_ms: 100,
                member_ttl_ms: 500,
                redis_timeout_ms: 500,
                lease_interval_ms: 50,
            });
        })
    };
    let a = TestGateway::start(replica("a"), &db.url).await;
    let b = TestGateway::start(replica("b"), &db.url).await;
    a.tenant("lab", 1).await;
    let (jar, cb) = to_callback(&a, &idp).await;
    let on_b = cb.replacen(&a.base, &b.base, 1);
    assert_ne!(on_b, cb);
    let r = get_with(&on_b, &jar.header()).await;
    assert_eq!(r.status(), 303, "{}", r.text().await.unwrap());
    assert!(has_session(&r));
    // Used once: the same callback on the replica that started it finds nothing.
    let r = get_with(&cb, &jar.header()).await;
    assert_eq!(r.status(), 400);
    assert!(!has_session(&r));
    a.shutdown().await;
    b.shutdown().await;
    db.cleanup().await;
}
