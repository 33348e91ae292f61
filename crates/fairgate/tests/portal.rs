//! The browser portal over plain HTTP: sign-in and sessions, CSRF and origin checks, a key
//! shown exactly once and usable through the OpenAI API, history and usage, revocation and
//! rotation, role checks on every operator route, live weight changes, operator management of
//! tenants, groups, limits and budgets (live, validated, audited), the audit log, the models
//! inventory (counts only, never backend addresses) and the operator's backends page (drain,
//! resume, add, remove: live, validated, audited).

mod common;

use common::portal::*;
use common::*;
use fairgate_sim::SimConfig;
use reqwest::{header, Method};
use serde_json::{json, Value};

const PASSWORD: &str = "correct horse battery staple";

/// An HTTP client that neither follows redirects nor keeps cookies: the tests handle both.
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
    // The playground's script is the portal's static app.js (the CSP allows no inline script).
    assert!(play.contains("<option>m</option>") && play.contains("src=\"/portal/static/app.js"));
    let r = browser()
        .get(format!("{}/portal/static/app.js", gw.base))
        .send()
        .await
        .unwrap();
    assert!(r.text().await.unwrap().contains("/v1/chat/completions"));
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
    let backend: &'static str = sim.url.clone().leak();
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

    // A budget line, so that removing it would be a change the role check must prevent.
    let (s, v) = gw
        .admin(
            Method::PATCH,
            "/tenants/lab",
            Some(json!({"policy": {"budgets": [{"period": "day", "tokens": 1000000}]}})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (_, lab_before) = gw.admin(Method::GET, "/tenants/lab", None).await;

    for who in ["user@example.org", "lead@example.org"] {
        let cookie = session_cookie(&sign_in(&gw, who, PASSWORD).await);
        let (_, page) = get_page(&gw, &cookie, "/portal").await;
        let csrf = csrf_of(&page);
        for path in OPERATOR_PAGES {
            let (s, _) = get_page(&gw, &cookie, path).await;
            assert_eq!(s, 403, "{who} GET {path}");
        }
        for (path, fields) in operator_posts(backend) {
            let mut form = vec![("csrf", csrf.as_str())];
            form.extend(fields);
            let r = post_form(&gw, &cookie, path, &form).await;
            assert_eq!(r.status(), 403, "{who} POST {path}");
        }
        assert!(
            !page.contains("/portal/operator"),
            "no operator link for {who}"
        );
    }
    // Nothing the refused posts asked for happened.
    let (_, lab) = gw.admin(Method::GET, "/tenants/lab", None).await;
    assert_eq!(lab, lab_before);
    let (s, _) = gw.admin(Method::GET, "/tenants/sneaky", None).await;
    assert_eq!(s, 404);
    let (s, _) = gw.admin(Method::GET, "/groups/sneaky", None).await;
    assert_eq!(s, 404);
    // The backend was neither drained nor removed, and none was added.
    let (_, v) = gw.admin(Method::GET, "/backends", None).await;
    let list = v["data"][0]["backends"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{v}");
    assert_eq!(list[0]["draining"], false, "{v}");
    assert_eq!(list[0]["removing"], false, "{v}");
    assert!(
        !audit_entries(&gw)
            .await
            .iter()
            .any(|e| e["action"].as_str().unwrap_or("").starts_with("backend.")),
        "a refused backend change was audited"
    );

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

/// Every operator page (GET), the JSON the live views poll included.
const OPERATOR_PAGES: [&str; 7] = [
    "/portal/operator",
    "/portal/operator/tenants",
    "/portal/operator/tenants/lab",
    "/portal/operator/backends",
    "/portal/audit",
    "/portal/api/scheduler",
    "/portal/api/backends",
];

/// Form fields, in order.
type Fields = Vec<(&'static str, &'static str)>;

/// Every operator change (POST) with valid fields, all about tenant `lab`, new names, or
/// `backend` (the one backend of model `m`).
fn operator_posts(backend: &'static str) -> Vec<(&'static str, Fields)> {
    vec![
        (
            "/portal/operator/models/m/backends",
            vec![("url", "http://127.0.0.1:9"), ("max_in_flight", "4")],
        ),
        (
            "/portal/operator/models/m/backends/drain",
            vec![("url", backend)],
        ),
        (
            "/portal/operator/models/m/backends/resume",
            vec![("url", backend)],
        ),
        (
            "/portal/operator/models/m/backends/remove",
            vec![("url", backend)],
        ),
        ("/portal/operator/tenants/lab/weight", vec![("weight", "9")]),
        (
            "/portal/operator/tenants",
            vec![("name", "sneaky"), ("weight", "1")],
        ),
        ("/portal/operator/tenants/lab/group", vec![("group", "")]),
        (
            "/portal/operator/tenants/lab/policy",
            vec![("rpm", "1"), ("on_limit", "reject")],
        ),
        (
            "/portal/operator/tenants/lab/budgets",
            vec![("period", "month"), ("tokens", "5")],
        ),
        ("/portal/operator/tenants/lab/budgets/day/remove", vec![]),
        (
            "/portal/operator/groups",
            vec![("name", "sneaky"), ("weight", "1")],
        ),
        (
            "/portal/operator/groups/sneaky/weight",
            vec![("weight", "5")],
        ),
    ]
}

async fn audit_entries(gw: &TestGateway) -> Vec<Value> {
    let (s, v) = gw.admin(Method::GET, "/audit?limit=1000", None).await;
    assert_eq!(s, 200, "{v}");
    v["data"].as_array().unwrap().clone()
}

fn parse_json(s: &Value) -> Value {
    s.as_str()
        .map(|t| serde_json::from_str(t).unwrap())
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn operator_sets_up_groups_tenants_limits_and_budgets_live_and_audited() {
    let sim = Sim::start(SimConfig::instant("m")).await;
    let db = fresh_db(Db::Sqlite).await.unwrap();
    let gw = TestGateway::start(Setup::one("m", &sim.url, 8), &db.url).await;
    user(&gw, "ops@example.org", "operator", None).await;
    let cookie = session_cookie(&sign_in(&gw, "ops@example.org", PASSWORD).await);
    let (s, page) = get_page(&gw, &cookie, "/portal/operator/tenants").await;
    assert_eq!(s, 200);
    assert!(page.contains("Add a tenant") && page.contains("Add a group"));
    assert!(
        page.contains("href=\"/portal/operator/tenants\""),
        "nav link"
    );
    let csrf = csrf_of(&page);
    let post = |path: &'static str, fields: Vec<(&'static str, &'static str)>| {
        let mut form = vec![("csrf", csrf.clone())];
        form.extend(fields.into_iter().map(|(k, v)| (k, v.to_owned())));
        let cookie = cookie.clone();
        let base = gw.base.clone();
        async move {
            browser()
                .post(format!("{base}{path}"))
                .header(header::COOKIE, cookie)
                .form(&form)
                .send()
                .await
                .unwrap()
        }
    };
    let expect_redirect = |r: reqwest::Response, to: &str| {
        assert_eq!(r.status(), 303, "{:?}", r.url());
        assert_eq!(r.headers()[header::LOCATION], to);
    };

    // A group, then a new weight for it.
    let r = post(
        "/portal/operator/groups",
        vec![("name", "science"), ("weight", "3")],
    )
    .await;
    expect_redirect(r, "/portal/operator/tenants");
    let r = post(
        "/portal/operator/groups/science/weight",
        vec![("weight", "4")],
    )
    .await;
    expect_redirect(r, "/portal/operator/tenants");
    let (_, g) = gw.admin(Method::GET, "/groups/science", None).await;
    assert_eq!(g, json!({"name": "science", "weight": 4}));

    // A tenant in it; the portal goes on to the tenant's page.
    let r = post(
        "/portal/operator/tenants",
        vec![("name", "chem"), ("weight", "2"), ("group", "science")],
    )
    .await;
    expect_redirect(r, "/portal/operator/tenants/chem");
    let (s, detail) = get_page(&gw, &cookie, "/portal/operator/tenants/chem").await;
    assert_eq!(s, 200);
    assert!(detail.contains("<h1>Tenant chem</h1>"), "{detail}");

    // Limits, queueing and the hard cap.
    let r = post(
        "/portal/operator/tenants/chem/policy",
        vec![
            ("rpm", "1"),
            ("tpm", ""),
            ("max_concurrent", "2"),
            ("on_limit", "reject"),
            ("max_queue", "5"),
            ("max_wait_ms", "1000"),
            ("hard_cap", "on"),
        ],
    )
    .await;
    expect_redirect(r, "/portal/operator/tenants/chem");
    // Budgets: add two lines (cost in currency units, stored as micros) ...
    let r = post(
        "/portal/operator/tenants/chem/budgets",
        vec![("period", "day"), ("tokens", "100000"), ("cost", "2.5")],
    )
    .await;
    expect_redirect(r, "/portal/operator/tenants/chem");
    let r = post(
        "/portal/operator/tenants/chem/budgets",
        vec![("period", "month"), ("tokens", ""), ("cost", "10")],
    )
    .await;
    expect_redirect(r, "/portal/operator/tenants/chem");
    let (_, t) = gw.admin(Method::GET, "/tenants/chem", None).await;
    assert_eq!(
        t["policy"]["budgets"],
        json!([
            {"period": "day", "tokens": 100000, "cost": 2500000},
            {"period": "month", "cost": 10000000}
        ]),
        "{t}"
    );
    // ... change one and remove the other.
    let r = post(
        "/portal/operator/tenants/chem/budgets",
        vec![("period", "day"), ("tokens", "50000"), ("cost", "")],
    )
    .await;
    expect_redirect(r, "/portal/operator/tenants/chem");
    let r = post("/portal/operator/tenants/chem/budgets/month/remove", vec![]).await;
    expect_redirect(r, "/portal/operator/tenants/chem");

    // The admin API sees exactly what the forms said.
    let (s, t) = gw.admin(Method::GET, "/tenants/chem", None).await;
    assert_eq!(s, 200);
    assert_eq!(t["weight"], 2);
    assert_eq!(t["group"], "science");
    assert_eq!(
        t["policy"],
        json!({
            "limits": {"rpm": 1, "max_concurrent": 2},
            "budgets": [{"period": "day", "tokens": 50000}],
            "max_queue": 5,
            "max_wait_ms": 1000,
            "on_limit": "reject",
            "hard_cap": true
        }),
        "{t}"
    );

    // The pages show the current policy.
    let (_, detail) = get_page(&gw, &cookie, "/portal/operator/tenants/chem").await;
    assert!(
        detail.contains("1 requests/min, 2 concurrent, 5 queued per model, 1000 ms max wait"),
        "{detail}"
    );
    assert!(detail.contains("reject at once (429)"), "{detail}");
    assert!(
        detail.contains("per day: 50000 tokens (hard cap)"),
        "{detail}"
    );
    assert!(
        detail.contains("name=\"rpm\" type=\"number\" min=\"1\" value=\"1\""),
        "the form shows the current rpm"
    );
    let (_, list) = get_page(&gw, &cookie, "/portal/operator/tenants").await;
    assert!(list.contains("data-tenant-link=\"chem\""), "{list}");
    assert!(list.contains("per day: 50000 tokens"), "{list}");
    assert!(list.contains("data-group-weight=\"science\">4<"), "{list}");

    // Live: the scheduler has the new tenant with its weight, and its limit refuses the
    // second request in the minute, with no restart in between.
    let (_, body) = get_page(&gw, &cookie, "/portal/api/scheduler").await;
    let v: Value = serde_json::from_str(&body).unwrap();
    let chem = v["models"][0]["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tenant"] == "chem")
        .cloned()
        .unwrap_or_else(|| panic!("chem not in the live view: {v}"));
    assert_eq!(chem["weight"], 2, "{v}");
    let (_, key) = gw.key("chem", None).await;
    let r = gw
        .post(&key, "/v1/chat/completions", chat("m", 3, false))
        .await;
    assert_eq!(r.status(), 200);
    let r = gw
        .post(&key, "/v1/chat/completions", chat("m", 3, false))
        .await;
    assert_eq!(r.status(), 429, "rpm=1 with on_limit=reject");
    // Lifting the limit in the portal lets the next request through at once.
    let r = post(
        "/portal/operator/tenants/chem/policy",
        vec![("rpm", ""), ("on_limit", "reject")],
    )
    .await;
    expect_redirect(r, "/portal/operator/tenants/chem");
    let r = gw
        .post(&key, "/v1/chat/completions", chat("m", 3, false))
        .await;
    assert_eq!(
        r.status(),
        200,
        "the lifted limit applies to the next request"
    );

    // Ungroup, then back into the group.
    let r = post("/portal/operator/tenants/chem/group", vec![("group", "")]).await;
    expect_redirect(r, "/portal/operator/tenants/chem");
    let (_, t) = gw.admin(Method::GET, "/tenants/chem", None).await;
    assert_eq!(t["group"], Value::Null);
    let r = post(
        "/portal/operator/tenants/chem/group",
        vec![("group", "science")],
    )
    .await;
    expect_redirect(r, "/portal/operator/tenants/chem");
    let (_, t) = gw.admin(Method::GET, "/tenants/chem", None).await;
    assert_eq!(t["group"], "science");

    // Every change is in the audit log under the operator's name, with before and after.
    let audit = audit_entries(&gw).await;
    let mine: Vec<&Value> = audit
        .iter()
        .filter(|e| e["actor"] == "ops@example.org")
        .collect();
    let of = |action: &str, target: &str| -> Vec<(Value, Value)> {
        mine.iter()
            .filter(|e| e["action"] == action && e["target"] == target)
            .map(|e| (parse_json(&e["before"]), parse_json(&e["after"])))
            .collect()
    };
    let groups = of("group.set", "group:science");
    assert!(
        groups.contains(&(Value::Null, json!({"name": "science", "weight": 3}))),
        "{groups:?}"
    );
    assert!(groups.contains(&(
        json!({"name": "science", "weight": 3}),
        json!({"name": "science", "weight": 4})
    )));
    let created = of("tenant.create", "tenant:chem");
    assert_eq!(created.len(), 1);
    assert_eq!(created[0].0, Value::Null);
    assert_eq!(created[0].1["weight"], 2);
    assert_eq!(created[0].1["group"], "science");
    let updates = of("tenant.update", "tenant:chem");
    assert_eq!(
        updates.len(),
        8,
        "policy twice, budgets four times, group twice"
    );
    assert!(updates
        .iter()
        .any(|(b, a)| b["policy"]["limits"].is_null() && a["policy"]["limits"]["rpm"] == 1));
    assert!(updates
        .iter()
        .any(
            |(b, a)| b["policy"]["budgets"].as_array().map(Vec::len) == Some(2)
                && a["policy"]["budgets"].as_array().map(Vec::len) == Some(1)
        ));
    assert!(updates
        .iter()
        .any(|(b, a)| b["group"] == "science" && a["group"].is_null()));
    gw.shutdown().await;
}

#[tokio::test]
async fn operator_forms_refuse_bad_input_with_a_message_and_change_nothing() {
    let sim = Sim::start(SimConfig::instant("m")).await;
    let backend: &'static str = sim.url.clone().leak();
    let db = fresh_db(Db::Sqlite).await.unwrap();
    let gw = TestGateway::start(Setup::one("m", &sim.url, 8), &db.url).await;
    gw.tenant("lab", 1).await;
    let (s, _) = gw
        .admin(Method::PUT, "/groups/science", Some(json!({"weight": 2})))
        .await;
    assert_eq!(s, 200);
    user(&gw, "ops@example.org", "operator", None).await;
    let cookie = session_cookie(&sign_in(&gw, "ops@example.org", PASSWORD).await);
    let (_, page) = get_page(&gw, &cookie, "/portal/operator/tenants").await;
    let csrf = csrf_of(&page);
    let (_, lab_before) = gw.admin(Method::GET, "/tenants/lab", None).await;
    let audit_before = audit_entries(&gw).await.len();

    // (path, fields, the message the page must show)
    let cases: Vec<(&str, Fields, &str)> = vec![
        (
            "/portal/operator/tenants",
            vec![("name", "chem"), ("weight", "-3")],
            "weight: `-3` is not a whole number",
        ),
        (
            "/portal/operator/tenants",
            vec![("name", "chem"), ("weight", "abc")],
            "weight: `abc` is not a whole number",
        ),
        (
            "/portal/operator/tenants",
            vec![("name", "chem"), ("weight", "0")],
            "weight must be between 1 and 1000000",
        ),
        (
            "/portal/operator/tenants",
            vec![("name", "bad name!"), ("weight", "1")],
            "tenant name `bad name!` is invalid",
        ),
        (
            "/portal/operator/tenants",
            vec![("name", "chem"), ("weight", "1"), ("group", "nope")],
            "group `nope` does not exist",
        ),
        (
            "/portal/operator/tenants",
            vec![("name", "lab"), ("weight", "1")],
            "tenant `lab` already exists",
        ),
        (
            "/portal/operator/groups",
            vec![("name", "science"), ("weight", "5")],
            "group `science` already exists",
        ),
        (
            "/portal/operator/groups",
            vec![("name", "physics"), ("weight", "x")],
            "weight: `x` is not a whole number",
        ),
        (
            "/portal/operator/groups/science/weight",
            vec![("weight", "0")],
            "weight must be between 1 and 1000000",
        ),
        (
            "/portal/operator/tenants/lab/weight",
            vec![("weight", "-1")],
            "weight: `-1` is not a whole number",
        ),
        (
            "/portal/operator/tenants/lab/weight",
            vec![("weight", "1.5"), ("from", "tenant")],
            "weight: `1.5` is not a whole number",
        ),
        (
            "/portal/operator/tenants/lab/group",
            vec![("group", "nope")],
            "group `nope` does not exist",
        ),
        (
            "/portal/operator/tenants/lab/policy",
            vec![("rpm", "0")],
            "rpm: must be at least 1 (leave it empty for no limit)",
        ),
        (
            "/portal/operator/tenants/lab/policy",
            vec![("rpm", "abc")],
            "rpm: `abc` is not a whole number",
        ),
        (
            "/portal/operator/tenants/lab/policy",
            vec![("max_concurrent", "-2")],
            "max_concurrent: `-2` is not a whole number",
        ),
        (
            "/portal/operator/tenants/lab/policy",
            vec![("max_queue", "0")],
            "max_queue: must be at least 1",
        ),
        (
            "/portal/operator/tenants/lab/policy",
            vec![("max_wait_ms", "4000000")],
            "max_wait_ms: must be at most 3600000",
        ),
        (
            "/portal/operator/tenants/lab/policy",
            vec![("on_limit", "sometimes")],
            "on_limit: `sometimes` must be `queue` or `reject`",
        ),
        (
            "/portal/operator/tenants/lab/budgets",
            vec![("period", "day")],
            "day budget: set `tokens` or `cost` (or both)",
        ),
        (
            "/portal/operator/tenants/lab/budgets",
            vec![("period", "week"), ("tokens", "1")],
            "period: `week` must be `day` or `month`",
        ),
        (
            "/portal/operator/tenants/lab/budgets",
            vec![("period", "day"), ("tokens", "0")],
            "day budget tokens: must be at least 1",
        ),
        (
            "/portal/operator/tenants/lab/budgets",
            vec![("period", "day"), ("cost", "0")],
            "day budget cost: must be at least 1 micro",
        ),
        (
            "/portal/operator/tenants/lab/budgets",
            vec![("period", "day"), ("cost", "-1")],
            "cost: `-1` is not an amount",
        ),
        (
            "/portal/operator/tenants/lab/budgets",
            vec![("period", "month"), ("cost", "1.2345678")],
            "cost: `1.2345678` has more than 6 decimal places",
        ),
        (
            "/portal/operator/tenants/lab/budgets/day/remove",
            vec![],
            "there is no day budget to remove",
        ),
    ];
    for (path, fields, want) in &cases {
        let mut form = vec![("csrf", csrf.as_str())];
        form.extend(fields.iter().copied());
        let r = post_form(&gw, &cookie, path, &form).await;
        assert_eq!(r.status(), 400, "POST {path} {fields:?}");
        let body = r.text().await.unwrap();
        assert!(
            body.contains("role=\"alert\""),
            "POST {path} {fields:?}: no alert"
        );
        assert!(
            body.contains(&format!("Not saved: {want}")),
            "POST {path} {fields:?}: want `{want}` in\n{body}"
        );
        assert!(body.contains("<form"), "the form comes back");
        // What was typed is still in the form.
        for (k, v) in fields {
            if !v.is_empty() && *k != "period" && *k != "from" && *k != "group" && *k != "on_limit"
            {
                assert!(
                    body.contains(&format!("name=\"{k}\""))
                        && body.contains(&format!("value=\"{v}\"")),
                    "POST {path}: `{k}={v}` not kept"
                );
            }
        }
    }

    // The missing CSRF token and a foreign origin are refused outright.
    for (path, fields) in operator_posts(backend) {
        let r = post_form(&gw, &cookie, path, &fields).await;
        assert_eq!(r.status(), 403, "POST {path} without CSRF token");
        let mut form = vec![("csrf", csrf.as_str())];
        form.extend(fields);
        let r = browser()
            .post(format!("{}{path}", gw.base))
            .header(header::COOKIE, &cookie)
            .header(header::ORIGIN, "https://evil.example")
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "POST {path} from another origin");
    }
    // An unknown tenant is a 404 page, not an error.
    let (s, body) = get_page(&gw, &cookie, "/portal/operator/tenants/nobody").await;
    assert_eq!(s, 404);
    assert!(body.contains("no tenant `nobody`"), "{body}");

    // Nothing changed, and nothing was audited.
    let (_, lab) = gw.admin(Method::GET, "/tenants/lab", None).await;
    assert_eq!(lab, lab_before);
    for missing in [
        "/tenants/chem",
        "/tenants/sneaky",
        "/groups/physics",
        "/groups/sneaky",
    ] {
        let (s, _) = gw.admin(Method::GET, missing, None).await;
        assert_eq!(s, 404, "{missing}");
    }
    let (_, g) = gw.admin(Method::GET, "/groups/science", None).await;
    assert_eq!(g["weight"], 2);
    assert_eq!(audit_entries(&gw).await.len(), audit_before);
    gw.shutdown().await;
}

#[tokio::test]
async fn rotating_a_key_shows_the_new_secret_once_and_kills_the_old_one() {
    let sim = Sim::start(SimConfig::instant("m")).await;
    let db = fresh_db(Db::Sqlite).await.unwrap();
    let gw = TestGateway::start(Setup::one("m", &sim.url, 8), &db.url).await;
    gw.tenant("lab", 1).await;
    user(&gw, "ada@example.org", "user", Some("lab")).await;
    user(&gw, "bob@example.org", "user", Some("lab")).await;
    user(&gw, "ops@example.org", "operator", None).await;

    let ada = session_cookie(&sign_in(&gw, "ada@example.org", PASSWORD).await);
    let (_, page) = get_page(&gw, &ada, "/portal").await;
    let csrf = csrf_of(&page);
    let r = post_form(
        &gw,
        &ada,
        "/portal/keys",
        &[("csrf", &csrf), ("name", "laptop")],
    )
    .await;
    assert_eq!(r.status(), 200);
    let old = secret_of(&r.text().await.unwrap());
    let key_id = old.split('_').nth(1).unwrap().to_owned();
    let rotate = format!("/portal/keys/{key_id}/rotate");
    let (_, page) = get_page(&gw, &ada, "/portal").await;
    assert!(
        page.contains(&format!("action=\"{rotate}\"")),
        "a Rotate button"
    );

    // No CSRF token, or another user's key: refused, and the old secret still works.
    let r = post_form(&gw, &ada, &rotate, &[]).await;
    assert_eq!(r.status(), 403);
    let bob = session_cookie(&sign_in(&gw, "bob@example.org", PASSWORD).await);
    let (_, bob_page) = get_page(&gw, &bob, "/portal").await;
    let r = post_form(&gw, &bob, &rotate, &[("csrf", &csrf_of(&bob_page))]).await;
    assert_eq!(r.status(), 403, "bob may not rotate ada's key");
    let r = gw
        .post(&old, "/v1/chat/completions", chat("m", 3, false))
        .await;
    assert_eq!(r.status(), 200);

    let r = post_form(&gw, &ada, &rotate, &[("csrf", &csrf)]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()[header::CACHE_CONTROL], "no-store");
    let shown = r.text().await.unwrap();
    assert!(shown.contains("<h1>Key rotated</h1>"));
    assert!(shown.contains("only time the new secret is shown"));
    let new = secret_of(&shown);
    assert_ne!(new, old);
    assert!(
        new.starts_with(&format!("fgk_{key_id}_")),
        "same key id: {new}"
    );
    assert!(!shown.contains(&old));

    // The old secret stops at once; the new one works.
    let r = gw
        .post(&old, "/v1/chat/completions", chat("m", 3, false))
        .await;
    assert_eq!(r.status(), 401);
    let r = gw
        .post(&new, "/v1/chat/completions", chat("m", 3, false))
        .await;
    assert_eq!(r.status(), 200);

    // The new secret is in no other response, and not in the audit log.
    let new_part = new.rsplit('_').next().unwrap().to_owned();
    let (_, page) = get_page(&gw, &ada, "/portal").await;
    assert!(page.contains("laptop") && !page.contains(&new_part));
    let (_, history) = get_page(&gw, &ada, "/portal/history").await;
    assert!(!history.contains(&new_part));
    let ops = session_cookie(&sign_in(&gw, "ops@example.org", PASSWORD).await);
    let (_, audit_page) = get_page(&gw, &ops, "/portal/audit").await;
    assert!(audit_page.contains("key.rotate"));
    assert!(!audit_page.contains(&new_part) && !audit_page.contains(&old));
    let audit = audit_entries(&gw).await;
    let rotated: Vec<&Value> = audit
        .iter()
        .filter(|e| e["action"] == "key.rotate" && e["target"] == format!("key:{key_id}"))
        .collect();
    assert_eq!(rotated.len(), 1);
    assert_eq!(rotated[0]["actor"], "ada@example.org");
    let text = serde_json::to_string(&audit).unwrap();
    assert!(!text.contains(&new_part) && !text.contains(old.rsplit('_').next().unwrap()));

    // A revoked key cannot be rotated back to life.
    let r = post_form(
        &gw,
        &ada,
        &format!("/portal/keys/{key_id}/revoke"),
        &[("csrf", &csrf)],
    )
    .await;
    assert_eq!(r.status(), 303);
    let r = post_form(&gw, &ada, &rotate, &[("csrf", &csrf)]).await;
    assert_eq!(r.status(), 400);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("revoked and cannot be rotated"));
    let r = gw
        .post(&new, "/v1/chat/completions", chat("m", 3, false))
        .await;
    assert_eq!(r.status(), 401);
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
    assert!(page.contains("0 / 8"), "in flight / capacity shown: {page}");
    assert!(page.contains("1 of 1 healthy"), "{page}");
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

/// The backend state cell of `url`'s row on the operator's backends page.
fn backend_row<'a>(page: &'a str, url: &str) -> &'a str {
    let at = page
        .find(&format!("<tr data-url=\"{url}\""))
        .unwrap_or_else(|| panic!("no row for {url}: {page}"));
    let rest = &page[at..];
    &rest[..rest.find("</tr>").unwrap()]
}

async fn backend_of(gw: &TestGateway, url: &str) -> Option<Value> {
    let (s, v) = gw.admin(Method::GET, "/backends", None).await;
    assert_eq!(s, 200, "{v}");
    v["data"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["url"] == url)
        .cloned()
}

#[tokio::test]
async fn operator_manages_backends_and_users_see_only_counts() {
    let a = Sim::start(SimConfig::instant("m")).await;
    let b = Sim::start(SimConfig::instant("m")).await;
    let c = Sim::start(SimConfig::instant("m")).await;
    let db = fresh_db(Db::Sqlite).await.unwrap();
    let setup = Setup::many("m", &[&a.url, &b.url], 4).with(|c| {
        c.models[0].adapters = vec!["sql-lora".into()];
        c.aliases = vec![fairgate::config::AliasConfig {
            name: "chat".into(),
            models: vec!["m".into()],
        }];
    });
    let gw = TestGateway::start(setup, &db.url).await;
    gw.tenant("lab", 1).await;
    user(&gw, "ada@example.org", "user", Some("lab")).await;
    user(&gw, "bob@example.org", "user", Some("lab")).await;
    user(&gw, "ops@example.org", "operator", None).await;
    let ada_key = user_key(&gw, "lab", "ada@example.org").await;
    call(&gw, &ada_key, 3).await;
    let (s, v) = gw
        .admin(
            Method::POST,
            "/keys",
            Some(json!({"tenant": "lab", "name": "bob-key", "user": "bob@example.org", "models": ["m"]})),
        )
        .await;
    assert_eq!(s, 201, "{v}");

    // A user: status, replicas as counts, load and the context length the backends report;
    // no backend address anywhere on the page.
    let ada = session_cookie(&sign_in(&gw, "ada@example.org", PASSWORD).await);
    let (s, page) = get_page(&gw, &ada, "/portal/models").await;
    assert_eq!(s, 200);
    assert!(page.contains("2 of 2 healthy"), "{page}");
    assert!(
        page.contains("8192 tokens"),
        "context length from /v1/models: {page}"
    );
    assert!(page.contains("0 / 8"), "in flight / capacity: {page}");
    assert!(page.contains("badge ok\">ok<"), "{page}");
    for url in [&a.url, &b.url] {
        let host = url.trim_start_matches("http://");
        assert!(!page.contains(host), "a user sees backend {host}: {page}");
    }
    assert!(
        !page.contains("/portal/operator/backends"),
        "no operator link"
    );

    // The operator: every backend with its state, live JSON with the same.
    let ops = session_cookie(&sign_in(&gw, "ops@example.org", PASSWORD).await);
    let (s, page) = get_page(&gw, &ops, "/portal/operator/backends").await;
    assert_eq!(s, 200, "{page}");
    assert!(
        page.contains("href=\"/portal/operator/backends\""),
        "nav link"
    );
    assert!(page.contains("Operator: models and backends"));
    for url in [&a.url, &b.url] {
        let row = backend_row(&page, url);
        assert!(row.contains("badge ok\">healthy<"), "{row}");
        assert!(
            row.contains(">Drain</button>") && row.contains(">Remove</button>"),
            "{row}"
        );
        assert!(!row.contains("draining"), "{row}");
    }
    assert!(page.contains("2 of 2 healthy"), "{page}");
    assert!(page.contains("<th scope=\"col\">KV cache</th>"), "{page}");
    let csrf = csrf_of(&page);
    let r = get_raw(&gw, &ops, "/portal/api/backends").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()[header::CACHE_CONTROL], "no-store");
    let v: Value = r.json().await.unwrap();
    let m = &v["models"][0];
    assert_eq!(m["model"], "m");
    assert_eq!(
        (m["healthy"].as_u64(), m["total"].as_u64()),
        (Some(2), Some(2)),
        "{v}"
    );
    assert_eq!(m["context_length"], 8192, "{v}");
    assert_eq!(m["capacity"], 8, "{v}");
    let states: Vec<(&str, &str)> = m["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["url"].as_str().unwrap(), b["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        states,
        vec![(a.url.as_str(), "healthy"), (b.url.as_str(), "healthy")]
    );

    // Drain b in the portal: the admin API reports it draining, the audit log has it with the
    // operator as the actor, and users see one replica fewer.
    let r = post_form(
        &gw,
        &ops,
        "/portal/operator/models/m/backends/drain",
        &[("csrf", &csrf), ("url", &b.url)],
    )
    .await;
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()[header::LOCATION], "/portal/operator/backends");
    let now = backend_of(&gw, &b.url).await.unwrap();
    assert_eq!(now["draining"], true, "{now}");
    let (_, page) = get_page(&gw, &ops, "/portal/operator/backends").await;
    let row = backend_row(&page, &b.url);
    assert!(
        row.contains(">draining<") && row.contains(">Resume</button>"),
        "{row}"
    );
    assert!(!row.contains(">Drain</button>"), "{row}");
    assert!(page.contains("1 of 2 healthy"), "{page}");
    let (_, page) = get_page(&gw, &ada, "/portal/models").await;
    assert!(page.contains("1 of 2 healthy"), "{page}");
    let v: Value =
        serde_json::from_str(&get_page(&gw, &ops, "/portal/api/backends").await.1).unwrap();
    assert_eq!(v["models"][0]["backends"][1]["draining"], true, "{v}");

    // Resume it.
    let r = post_form(
        &gw,
        &ops,
        "/portal/operator/models/m/backends/resume",
        &[("csrf", &csrf), ("url", &b.url)],
    )
    .await;
    assert_eq!(r.status(), 303);
    assert_eq!(backend_of(&gw, &b.url).await.unwrap()["draining"], false);

    // Bad input: the page again as a 400 with the reason and what was typed; nothing added.
    let cases: [(&[(&str, &str)], &str); 5] = [
        (
            &[("url", "ftp://10.0.0.7:8000"), ("max_in_flight", "4")],
            "must start with http://",
        ),
        (
            &[("url", "http://10.0.0.7:8000/v1"), ("max_in_flight", "4")],
            "must be the server root",
        ),
        (
            &[("url", ""), ("max_in_flight", "4")],
            "url: give the backend&#39;s server root",
        ),
        (
            &[("url", "http://10.0.0.7:8000"), ("max_in_flight", "0")],
            "max_in_flight: must be at least 1",
        ),
        (
            &[("url", "http://10.0.0.7:8000"), ("max_in_flight", "lots")],
            "max_in_flight: `lots` is not a whole number",
        ),
    ];
    for (fields, want) in cases {
        let mut form = vec![("csrf", csrf.as_str())];
        form.extend_from_slice(fields);
        let r = post_form(&gw, &ops, "/portal/operator/models/m/backends", &form).await;
        assert_eq!(r.status(), 400, "{fields:?}");
        let body = r.text().await.unwrap();
        assert!(body.contains("role=\"alert\""), "{body}");
        assert!(body.contains(want), "{fields:?}: want {want}: {body}");
        for (k, v) in fields.iter().filter(|(_, v)| !v.is_empty()) {
            assert!(
                body.contains(&format!("name=\"{k}\" "))
                    && body.contains(&format!("value=\"{v}\"")),
                "`{k}={v}` not kept"
            );
        }
    }
    // A backend the model has already.
    let r = post_form(
        &gw,
        &ops,
        "/portal/operator/models/m/backends",
        &[("csrf", &csrf), ("url", &a.url), ("max_in_flight", "4")],
    )
    .await;
    assert_eq!(r.status(), 400);
    let body = r.text().await.unwrap();
    assert!(
        body.contains(&format!("backend `{}` of model `m` already exists<", a.url)),
        "{body}"
    );
    // Unknown backend and unknown model.
    let r = post_form(
        &gw,
        &ops,
        "/portal/operator/models/m/backends/drain",
        &[("csrf", &csrf), ("url", "http://10.9.9.9:1")],
    )
    .await;
    assert_eq!(r.status(), 400);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("backend `http://10.9.9.9:1` of model `m` not found"));
    let r = post_form(
        &gw,
        &ops,
        "/portal/operator/models/nope/backends/drain",
        &[("csrf", &csrf), ("url", &a.url)],
    )
    .await;
    assert_eq!(r.status(), 404);
    let (_, v) = gw.admin(Method::GET, "/backends", None).await;
    assert_eq!(v["data"][0]["backends"].as_array().unwrap().len(), 2, "{v}");

    // Add c, then remove it (idle, so it leaves at once).
    let r = post_form(
        &gw,
        &ops,
        "/portal/operator/models/m/backends",
        &[("csrf", &csrf), ("url", &c.url), ("max_in_flight", "3")],
    )
    .await;
    assert_eq!(r.status(), 303);
    let added = backend_of(&gw, &c.url).await.expect("c added");
    assert_eq!(
        (added["max_in_flight"].as_u64(), added["origin"].as_str()),
        (Some(3), Some("api"))
    );
    let (_, page) = get_page(&gw, &ops, "/portal/operator/backends").await;
    assert!(backend_row(&page, &c.url).contains("(added live)"));
    let (_, page) = get_page(&gw, &ada, "/portal/models").await;
    assert!(
        page.contains("of 3 healthy") && page.contains(" / 11"),
        "{page}"
    );
    assert!(
        !page.contains(c.url.trim_start_matches("http://")),
        "{page}"
    );
    let r = post_form(
        &gw,
        &ops,
        "/portal/operator/models/m/backends/remove",
        &[("csrf", &csrf), ("url", &c.url)],
    )
    .await;
    assert_eq!(r.status(), 303);
    assert!(backend_of(&gw, &c.url).await.is_none(), "c removed");

    // Every change is audited with the operator as the actor, like the admin API's.
    let audit = audit_entries(&gw).await;
    let mine: Vec<(String, String)> = audit
        .iter()
        .filter(|e| e["actor"] == "ops@example.org")
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_owned(),
                e["target"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let target = |u: &str| format!("model:m backend:{u}");
    for want in [
        ("backend.drain".to_owned(), target(&b.url)),
        ("backend.resume".to_owned(), target(&b.url)),
        ("backend.add".to_owned(), target(&c.url)),
        ("backend.remove".to_owned(), target(&c.url)),
    ] {
        assert!(mine.contains(&want), "{want:?} not audited: {mine:?}");
    }
    assert_eq!(
        mine.iter()
            .filter(|(a, _)| a.starts_with("backend."))
            .count(),
        4,
        "refused forms are not audited: {mine:?}"
    );
    let drain = audit
        .iter()
        .find(|e| e["action"] == "backend.drain")
        .unwrap();
    assert_eq!(parse_json(&drain["before"])["draining"], false);
    assert_eq!(parse_json(&drain["after"])["draining"], true);
    gw.shutdown().await;
}

/// The live fair-share view shows each tenant's time to first token (from the per-tenant
/// histogram that `/metrics` also serves), and nothing for a tenant that has had none yet.
#[tokio::test]
async fn the_live_view_shows_each_tenants_time_to_first_token() {
    let sim = Sim::start(SimConfig::instant("m")).await;
    let db = fresh_db(Db::Sqlite).await.unwrap();
    let gw = TestGateway::start(Setup::one("m", &sim.url, 8), &db.url).await;
    gw.tenant("lab", 1).await;
    gw.tenant("idle", 1).await;
    let (_, key) = gw.key("lab", None).await;
    let (_, idle_key) = gw.key("idle", None).await;
    for _ in 0..3 {
        let r = gw
            .post(&key, "/v1/chat/completions", chat("m", 3, true))
            .await;
        assert_eq!(r.status(), 200);
        r.text().await.unwrap();
    }
    // `idle` is known to the pool (a refused request) but never got a token.
    let r = gw
        .post(
            &idle_key,
            "/v1/chat/completions",
            chat("no-such-model", 3, false),
        )
        .await;
    assert_eq!(r.status(), 404);
    user(&gw, "ops@example.org", "operator", None).await;
    let cookie = session_cookie(&sign_in(&gw, "ops@example.org", PASSWORD).await);
    let (s, body) = get_page(&gw, &cookie, "/portal/api/scheduler").await;
    assert_eq!(s, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    let tenants = v["models"][0]["tenants"].as_array().unwrap().clone();
    let lab = tenants.iter().find(|t| t["tenant"] == "lab").unwrap();
    let (p50, p99) = (
        lab["ttft_p50_ms"].as_f64().unwrap(),
        lab["ttft_p99_ms"].as_f64().unwrap(),
    );
    assert!(p50 >= 0.0 && p99 >= p50, "{lab}");
    if let Some(idle) = tenants.iter().find(|t| t["tenant"] == "idle") {
        assert!(idle["ttft_p50_ms"].is_null(), "{idle}");
    }
    let (_, page) = get_page(&gw, &cookie, "/portal/operator").await;
    assert!(
        page.contains("TTFT p50 / p99"),
        "the live table has the column"
    );
    let metrics = reqwest::get(format!("{}/metrics", gw.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            "fairgate_tenant_time_to_first_token_seconds_count{model=\"m\",tenant=\"lab\"} 3"
        ),
        "per-tenant TTFT histogram in /metrics"
    );
    gw.shutdown().await;
}

/// The telemetry pages: the operator's per-model series and top lists add up to the ledger,
/// the queue depth is sampled, and a person sees exactly their own requests.
#[tokio::test]
async fn telemetry_adds_up_to_the_ledger_and_each_person_sees_their_own() {
    let sim = Sim::start(SimConfig::instant("m")).await;
    let db = fresh_db(Db::Sqlite).await.unwrap();
    let gw = TestGateway::start(Setup::one("m", &sim.url, 8), &db.url).await;
    gw.tenant("lab", 1).await;
    gw.tenant("other", 1).await;
    user(&gw, "ada@example.org", "user", Some("lab")).await;
    user(&gw, "ops@example.org", "operator", None).await;
    let ada_key = user_key(&gw, "lab", "ada@example.org").await;
    let (_, other_key) = gw.key("other", None).await;
    for n in [3, 5, 7] {
        call(&gw, &ada_key, n).await;
    }
    for _ in 0..2 {
        let r = gw
            .post(&other_key, "/v1/chat/completions", chat("m", 20, true))
            .await;
        assert_eq!(r.status(), 200);
        r.text().await.unwrap();
    }
    let rows = gw.wait_rows(None, 5).await;
    let of = |tenant: &str, f: &str| -> u64 {
        rows.iter()
            .filter(|r| r["tenant"] == tenant)
            .map(|r| r[f].as_u64().unwrap_or(0))
            .sum()
    };
    let ops = session_cookie(&sign_in(&gw, "ops@example.org", PASSWORD).await);
    let ada = session_cookie(&sign_in(&gw, "ada@example.org", PASSWORD).await);

    // The queue depth is sampled once a second, so it appears shortly after start.
    let mut o = Value::Null;
    for _ in 0..50 {
        let (s, body) = get_page(&gw, &ops, "/portal/api/telemetry?minutes=15").await;
        assert_eq!(s, 200, "{body}");
        o = serde_json::from_str(&body).unwrap();
        if o["models"][0]["points"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["queue_depth"].is_number())
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let m = &o["models"][0];
    assert_eq!(m["model"], "m", "{o}");
    assert_eq!(m["requests"], 5, "{m}");
    assert_eq!(m["errors"], 0, "{m}");
    assert_eq!(
        m["tokens_in"].as_u64().unwrap(),
        of("lab", "prompt_tokens") + of("other", "prompt_tokens")
    );
    assert_eq!(
        m["tokens_out"].as_u64().unwrap(),
        of("lab", "completion_tokens") + of("other", "completion_tokens")
    );
    assert!(m["ttft_p50_ms"].is_number(), "{m}");
    let points = m["points"].as_array().unwrap();
    assert_eq!(points.len(), 90, "15 minutes in 10-second steps");
    assert!(
        points.iter().any(|p| p["queue_depth"] == 0.0),
        "the queue was sampled: {m}"
    );
    let per_s: f64 = points
        .iter()
        .map(|p| p["requests_per_s"].as_f64().unwrap() * 10.0)
        .sum();
    assert!((per_s - 5.0).abs() < 1e-6, "{per_s}");
    let tenants = o["top_tenants_by_tokens"].as_array().unwrap();
    let tokens_of = |t: &str| of(t, "prompt_tokens") + of(t, "completion_tokens");
    let (first, second) = if tokens_of("other") >= tokens_of("lab") {
        ("other", "lab")
    } else {
        ("lab", "other")
    };
    assert_eq!(tenants[0]["name"], first, "{o}");
    assert_eq!(tenants[1]["name"], second, "{o}");
    assert_eq!(tenants[0]["tokens"].as_u64().unwrap(), tokens_of(first));
    let users = o["top_users_by_tokens"].as_array().unwrap();
    let ada_row = users
        .iter()
        .find(|u| u["name"] == "ada@example.org")
        .unwrap_or_else(|| panic!("ada among the top users: {o}"));
    assert_eq!(ada_row["requests"], 3);
    assert_eq!(ada_row["tokens"].as_u64().unwrap(), tokens_of("lab"));

    // The page draws the charts; its live fragment is the same without the layout.
    let (s, page) = get_page(&gw, &ops, "/portal/operator/telemetry").await;
    assert_eq!(s, 200);
    for want in [
        "data-model=\"m\"",
        "<polyline",
        "Time to first token",
        "Queue depth",
        "Prefix-cache hit rate",
        "Users by spend",
        "data-live-src=\"/portal/operator/telemetry/live?minutes=60\"",
    ] {
        assert!(page.contains(want), "{want} missing from the page");
    }
    let (s, live) = get_page(&gw, &ops, "/portal/operator/telemetry/live").await;
    assert_eq!(s, 200);
    assert!(live.contains("data-model=\"m\"") && !live.contains("<html"));

    // Ada sees her three requests, and not the other tenant's two.
    let (s, body) = get_page(&gw, &ada, "/portal/api/telemetry/me").await;
    assert_eq!(s, 200);
    let me: Value = serde_json::from_str(&body).unwrap();
    let minutes = me["minutes"].as_array().unwrap();
    assert_eq!(minutes.len(), 60);
    let total = |f: &str| -> u64 { minutes.iter().map(|p| p[f].as_u64().unwrap()).sum() };
    assert_eq!(total("requests"), 3);
    assert_eq!(total("tokens_out"), of("lab", "completion_tokens"));
    assert!(minutes.iter().any(|p| p["ttft_p50_ms"].is_number()));
    let (_, usage) = get_page(&gw, &ada, "/portal/usage").await;
    assert!(usage.contains("id=\"my-telemetry\"") && usage.contains("Your time to first token"));
    let (s, live) = get_page(&gw, &ada, "/portal/usage/live").await;
    assert_eq!(s, 200);
    assert!(
        live.contains(&format!("3 requests · {} tokens", tokens_of("lab"))),
        "{live}"
    );
    // The operator's numbers are not a user's to see.
    let (s, _) = get_page(&gw, &ada, "/portal/api/telemetry").await;
    assert_eq!(s, 403);
    gw.shutdown().await;
}
