//! The portal's defences, over HTTP against a real gateway: security headers on every answer
//! (errors and redirects too) and no inline script or style in any page; the sign-in throttle
//! (per account and address, per address, with `Retry-After`); password hashing bounded by its
//! pool (never more at once than its size; 503 at once when saturated); `Secure` cookies unless
//! served over plain loopback; off-boarding (a disabled person's keys stop at once on this
//! replica and within the refresh on others, and come back when re-enabled).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::portal::{browser, csrf_of, post_form};
use common::*;
use fairgate::config::{Config, SecureCookies};
use fairgate::server::Gateway;
use fairgate_sim::SimConfig;
use reqwest::{header, Method};
use serde_json::{json, Value};
use tokio::sync::oneshot;

const PASSWORD: &str = "correct horse battery staple";
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; object-src 'none'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

async fn user(gw: &TestGateway, email: &str, role: &str, tenant: Option<&str>) -> String {
    let (s, v) = gw
        .admin(
            Method::POST,
            "/users",
            Some(json!({"email": email, "password": PASSWORD, "role": role, "tenant": tenant})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    v["id"].as_str().unwrap().to_owned()
}

async fn sign_in_at(base: &str, email: &str, password: &str) -> reqwest::Response {
    browser()
        .post(format!("{base}/portal/login"))
        .form(&[("email", email), ("password", password)])
        .send()
        .await
        .unwrap()
}

async fn sign_in(gw: &TestGateway, email: &str, password: &str) -> reqwest::Response {
    sign_in_at(&gw.base, email, password).await
}

fn set_cookie(resp: &reqwest::Response) -> String {
    resp.headers()
        .get(header::SET_COOKIE)
        .unwrap_or_else(|| panic!("no Set-Cookie ({})", resp.status()))
        .to_str()
        .unwrap()
        .to_owned()
}

fn session_cookie(resp: &reqwest::Response) -> String {
    set_cookie(resp).split(';').next().unwrap().to_owned()
}

async fn get(gw: &TestGateway, cookie: &str, path: &str) -> reqwest::Response {
    browser()
        .get(format!("{}{path}", gw.base))
        .header(header::COOKIE, cookie)
        .send()
        .await
        .unwrap()
}

fn secret_of(page: &str) -> String {
    let at = page.find("fgk_").expect("a key secret on the page");
    page[at..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

/// Everything in a page that a CSP without `unsafe-inline` would block (or that would be
/// script by another route): `<script>` without `src`, `<style>`, `on…=` handlers, `style=`
/// attributes, `javascript:` URLs.
fn inline_code(page: &str) -> Vec<String> {
    let lower = page.to_ascii_lowercase();
    let mut found = Vec::new();
    let mut i = 0;
    while let Some(at) = lower[i..].find('<') {
        let start = i + at;
        let end = lower[start..]
            .find('>')
            .map_or(lower.len(), |e| start + e + 1);
        let tag = &lower[start..end];
        if tag.starts_with("<script") && !tag.contains(" src=") {
            found.push(format!("inline script: {tag}"));
        }
        if tag.starts_with("<style") {
            found.push(format!("style element: {tag}"));
        }
        for (j, _) in tag.match_indices(|c: char| c.is_ascii_whitespace()) {
            let rest = &tag[j + 1..];
            let Some(name) = rest.strip_prefix("on") else {
                if rest.starts_with("style=") {
                    found.push(format!("style attribute: {tag}"));
                }
                continue;
            };
            let n = name.bytes().take_while(u8::is_ascii_lowercase).count();
            if n > 0 && name[n..].trim_start().starts_with('=') {
                found.push(format!("event handler: {tag}"));
            }
        }
        i = end;
    }
    if lower.contains("javascript:") {
        found.push("javascript: URL".into());
    }
    found
}

#[test]
fn the_inline_code_scanner_finds_what_it_must() {
    assert!(
        inline_code("<p>fine</p><script src=\"/portal/static/app.js\" defer></script>").is_empty()
    );
    assert_eq!(inline_code("<script>alert(1)</script>").len(), 1);
    assert_eq!(inline_code("<button onclick=\"x()\">b</button>").len(), 1);
    assert_eq!(inline_code("<form\nonsubmit = \"x()\">").len(), 1);
    assert_eq!(inline_code("<p style=\"color:red\">").len(), 1);
    assert_eq!(inline_code("<style>p{}</style>").len(), 1);
    assert_eq!(inline_code("<a href=\"javascript:x()\">").len(), 1);
    // Text that merely mentions the words is fine.
    assert!(inline_code("<p>turn on the style = fun</p><td data-label=\"online\">").is_empty());
}

/// The four headers every portal answer carries.
fn assert_security_headers(what: &str, r: &reqwest::Response) {
    let h = r.headers();
    let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
    assert_eq!(get("content-security-policy"), CSP, "{what}");
    assert_eq!(get("x-frame-options"), "DENY", "{what}");
    assert_eq!(get("x-content-type-options"), "nosniff", "{what}");
    assert_eq!(get("referrer-policy"), "same-origin", "{what}");
}

/// Checks the headers and, for HTML, that the page has no inline code; returns the body.
async fn checked(what: &str, r: reqwest::Response, status: u16) -> String {
    assert_eq!(r.status().as_u16(), status, "{what}");
    assert_security_headers(what, &r);
    let html = r
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.to_str().unwrap().starts_with("text/html"));
    let body = r.text().await.unwrap();
    if html {
        let bad = inline_code(&body);
        assert!(bad.is_empty(), "{what}: {bad:?}");
    }
    body
}

#[tokio::test]
async fn every_portal_answer_has_security_headers_and_no_inline_script_or_style() {
    let sim = Sim::start(SimConfig::instant("m")).await;
    let db = fresh_db(Db::Sqlite).await.unwrap();
    let gw = TestGateway::start(Setup::one("m", &sim.url, 8), &db.url).await;
    gw.tenant("lab", 1).await;
    user(&gw, "olga@example.org", "operator", Some("lab")).await;
    user(&gw, "uma@example.org", "user", Some("lab")).await;

    // Signed out: the sign-in page, the redirect to it, a failed sign-in, a 404, a body that
    // is not a form.
    checked("login page", get(&gw, "", "/portal/login").await, 200).await;
    checked("redirect to sign-in", get(&gw, "", "/portal").await, 303).await;
    checked(
        "wrong password",
        sign_in(&gw, "olga@example.org", "not the password").await,
        401,
    )
    .await;
    checked(
        "unknown page",
        get(&gw, "", "/portal/no/such/page").await,
        404,
    )
    .await;
    let r = browser()
        .post(format!("{}/portal/login", gw.base))
        .header(header::CONTENT_TYPE, "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error(), "{}", r.status());
    assert_security_headers("rejected body", &r);

    let ok = sign_in(&gw, "olga@example.org", PASSWORD).await;
    assert_security_headers("sign-in redirect", &ok);
    let cookie = session_cookie(&ok);
    let keys = checked("keys", get(&gw, &cookie, "/portal").await, 200).await;
    assert!(
        keys.contains("<script src=\"/portal/static/app.js?v="),
        "{keys}"
    );
    assert!(keys.contains("<link rel=\"stylesheet\" href=\"/portal/static/app.css?v="));
    let csrf = csrf_of(&keys);
    for path in [
        "/portal/usage",
        "/portal/history",
        "/portal/models",
        "/portal/playground",
        "/portal/tenant",
        "/portal/tenant?tenant=lab",
        "/portal/operator",
        "/portal/operator/tenants",
        "/portal/operator/tenants/lab",
        "/portal/operator/backends",
        "/portal/audit",
        "/portal/api/scheduler",
        "/portal/api/backends",
    ] {
        checked(path, get(&gw, &cookie, path).await, 200).await;
    }
    let created = checked(
        "key created",
        post_form(
            &gw,
            &cookie,
            "/portal/keys",
            &[("csrf", &csrf), ("name", "<script>alert(1)</script>")],
        )
        .await,
        200,
    )
    .await;
    // The copy button is wired by app.js, not by an inline handler.
    assert!(created.contains("data-copy=\"secret\""), "{created}");
    checked(
        "bad request",
        post_form(
            &gw,
            &cookie,
            "/portal/keys",
            &[("csrf", &csrf), ("name", "")],
        )
        .await,
        400,
    )
    .await;
    checked(
        "missing csrf",
        post_form(&gw, &cookie, "/portal/keys", &[("name", "x")]).await,
        403,
    )
    .await;
    checked(
        "operator tenant that does not exist",
        get(&gw, &cookie, "/portal/operator/tenants/nope").await,
        404,
    )
    .await;
    let backends = checked(
        "backends",
        get(&gw, &cookie, "/portal/operator/backends").await,
        200,
    )
    .await;
    // Remove asks first through app.js (data-confirm), not an inline onsubmit.
    assert!(
        backends.contains("data-confirm=\"Remove this backend?"),
        "{backends}"
    );

    let r = sign_in(&gw, "uma@example.org", PASSWORD).await;
    let user_cookie = session_cookie(&r);
    checked(
        "forbidden",
        get(&gw, &user_cookie, "/portal/operator").await,
        403,
    )
    .await;

    // The one script and stylesheet: right types, cacheable, and what the pages need.
    let js = get(&gw, "", "/portal/static/app.js").await;
    assert_security_headers("app.js", &js);
    assert_eq!(
        js.headers()[header::CONTENT_TYPE],
        "text/javascript; charset=utf-8"
    );
    assert!(js.headers()[header::CACHE_CONTROL]
        .to_str()
        .unwrap()
        .contains("max-age="));
    let js = js.text().await.unwrap();
    for needle in [
        "/v1/chat/completions",
        "/portal/api/scheduler",
        "/portal/api/backends",
        "data-copy",
        "dataset.confirm",
    ] {
        assert!(js.contains(needle), "app.js lacks {needle}");
    }
    let css = get(&gw, "", "/portal/static/app.css").await;
    assert_eq!(
        css.headers()[header::CONTENT_TYPE],
        "text/css; charset=utf-8"
    );
    assert!(css.text().await.unwrap().contains(".bar rect"));
    gw.shutdown().await;
}

fn retry_after(r: &reqwest::Response) -> u64 {
    r.headers()
        .get(header::RETRY_AFTER)
        .expect("Retry-After")
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn sign_in_is_throttled_per_account_and_per_address_before_hashing() {
    let sim = Sim::start(SimConfig::instant("m")).await;
    let db = fresh_db(Db::Sqlite).await.unwrap();
    let gw = TestGateway::start(Setup::one("m", &sim.url, 8), &db.url).await;
    user(&gw, "alice@example.org", "user", None).await;
    user(&gw, "bob@example.org", "user", None).await;
    user(&gw, "carol@example.org", "user", None).await;

    // Five wrong passwords for alice from this address...
    for _ in 0..5 {
        let r = sign_in(&gw, "alice@example.org", "wrong password!!").await;
        assert_eq!(r.status(), 401);
    }
    // ...and this address may not try alice again, even with her password, for the window.
    let r = sign_in(&gw, "Alice@Example.org", PASSWORD).await;
    assert_eq!(r.status(), 429);
    let wait = retry_after(&r);
    assert!((1..=900).contains(&wait), "{wait}");
    assert!(r.headers().get(header::SET_COOKIE).is_none());
    let page = checked("throttled", r, 429).await;
    assert!(
        page.contains("Too many failed sign-ins for this account"),
        "{page}"
    );
    // Bob, from the same address, is not affected.
    assert_eq!(
        sign_in(&gw, "bob@example.org", PASSWORD).await.status(),
        303
    );

    // Guessing across random accounts: 20 failures per address, then the address waits,
    // for every account that never signed in from it (bob's success did not wipe the
    // address's record)...
    for i in 0..15 {
        let r = sign_in(&gw, &format!("nobody{i}@example.org"), "wrong password!!").await;
        assert_eq!(r.status(), 401, "failure {i}");
    }
    let r = sign_in(&gw, "carol@example.org", PASSWORD).await;
    assert_eq!(r.status(), 429);
    assert!((1..=900).contains(&retry_after(&r)));
    let page = r.text().await.unwrap();
    assert!(page.contains("from your network address"), "{page}");
    // ...while bob, who signed in from here before, is not shut out by the guesser.
    assert_eq!(
        sign_in(&gw, "bob@example.org", PASSWORD).await.status(),
        303
    );
    gw.shutdown().await;
}

async fn sign_in_from(
    gw: &TestGateway,
    email: &str,
    password: &str,
    addr: &str,
) -> reqwest::Response {
    browser()
        .post(format!("{}/portal/login", gw.base))
        .header("x-forwarded-for", addr)
        .form(&[("email", email), ("password", password)])
        .send()
        .await
        .unwrap()
}

/// Behind a trusted proxy (here: loopback), clients are told apart by `X-Forwarded-For`. A
/// stranger guessing at the operator's account from one address, or from fifty, never keeps
/// the operator out: their own address is untouched, and a distributed guess only slows the
/// account down for strangers.
#[tokio::test]
async fn an_attacker_elsewhere_cannot_keep_the_owner_out() {
    let sim = Sim::start(SimConfig::instant("m")).await;
    let db = fresh_db(Db::Sqlite).await.unwrap();
    let gw = TestGateway::start(
        Setup::one("m", &sim.url, 8).with(|c| {
            c.trusted_proxies =
                fairgate::client_addr::TrustedProxies::parse(&["127.0.0.1"]).unwrap();
        }),
        &db.url,
    )
    .await;
    user(&gw, "olga@example.org", "operator", None).await;
    let (home, attacker) = ("198.51.100.1", "203.0.113.7");
    // The owner has signed in from home before.
    assert_eq!(
        sign_in_from(&gw, "olga@example.org", PASSWORD, home)
            .await
            .status(),
        303
    );

    // One attacker address: locked out of olga's account after five guesses...
    for _ in 0..5 {
        let r = sign_in_from(&gw, "olga@example.org", "a guess at it!!", attacker).await;
        assert_eq!(r.status(), 401);
    }
    let r = sign_in_from(&gw, "olga@example.org", PASSWORD, attacker).await;
    assert_eq!(
        r.status(),
        429,
        "the attacker's address is locked out of the account"
    );
    // ...while olga signs in from home, and from a new place.
    assert_eq!(
        sign_in_from(&gw, "olga@example.org", PASSWORD, home)
            .await
            .status(),
        303
    );
    assert_eq!(
        sign_in_from(&gw, "olga@example.org", PASSWORD, "198.51.100.2")
            .await
            .status(),
        303
    );

    // Many attacker addresses, each under the per-address limit: the account is slowed for
    // strangers (one try per few seconds, 429 with a short Retry-After), never locked.
    for n in 0..12 {
        for _ in 0..3 {
            let _ = sign_in_from(
                &gw,
                "olga@example.org",
                "a guess at it!!",
                &format!("192.0.2.{n}"),
            )
            .await;
        }
    }
    let mut slowed = None;
    for n in 100..110 {
        let r = sign_in_from(
            &gw,
            "olga@example.org",
            "a guess at it!!",
            &format!("192.0.2.{n}"),
        )
        .await;
        if r.status() == 429 {
            slowed = Some(retry_after(&r));
            break;
        }
    }
    let wait = slowed.expect("a distributed guess is slowed down");
    assert!((1..=5).contains(&wait), "{wait}");
    // Olga, from where she signed in before, goes straight through.
    assert_eq!(
        sign_in_from(&gw, "olga@example.org", PASSWORD, home)
            .await
            .status(),
        303
    );
    // A forged X-Forwarded-For from an untrusted peer is not believed: not tested here (the
    // test client is the trusted proxy); see client_addr's own tests.
    gw.shutdown().await;
}

/// A gateway whose state the test can look into (the hashing pool's counters).
struct Held {
    base: String,
    portal: Arc<fairgate::portal::PortalState>,
    stop: Option<oneshot::Sender<()>>,
    join: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Held {
    async fn start(sim_url: &str, db_url: &str, tweak: impl Fn(&mut Config)) -> Held {
        let mut config = Config::load(None, Vec::<(String, String)>::new()).unwrap();
        config.listen = "127.0.0.1:0".into();
        config.database = db_url.to_owned();
        config.admin_token = Some(ADMIN.to_owned());
        config.data_dir = std::env::temp_dir();
        config.models = vec![fairgate::config::ModelConfig::new(
            "m".to_owned(),
            vec![fairgate::config::BackendConfig::new(sim_url.to_owned(), 8)],
        )];
        tweak(&mut config);
        config.validate().unwrap();
        let gw = Gateway::build(config).await.unwrap();
        let portal = gw.portal().clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let join = tokio::spawn(gw.serve(listener, async move {
            let _ = rx.await;
        }));
        Held {
            base,
            portal,
            stop: Some(tx),
            join: Some(join),
        }
    }

    async fn shutdown(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(j) = self.join.take() {
            j.await.unwrap().unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn password_hashing_is_bounded_and_answers_503_when_saturated() {
    let sim = Sim::start(SimConfig::instant("m")).await;
    let db = fresh_db(Db::Sqlite).await.unwrap();
    let gw = Held::start(&sim.url, &db.url, |c| c.portal.password_hash_workers = 2).await;
    let (s, v) = reqwest::Client::new()
        .post(format!("{}/admin/v1/users", gw.base))
        .bearer_auth(ADMIN)
        .json(&json!({"email": "kim@example.org", "password": PASSWORD, "role": "user"}))
        .send()
        .await
        .map(|r| (r.status(), r))
        .unwrap();
    assert_eq!(s, 201, "{:?}", v.text().await);
    let pool = &gw.portal.portal.hashing;
    assert_eq!(pool.size(), 2);

    // Parallel sign-ins with random e-mails (each a dummy verify): never more than the
    // pool's size hashing at once.
    let tries: Vec<_> = (0..12)
        .map(|i| {
            let base = gw.base.clone();
            tokio::spawn(async move {
                sign_in_at(&base, &format!("random{i}@example.org"), "wrong password!!")
                    .await
                    .status()
                    .as_u16()
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tries {
        statuses.push(t.await.unwrap());
    }
    assert!(
        statuses.iter().all(|s| *s == 401 || *s == 503),
        "{statuses:?}"
    );
    assert!(statuses.contains(&401), "{statuses:?}");
    assert!((1..=2).contains(&pool.peak()), "peak {}", pool.peak());

    // Saturated (every slot held): sign-ins are refused with 503 and Retry-After, and none
    // queues past the bounded wait.
    let held = pool.occupy_all().await;
    let tries: Vec<_> = (0..24)
        .map(|_| {
            let base = gw.base.clone();
            tokio::spawn(async move {
                let r = sign_in_at(&base, "kim@example.org", PASSWORD).await;
                let ra = r.headers().get(header::RETRY_AFTER).is_some();
                let ok_headers = r.headers().get("content-security-policy").is_some();
                (r.status().as_u16(), ra, ok_headers)
            })
        })
        .collect();
    for t in tries {
        assert_eq!(t.await.unwrap(), (503, true, true));
    }
    drop(held);
    // Busy answers cost the account nothing: kim signs in.
    assert_eq!(
        sign_in_at(&gw.base, "kim@example.org", PASSWORD)
            .await
            .status(),
        303
    );
    assert!(pool.peak() <= 2, "peak {}", pool.peak());
    gw.shutdown().await;
}

/// Signs kim in on a fresh gateway configured by `tweak`; returns the session `Set-Cookie`.
async fn cookie_with(
    sim: &Sim,
    tweak: impl Fn(&mut Config) + Send + Sync + 'static,
    forwarded_https: bool,
) -> String {
    let db = fresh_db(Db::Sqlite).await.unwrap();
    let gw = TestGateway::start(Setup::one("m", &sim.url, 8).with(tweak), &db.url).await;
    user(&gw, "kim@example.org", "user", None).await;
    let mut req = browser()
        .post(format!("{}/portal/login", gw.base))
        .form(&[("email", "kim@example.org"), ("password", PASSWORD)]);
    if forwarded_https {
        req = req.header("x-forwarded-proto", "https");
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 303);
    let set = set_cookie(&r);
    // Signing out clears the cookie with the same attributes.
    let cookie = set.split(';').next().unwrap().to_owned();
    let page = get(&gw, &cookie, "/portal").await.text().await.unwrap();
    let mut out = browser()
        .post(format!("{}/portal/logout", gw.base))
        .header(header::COOKIE, &cookie)
        .form(&[("csrf", csrf_of(&page))]);
    if forwarded_https {
        out = out.header("x-forwarded-proto", "https");
    }
    let out = out.send().await.unwrap();
    assert_eq!(out.status(), 303);
    assert_eq!(
        set_cookie(&out).contains("; Secure"),
        set.contains("; Secure"),
        "{set}"
    );
    gw.shutdown().await;
    set
}

#[tokio::test]
async fn session_cookies_are_secure_unless_served_over_plain_loopback() {
    let sim = Sim::start(SimConfig::instant("m")).await;
    // Default ("auto"), listening on loopback: plain HTTP on this machine, no Secure.
    let set = cookie_with(&sim, |_| {}, false).await;
    assert!(
        set.starts_with("fg_session=") && !set.contains("Secure"),
        "{set}"
    );
    // A forwarded-proto header from a peer that is not a trusted proxy changes nothing.
    let set = cookie_with(&sim, |_| {}, true).await;
    assert!(!set.contains("Secure"), "{set}");
    // Through a trusted proxy that says the client used https: Secure.
    let set = cookie_with(
        &sim,
        |c| {
            c.trusted_proxies =
                fairgate::client_addr::TrustedProxies::parse(&["127.0.0.1"]).unwrap();
        },
        true,
    )
    .await;
    assert!(set.contains("; Secure"), "{set}");
    // The same proxy without the header (plain http to it): no Secure.
    let set = cookie_with(
        &sim,
        |c| {
            c.trusted_proxies =
                fairgate::client_addr::TrustedProxies::parse(&["127.0.0.1"]).unwrap();
        },
        false,
    )
    .await;
    assert!(!set.contains("Secure"), "{set}");
    // "auto" on a network address: Secure (a network-facing portal is assumed behind TLS).
    let set = cookie_with(&sim, |c| c.listen = "0.0.0.0:0".into(), false).await;
    assert!(set.contains("; Secure"), "{set}");
    // Explicit settings win.
    let set = cookie_with(
        &sim,
        |c| {
            c.listen = "0.0.0.0:0".into();
            c.portal.secure_cookies = SecureCookies::Never;
        },
        false,
    )
    .await;
    assert!(!set.contains("Secure"), "{set}");
    let set = cookie_with(
        &sim,
        |c| c.portal.secure_cookies = SecureCookies::Always,
        false,
    )
    .await;
    assert!(set.contains("; Secure"), "{set}");
}

#[test]
fn secure_cookies_config_is_auto_true_or_false() {
    let load = |text: &str, env: &[(&str, &str)]| {
        Config::from_toml_str(
            text,
            std::path::Path::new("t.toml"),
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    };
    assert_eq!(
        load("", &[]).unwrap().portal.secure_cookies,
        SecureCookies::Auto
    );
    for (text, want) in [
        ("[portal]\nsecure_cookies = \"auto\"", SecureCookies::Auto),
        ("[portal]\nsecure_cookies = true", SecureCookies::Always),
        ("[portal]\nsecure_cookies = false", SecureCookies::Never),
    ] {
        assert_eq!(
            load(text, &[]).unwrap().portal.secure_cookies,
            want,
            "{text}"
        );
    }
    assert_eq!(
        load("", &[("FAIRGATE_PORTAL__SECURE_COOKIES", "false")])
            .unwrap()
            .portal
            .secure_cookies,
        SecureCookies::Never
    );
    let e = load("[portal]\nsecure_cookies = \"sometimes\"", &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("secure_cookies"), "{e}");
}

async fn chat_status(gw: &TestGateway, key: &str) -> (u16, Value) {
    let r = gw
        .post(key, "/v1/chat/completions", chat("m", 5, false))
        .await;
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

async fn set_disabled(gw: &TestGateway, id: &str, disabled: bool) {
    let (s, v) = gw
        .admin(
            Method::PATCH,
            &format!("/users/{id}"),
            Some(json!({ "disabled": disabled })),
        )
        .await;
    assert_eq!(s, 200, "{v}");
}

#[tokio::test]
async fn a_disabled_users_keys_stop_at_once_and_come_back_when_enabled() {
    let sim = Sim::start(SimConfig::instant("m")).await;
    let db = fresh_db(Db::Sqlite).await.unwrap();
    let gw = TestGateway::start(Setup::one("m", &sim.url, 8), &db.url).await;
    gw.tenant("lab", 1).await;
    let dave = user(&gw, "dave@example.org", "user", Some("lab")).await;
    user(&gw, "olga@example.org", "operator", Some("lab")).await;

    // Dave makes a key in the portal; it works.
    let cookie = session_cookie(&sign_in(&gw, "dave@example.org", PASSWORD).await);
    let page = get(&gw, &cookie, "/portal").await.text().await.unwrap();
    let r = post_form(
        &gw,
        &cookie,
        "/portal/keys",
        &[("csrf", &csrf_of(&page)), ("name", "laptop")],
    )
    .await;
    assert_eq!(r.status(), 200);
    let key = secret_of(&r.text().await.unwrap());
    assert_eq!(chat_status(&gw, &key).await.0, 200);

    // Off-boarded through the admin API: the key stops before the PATCH returns.
    set_disabled(&gw, &dave, true).await;
    let (s, v) = chat_status(&gw, &key).await;
    assert_eq!(s, 401, "{v}");
    assert_eq!(v["error"]["code"], "api_key_disabled", "{v}");
    assert_eq!(
        get(&gw, &cookie, "/portal").await.status(),
        303,
        "session ended"
    );
    // The key itself is untouched (still enabled, not revoked): re-enabling restores it.
    let (_, keys) = gw.admin(Method::GET, "/keys?tenant=lab", None).await;
    let k = keys["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["user"] == "dave@example.org")
        .unwrap()
        .clone();
    assert_eq!(k["enabled"], true, "{k}");
    assert!(k["revoked_at"].is_null(), "{k}");
    set_disabled(&gw, &dave, false).await;
    assert_eq!(chat_status(&gw, &key).await.0, 200);

    // Off-boarded through the portal by an operator, and back.
    let op = session_cookie(&sign_in(&gw, "olga@example.org", PASSWORD).await);
    let page = get(&gw, &op, "/portal/tenant?tenant=lab")
        .await
        .text()
        .await
        .unwrap();
    let disable = format!("/portal/operator/users/{dave}/disable");
    assert!(page.contains(&disable), "{page}");
    let csrf = csrf_of(&page);
    // A plain user may not.
    let dave_cookie = session_cookie(&sign_in(&gw, "dave@example.org", PASSWORD).await);
    let dave_page = get(&gw, &dave_cookie, "/portal")
        .await
        .text()
        .await
        .unwrap();
    let r = post_form(
        &gw,
        &dave_cookie,
        &disable,
        &[("csrf", &csrf_of(&dave_page))],
    )
    .await;
    assert_eq!(r.status(), 403);
    assert_eq!(chat_status(&gw, &key).await.0, 200);
    // Without the CSRF token nothing happens.
    assert_eq!(post_form(&gw, &op, &disable, &[]).await.status(), 403);
    let r = post_form(&gw, &op, &disable, &[("csrf", &csrf)]).await;
    assert_eq!(r.status(), 303);
    let (s, v) = chat_status(&gw, &key).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (401, Some("api_key_disabled"))
    );
    assert_eq!(get(&gw, &dave_cookie, "/portal").await.status(), 303);
    let page = get(&gw, &op, "/portal/tenant?tenant=lab")
        .await
        .text()
        .await
        .unwrap();
    let enable = format!("/portal/operator/users/{dave}/enable");
    assert!(page.contains(&enable), "{page}");
    let r = post_form(&gw, &op, &enable, &[("csrf", &csrf)]).await;
    assert_eq!(r.status(), 303);
    assert_eq!(chat_status(&gw, &key).await.0, 200);
    let (_, audit) = gw.admin(Method::GET, "/audit", None).await;
    let actions: Vec<&str> = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert!(
        actions.contains(&"user.disable") && actions.contains(&"user.enable"),
        "{actions:?}"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_replica_stops_a_disabled_users_keys_within_its_refresh() {
    let sim = Sim::start(SimConfig::instant("m")).await;
    let db = fresh_db(Db::Sqlite).await.unwrap();
    let a = TestGateway::start(Setup::one("m", &sim.url, 8), &db.url).await;
    a.tenant("lab", 1).await;
    let erin = user(&a, "erin@example.org", "user", Some("lab")).await;
    let (s, v) = a
        .admin(
            Method::POST,
            "/keys",
            Some(json!({"tenant": "lab", "name": "ci", "user": "erin@example.org"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let key = v["key"].as_str().unwrap().to_owned();
    let b = TestGateway::start(Setup::one("m", &sim.url, 8), &db.url).await;
    assert_eq!(chat_status(&b, &key).await.0, 200);

    set_disabled(&a, &erin, true).await;
    assert_eq!(chat_status(&a, &key).await.0, 401);
    // Replica b learns it at its next directory refresh (every 5 s).
    let mut code = None;
    for _ in 0..100 {
        let (s, v) = chat_status(&b, &key).await;
        if s == 401 {
            code = v["error"]["code"].as_str().map(str::to_owned);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(code.as_deref(), Some("api_key_disabled"));

    set_disabled(&a, &erin, false).await;
    let mut back = false;
    for _ in 0..100 {
        if chat_status(&b, &key).await.0 == 200 {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(back, "replica b never restored the key");
    b.shutdown().await;
    a.shutdown().await;
}
