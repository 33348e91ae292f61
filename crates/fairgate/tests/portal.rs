//! The browser portal over plain HTTP: sign-in and sessions, CSRF and origin checks, a key
//! shown exactly once and usable through the OpenAI API, history and usage, revocation,
//! role checks on every operator route, live weight changes and the audit log.

mod common;

use common::*;
use fairgate_sim::SimConfig;
use reqwest::{header, Method};
use serde_json::{json, Value};

const PASSWORD: &str = "correct horse battery staple";

/// An HTTP client that neither follows redirects nor keeps cookies: the tests handle both.
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn user(gw: &TestGateway, email: &str, role: &str, tenant: Option<&str>) {
    let (s, v) = gw
        .admin(
            Method::POST,
            "/users",
            Some(json!({"email": email, "password": PASSWORD, "role": role, "tenant": tenant})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    assert!(
        v.get("password_hash").is_none(),
        "hash must never be served: {v}"
    );
}

/// Signs in; returns the session cookie (`name=value`).
async fn sign_in(gw: &TestGateway, email: &str, password: &str) -> reqwest::Response {
    browser()
        .post(format!("{}/portal/login", gw.base))
        .form(&[("email", email), ("password", password)])
        .send()
        .await
        .unwrap()
}

fn session_cookie(resp: &reqwest::Response) -> String {
    let set = resp.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(set.contains("HttpOnly"), "{set}");
    assert!(set.contains("SameSite=Lax"), "{set}");
    set.split(';').next().unwrap().to_owned()
}

async fn get_page(gw: &TestGateway, cookie: &str, path: &str) -> (u16, String) {
    let r = browser()
        .get(format!("{}{path}", gw.base))
        .header(header::COOKIE, cookie)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn post_form(
    gw: &TestGateway,
    cookie: &str,
    path: &str,
    form: &[(&str, &str)],
) -> reqwest::Response {
    browser()
        .post(format!("{}{path}", gw.base))
        .header(header::COOKIE, cookie)
        .form(form)
        .send()
        .await
        .unwrap()
}

fn csrf_of(page: &str) -> String {
    let at = page
        .find("name=\"csrf\" value=\"")
        .expect("page has a CSRF field");
    let rest = &page[at + "name=\"csrf\" value=\"".len()..];
    rest[..rest.find('"').unwrap()].to_owned()
}

fn secret_of(page: &str) -> String {
    let at = page.find("fgk_").expect("a key secret on the page");
    page[at..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

#[tokio::test]
async fn a_user_signs_in_makes_a_key_once_uses_it_sees_history_and_revokes_it() {
    let sim = Sim::start(SimConfig::instant("m")).await;
    let db = fresh_db(Db::Sqlite).await.unwrap();
    let gw = TestGateway::start(Setup::one("m", &sim.url, 8), &db.url).await;
    gw.tenant("lab", 1).await;
    user(&gw, "Ada@Example.org", "user", Some("lab")).await;

    // Not signed in: pages send you to the sign-in form.
    let r = browser()
        .get(format!("{}/portal", gw.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()[header::LOCATION], "/portal/login");

    let bad = sign_in(&gw, "ada@example.org", "wrong password!!").await;
    assert_eq!(bad.status(), 401);
    assert!(bad.headers().get(header::SET_COOKIE).is_none());
    let ok = sign_in(&gw, "ADA@example.org", PASSWORD).await;
    assert_eq!(ok.status(), 303);
    let cookie = session_cookie(&ok);

    let (s, page) = get_page(&gw, &cookie, "/portal").await;
    assert_eq!(s, 200);
    assert!(page.contains("ada@example.org"));
    let csrf = csrf_of(&page);

    // A form without the session's CSRF token changes nothing.
    let r = post_form(&gw, &cookie, "/portal/keys", &[("name", "laptop")]).await;
    assert_eq!(r.status(), 403);
    let r = post_form(
        &gw,
        &cookie,
        "/portal/keys",
        &[("csrf", "not-the-token"), ("name", "laptop")],
    )
    .await;
    assert_eq!(r.status(), 403);
    // Nor does one posted from another site.
    let r = browser()
        .post(format!("{}/portal/keys", gw.base))
        .header(header::COOKIE, &cookie)
        .header(header::ORIGIN, "https://evil.example")
        .form(&[("csrf", csrf.as_str()), ("name", "laptop")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    let r = post_form(
        &gw,
        &cookie,
        "/portal/keys",
        &[("csrf", &csrf), ("name", "laptop"), ("models", "m")],
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()[header::CACHE_CONTROL], "no-store");
    let created = r.text().await.unwrap();
    let secret = secret_of(&created);
    assert!(created.contains("only time the key is shown"));

    // The secret is never rendered again.
    let (_, again) = get_page(&gw, &cookie, "/portal").await;
    assert!(again.contains("laptop"));
    assert!(!again.contains(&secret), "secret rendered twice");

    // The key works through the OpenAI API, and the call shows in history and usage.
    let r = gw
        .post(&secret, "/v1/chat/completions", chat("m", 7, false))
        .await;
    assert_eq!(r.status(), 200);
    let (_, history) = get_page(&gw, &cookie, "/portal/history").await;
    assert!(history.contains("<td>m</td>"), "{history}");
    assert!(history.contains("200 ok"), "{history}");
    let (s, play) = get_page(&gw, &cookie, "/portal/playground").await;
    assert_eq!(s, 200);
    assert!(play.contains("<option>m</option>") && play.contains("/v1/chat/completions"));
    assert!(
        !play.contains(&secret),
        "the playground never holds a secret"
    );
    let (_, usage) = get_page(&gw, &cookie, "/portal/usage").await;
    assert!(usage.contains("<svg"), "usage has a chart");
    assert!(usage.contains("Tokens per model"));

    // Revoke it; the API refuses it from then on.
    let key_id = secret.split('_').nth(1).unwrap().to_owned();
    let r = post_form(
        &gw,
        &cookie,
        &format!("/portal/keys/{key_id}/revoke"),
        &[("csrf", &csrf)],
    )
    .await;
    assert_eq!(r.status(), 303);
    let r = gw
        .post(&secret, "/v1/chat/completions", chat("m", 7, false))
        .await;
    assert_eq!(r.status(), 401);

    // Sign out ends the session on the server, not just in the browser.
    let r = post_form(&gw, &cookie, "/portal/logout", &[("csrf", &csrf)]).await;
    assert_eq!(r.status(), 303);
    let (s, _) = get_page(&gw, &cookie, "/portal").await;
    assert_eq!(s, 303);
    gw.shutdown().await;
}

#[tokio::test]
async fn sign_in_replaces_a_planted_session_and_limits_failures() {
    let sim = Sim::start(SimConfig::instant("m")).await;
    let db = fresh_db(Db::Sqlite).await.unwrap();
    let gw = TestGateway::start(Setup::one("m", &sim.url, 8), &db.url).await;
    user(&gw, "bob@example.org", "user", None).await;
    let planted = "fg_session=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let r = browser()
        .post(format!("{}/portal/login", gw.base))
        .header(header::COOKIE, planted)
        .form(&[("email", "bob@example.org"), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let fresh = session_cookie(&r);
    assert_ne!(fresh, planted);
    let (s, _) = get_page(&gw, planted, "/portal").await;
    assert_eq!(s, 303, "a planted session id must not become valid");
    let (s, page) = get_page(&gw, &fresh, "/portal").await;
    assert_eq!(s, 200);
    assert!(page.contains("does not belong to a tenant"));

    for _ in 0..5 {
        assert_eq!(
            sign_in(&gw, "carol@example.org", "not her password")
                .await
                .status(),
            401
        );
    }
    assert_eq!(
        sign_in(&gw, "carol@example.org", "not her password")
            .await
            .status(),
        429
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn operator_routes_refuse_other_roles_and_weight_changes_are_live_and_audited() {
    let sim = Sim::start(SimConfig::instant("m")).await;
    let db = fresh_db(Db::Sqlite).await.unwrap();
    let gw = TestGateway::start(Setup::one("m", &sim.url, 8), &db.url).await;
    gw.tenant("lab", 1).await;
    user(&gw, "user@example.org", "user", Some("lab")).await;
    user(&gw, "lead@example.org", "tenant_admin", Some("lab")).await;
    user(&gw, "ops@example.org", "operator", None).await;
    let (_, key) = gw.key("lab", None).await;
    let r = gw
        .post(&key, "/v1/chat/completions", chat("m", 3, false))
        .await;
    assert_eq!(r.status(), 200);

    for who in ["user@example.org", "lead@example.org"] {
        let cookie = session_cookie(&sign_in(&gw, who, PASSWORD).await);
        let (_, page) = get_page(&gw, &cookie, "/portal").await;
        let csrf = csrf_of(&page);
        for path in ["/portal/operator", "/portal/audit", "/portal/api/scheduler"] {
            let (s, _) = get_page(&gw, &cookie, path).await;
            assert_eq!(s, 403, "{who} GET {path}");
        }
        let r = post_form(
            &gw,
            &cookie,
            "/portal/operator/tenants/lab/weight",
            &[("csrf", &csrf), ("weight", "9")],
        )
        .await;
        assert_eq!(r.status(), 403, "{who} may not change weights");
        assert!(
            !page.contains("/portal/operator"),
            "no operator link for {who}"
        );
    }

    let cookie = session_cookie(&sign_in(&gw, "ops@example.org", PASSWORD).await);
    let (s, page) = get_page(&gw, &cookie, "/portal/operator").await;
    assert_eq!(s, 200);
    assert!(page.contains("Fair share, live"));
    let csrf = csrf_of(&page);
    let r = post_form(
        &gw,
        &cookie,
        "/portal/operator/tenants/lab/weight",
        &[("csrf", &csrf), ("weight", "0")],
    )
    .await;
    assert_eq!(r.status(), 400);
    let r = post_form(
        &gw,
        &cookie,
        "/portal/operator/tenants/lab/weight",
        &[("csrf", &csrf), ("weight", "7")],
    )
    .await;
    assert_eq!(r.status(), 303);

    // Live: the scheduler (what the page polls) and the admin API both see the new weight.
    let (s, body) = get_page(&gw, &cookie, "/portal/api/scheduler").await;
    assert_eq!(s, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    let lab = v["models"][0]["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tenant"] == "lab")
        .cloned()
        .unwrap();
    assert_eq!(lab["weight"], 7, "{v}");
    let (_, t) = gw.admin(Method::GET, "/tenants/lab", None).await;
    assert_eq!(t["weight"], 7);

    let (s, audit) = get_page(&gw, &cookie, "/portal/audit").await;
    assert_eq!(s, 200);
    assert!(audit.contains("tenant.update"));
    assert!(audit.contains("ops@example.org"));
    assert!(audit.contains("&quot;weight&quot;:1") && audit.contains("&quot;weight&quot;:7"));
    gw.shutdown().await;
}

/// A key for `tenant` owned by `user` (so ledger rows carry that user); returns the secret.
async fn user_key(gw: &TestGateway, tenant: &str, user: &str) -> String {
    let (s, v) = gw
        .admin(
            Method::POST,
            "/keys",
            Some(json!({"tenant": tenant, "name": format!("{user}-key"), "user": user})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    v["key"].as_str().unwrap().to_owned()
}

/// Makes one chat call; returns its (prompt, completion) tokens.
async fn call(gw: &TestGateway, key: &str, max_tokens: u64) -> (u64, u64) {
    let r = gw
        .post(key, "/v1/chat/completions", chat("m", max_tokens, false))
        .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    (
        v["usage"]["prompt_tokens"].as_u64().unwrap(),
        v["usage"]["completion_tokens"].as_u64().unwrap(),
    )
}

async fn get_raw(gw: &TestGateway, cookie: &str, path: &str) -> reqwest::Response {
    browser()
        .get(format!("{}{path}", gw.base))
        .header(header::COOKIE, cookie)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn models_tenant_and_csv_export_pages_check_roles_and_add_up() {
    let sim = Sim::start(SimConfig::instant("m")).await;
    let db = fresh_db(Db::Sqlite).await.unwrap();
    let gw = TestGateway::start(Setup::one("m", &sim.url, 8), &db.url).await;
    gw.tenant("lab", 3).await;
    gw.tenant("other", 1).await;
    user(&gw, "ada@example.org", "user", Some("lab")).await;
    user(&gw, "lead@example.org", "tenant_admin", Some("lab")).await;
    user(&gw, "eve@example.org", "tenant_admin", Some("other")).await;
    user(&gw, "ops@example.org", "operator", None).await;

    let ada_key = user_key(&gw, "lab", "ada@example.org").await;
    let lead_key = user_key(&gw, "lab", "lead@example.org").await;
    let eve_key = user_key(&gw, "other", "eve@example.org").await;
    let a1 = call(&gw, &ada_key, 5).await;
    let a2 = call(&gw, &ada_key, 7).await;
    let l1 = call(&gw, &lead_key, 3).await;
    let e1 = call(&gw, &eve_key, 4).await;
    let ada = (a1.0 + a2.0, a1.1 + a2.1);

    // Models: any signed-in user sees the configured model and its load.
    let ada_cookie = session_cookie(&sign_in(&gw, "ada@example.org", PASSWORD).await);
    let (s, page) = get_page(&gw, &ada_cookie, "/portal/models").await;
    assert_eq!(s, 200);
    assert!(page.contains("<code>m</code>"), "{page}");
    assert!(page.contains("/8"), "capacity shown: {page}");
    assert!(page.contains("href=\"/portal/models\""), "nav link");
    assert!(
        !page.contains("href=\"/portal/tenant\""),
        "no tenant link for a user"
    );

    // A plain user may neither see the tenant page nor export.
    let (s, _) = get_page(&gw, &ada_cookie, "/portal/tenant").await;
    assert_eq!(s, 403);
    let (s, _) = get_page(&gw, &ada_cookie, "/portal/export.csv").await;
    assert_eq!(s, 403);
    let (_, usage) = get_page(&gw, &ada_cookie, "/portal/usage").await;
    assert!(!usage.contains("/portal/export.csv"));

    // A tenant admin sees members, their tokens, settings and keys of their own tenant only.
    let lead_cookie = session_cookie(&sign_in(&gw, "lead@example.org", PASSWORD).await);
    let (s, page) = get_page(&gw, &lead_cookie, "/portal/tenant").await;
    assert_eq!(s, 200, "{page}");
    assert!(page.contains("href=\"/portal/tenant\""), "nav link");
    assert!(page.contains("ada@example.org") && page.contains("lead@example.org"));
    assert!(!page.contains("eve@example.org"), "another tenant's member");
    assert!(
        page.contains(&format!(
            "data-tokens=\"ada@example.org\">{}<",
            ada.0 + ada.1
        )),
        "{page}"
    );
    assert!(page.contains(&format!(
        "data-tokens=\"lead@example.org\">{}<",
        l1.0 + l1.1
    )));
    assert!(page.contains("<td>Weight</td><td>3</td>"), "{page}");
    assert!(
        page.contains("ada@example.org-key"),
        "keys listed with owner"
    );
    assert!(page.contains("/portal/export.csv"));
    let (s, _) = get_page(&gw, &lead_cookie, "/portal/tenant?tenant=other").await;
    assert_eq!(s, 403);
    let (_, usage) = get_page(&gw, &lead_cookie, "/portal/usage").await;
    assert!(usage.contains("/portal/export.csv"));

    // Their CSV holds only their tenant, with the right sums.
    let r = get_raw(&gw, &lead_cookie, "/portal/export.csv").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()[header::CONTENT_TYPE], "text/csv; charset=utf-8");
    let disp = r.headers()[header::CONTENT_DISPOSITION]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        disp.starts_with("attachment; filename=\"fairgate-usage-") && disp.ends_with(".csv\""),
        "{disp}"
    );
    let csv = r.text().await.unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "tenant,user,model,requests,prompt_tokens,completion_tokens,total_tokens,cost_micros"
    );
    assert_eq!(lines.len(), 3, "{csv}");
    assert!(!csv.contains("other"), "{csv}");
    let want = format!(
        "lab,ada@example.org,m,2,{},{},{},0",
        ada.0,
        ada.1,
        ada.0 + ada.1
    );
    assert!(lines.contains(&want.as_str()), "{csv}\nwant {want}");
    let want = format!(
        "lab,lead@example.org,m,1,{},{},{},0",
        l1.0,
        l1.1,
        l1.0 + l1.1
    );
    assert!(lines.contains(&want.as_str()), "{csv}\nwant {want}");
    let (s, _) = get_page(&gw, &lead_cookie, "/portal/export.csv?tenant=other").await;
    assert_eq!(s, 403, "a tenant admin may not export another tenant");
    let (s, _) = get_page(&gw, &lead_cookie, "/portal/export.csv?since=yesterday").await;
    assert_eq!(s, 400);
    let r = get_raw(
        &gw,
        &lead_cookie,
        "/portal/export.csv?since=2000-01-01&until=2000-02-01",
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()[header::CONTENT_DISPOSITION],
        "attachment; filename=\"fairgate-usage-2000-01-01-2000-02-01.csv\""
    );
    assert_eq!(r.text().await.unwrap().lines().count(), 1, "header only");

    // Operators: all tenants, or the one asked for; without a tenant the page asks which.
    let ops_cookie = session_cookie(&sign_in(&gw, "ops@example.org", PASSWORD).await);
    let (s, page) = get_page(&gw, &ops_cookie, "/portal/tenant").await;
    assert_eq!(s, 200);
    assert!(page.contains("does not belong to a tenant"), "{page}");
    let (s, page) = get_page(&gw, &ops_cookie, "/portal/tenant?tenant=other").await;
    assert_eq!(s, 200);
    assert!(page.contains("eve@example.org"));
    let (s, csv) = get_page(&gw, &ops_cookie, "/portal/export.csv").await;
    assert_eq!(s, 200);
    assert_eq!(csv.lines().count(), 4, "{csv}");
    assert!(csv.contains(&format!(
        "other,eve@example.org,m,1,{},{},{},0",
        e1.0,
        e1.1,
        e1.0 + e1.1
    )));
    let (_, csv) = get_page(&gw, &ops_cookie, "/portal/export.csv?tenant=other").await;
    assert_eq!(csv.lines().count(), 2, "{csv}");
    gw.shutdown().await;
}
