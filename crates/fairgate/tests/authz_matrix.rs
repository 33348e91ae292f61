//! Every portal route against every kind of caller: anonymous, a user, a tenant admin and an
//! operator, plus for forms an operator without or with a wrong CSRF token. The routes are one
//! table here, checked against the portal's own [`fairgate_portal::route_table`], so a route
//! added to the portal without a row here fails this test instead of going unchecked.

mod common;

use std::collections::BTreeSet;

use common::portal::*;
use common::*;
use fairgate_sim::SimConfig;
use reqwest::{header, Method};
use serde_json::json;

const PASSWORD: &str = "correct horse battery staple";

/// Who may use a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Access {
    /// No sign-in: the sign-in page and form, static files, OIDC.
    Public,
    User,
    TenantAdmin,
    Operator,
}

use Access::*;

/// One route: method, the router's path pattern (under `/portal`), who may use it, the path
/// actually requested (`{key}`: a key the caller may manage, the first on their keys page;
/// `{victim}`: a user to off-board), and
/// the form fields a POST sends besides `csrf`. Rows run in this order; sign-out is last,
/// since it ends the caller's session.
type Row = (
    &'static str,
    &'static str,
    Access,
    &'static str,
    &'static [(&'static str, &'static str)],
);

const ROUTES: &[Row] = &[
    ("GET", "/static/app.js", Public, "/static/app.js", &[]),
    ("GET", "/static/app.css", Public, "/static/app.css", &[]),
    ("GET", "/login", Public, "/login", &[]),
    ("POST", "/login", Public, "/login", &[]),
    ("GET", "/oidc/start", Public, "/oidc/start", &[]),
    ("GET", "/oidc/callback", Public, "/oidc/callback", &[]),
    ("GET", "/", User, "", &[]),
    ("POST", "/keys", User, "/keys", &[("name", "matrix")]),
    ("POST", "/keys/{id}/rotate", User, "/keys/{key}/rotate", &[]),
    ("POST", "/keys/{id}/revoke", User, "/keys/{key}/revoke", &[]),
    ("GET", "/usage", User, "/usage", &[]),
    ("GET", "/history", User, "/history", &[]),
    ("GET", "/playground", User, "/playground", &[]),
    ("GET", "/models", User, "/models", &[]),
    ("GET", "/tenant", TenantAdmin, "/tenant", &[]),
    ("GET", "/export.csv", TenantAdmin, "/export.csv", &[]),
    ("GET", "/export-su.csv", Operator, "/export-su.csv", &[]),
    ("GET", "/operator", Operator, "/operator", &[]),
    ("GET", "/api/scheduler", Operator, "/api/scheduler", &[]),
    (
        "GET",
        "/operator/telemetry",
        Operator,
        "/operator/telemetry",
        &[],
    ),
    (
        "GET",
        "/operator/telemetry/live",
        Operator,
        "/operator/telemetry/live",
        &[],
    ),
    ("GET", "/api/telemetry", Operator, "/api/telemetry", &[]),
    ("GET", "/usage/live", User, "/usage/live", &[]),
    ("GET", "/api/telemetry/me", User, "/api/telemetry/me", &[]),
    (
        "GET",
        "/operator/tenants",
        Operator,
        "/operator/tenants",
        &[],
    ),
    (
        "POST",
        "/operator/tenants",
        Operator,
        "/operator/tenants",
        &[("name", "newco"), ("weight", "2"), ("group", "")],
    ),
    (
        "GET",
        "/operator/tenants/{name}",
        Operator,
        "/operator/tenants/lab",
        &[],
    ),
    (
        "POST",
        "/operator/tenants/{name}/weight",
        Operator,
        "/operator/tenants/lab/weight",
        &[("weight", "3")],
    ),
    (
        "POST",
        "/operator/groups",
        Operator,
        "/operator/groups",
        &[("name", "sci"), ("weight", "2")],
    ),
    (
        "POST",
        "/operator/groups/{name}/weight",
        Operator,
        "/operator/groups/sci/weight",
        &[("weight", "4")],
    ),
    (
        "POST",
        "/operator/tenants/{name}/group",
        Operator,
        "/operator/tenants/lab/group",
        &[("group", "sci")],
    ),
    (
        "POST",
        "/operator/tenants/{name}/policy",
        Operator,
        "/operator/tenants/lab/policy",
        &[("rpm", "600")],
    ),
    (
        "POST",
        "/operator/tenants/{name}/budgets",
        Operator,
        "/operator/tenants/lab/budgets",
        &[("period", "day"), ("tokens", "100000")],
    ),
    (
        "POST",
        "/operator/tenants/{name}/budgets/{period}/remove",
        Operator,
        "/operator/tenants/lab/budgets/day/remove",
        &[],
    ),
    (
        "POST",
        "/operator/tenants/{name}/guardrails",
        Operator,
        "/operator/tenants/lab/guardrails",
        &[("pii", "log"), ("injection", "block")],
    ),
    (
        "GET",
        "/operator/keys/{id}",
        Operator,
        "/operator/keys/{key}",
        &[],
    ),
    (
        "POST",
        "/operator/keys/{id}/guardrails",
        Operator,
        "/operator/keys/{key}/guardrails",
        &[("pii", "redact")],
    ),
    (
        "GET",
        "/operator/backends",
        Operator,
        "/operator/backends",
        &[],
    ),
    ("GET", "/api/backends", Operator, "/api/backends", &[]),
    (
        "POST",
        "/operator/models/{model}/backends",
        Operator,
        "/operator/models/m/backends",
        &[("url", "http://127.0.0.1:9"), ("max_in_flight", "1")],
    ),
    (
        "POST",
        "/operator/models/{model}/backends/drain",
        Operator,
        "/operator/models/m/backends/drain",
        &[("url", "http://127.0.0.1:9")],
    ),
    (
        "POST",
        "/operator/models/{model}/backends/resume",
        Operator,
        "/operator/models/m/backends/resume",
        &[("url", "http://127.0.0.1:9")],
    ),
    (
        "POST",
        "/operator/models/{model}/backends/remove",
        Operator,
        "/operator/models/m/backends/remove",
        &[("url", "http://127.0.0.1:9")],
    ),
    (
        "POST",
        "/operator/users/{id}/disable",
        Operator,
        "/operator/users/{victim}/disable",
        &[],
    ),
    (
        "POST",
        "/operator/users/{id}/enable",
        Operator,
        "/operator/users/{victim}/enable",
        &[],
    ),
    ("GET", "/audit", Operator, "/audit", &[]),
    ("POST", "/logout", User, "/logout", &[]),
];

const ROLE_REFUSED: &str = "your role may not use this page";
const TOKEN_REFUSED: &str = "the form&#39;s security token is missing or stale";

/// A signed-in caller: role, session cookie, the session's CSRF token, a key they may manage.
struct Caller {
    role: Access,
    cookie: String,
    csrf: String,
    key: String,
}

async fn user(gw: &TestGateway, email: &str, role: &str) -> String {
    let (s, v) = gw
        .admin(
            Method::POST,
            "/users",
            Some(json!({"email": email, "password": PASSWORD, "role": role, "tenant": "lab"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    v["id"].as_str().unwrap().to_owned()
}

/// Signs in, makes a key in the portal, and reads the session's token and the id of the first
/// key on the keys page (a tenant admin's and an operator's list the tenant's keys).
async fn caller(gw: &TestGateway, email: &str, role: Access) -> Caller {
    let r = browser()
        .post(format!("{}/portal/login", gw.base))
        .form(&[("email", email), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303, "{email} signs in");
    let cookie = cookie_of(&r);
    let page = |c: String| async move {
        browser()
            .get(format!("{}/portal", gw.base))
            .header(header::COOKIE, c)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let csrf = csrf_of(&page(cookie.clone()).await);
    let r = browser()
        .post(format!("{}/portal/keys", gw.base))
        .header(header::COOKIE, &cookie)
        .form(&[("csrf", csrf.as_str()), ("name", "own")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{email} makes a key");
    let keys = page(cookie.clone()).await;
    let at = keys.find("/portal/keys/").expect("the key's forms") + "/portal/keys/".len();
    let key = keys[at..at + keys[at..].find('/').unwrap()].to_owned();
    Caller {
        role,
        cookie,
        csrf,
        key,
    }
}

/// Sends one request; returns status, `Location` and body.
async fn send(
    gw: &TestGateway,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    form: Option<Vec<(&str, &str)>>,
) -> (u16, String, String) {
    let url = format!("{}/portal{path}", gw.base);
    let mut req = match method {
        "GET" => browser().get(url),
        "POST" => browser().post(url),
        m => panic!("no method {m} in the matrix"),
    };
    if let Some(c) = cookie {
        req = req.header(header::COOKIE, c);
    }
    if let Some(f) = form {
        req = req.form(&f);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let location = r
        .headers()
        .get(header::LOCATION)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, location, r.text().await.unwrap_or_default())
}

/// A POST's fields plus the token, if any; a GET sends no form.
fn form_of<'a>(
    post: bool,
    fields: &[(&'a str, &'a str)],
    csrf: Option<&'a str>,
) -> Option<Vec<(&'a str, &'a str)>> {
    post.then(|| {
        let mut f = fields.to_vec();
        f.extend(csrf.map(|t| ("csrf", t)));
        f
    })
}

fn to_sign_in((status, location, _): &(u16, String, String)) -> bool {
    *status == 303 && location == "/portal/login"
}

#[test]
fn the_table_has_every_portal_route_and_no_other() {
    let ours: BTreeSet<(&str, &str)> = ROUTES.iter().map(|r| (r.0, r.1)).collect();
    assert_eq!(ours.len(), ROUTES.len(), "a route is in the table twice");
    let portal: BTreeSet<(&str, &str)> = fairgate_portal::route_table().iter().copied().collect();
    let missing: Vec<_> = portal.difference(&ours).collect();
    assert!(
        missing.is_empty(),
        "portal routes without a row in the matrix: {missing:?}"
    );
    let stale: Vec<_> = ours.difference(&portal).collect();
    assert!(
        stale.is_empty(),
        "rows for routes the portal lacks: {stale:?}"
    );
}

#[tokio::test]
async fn every_route_checks_sign_in_role_and_csrf() {
    let sim = Sim::start(SimConfig::instant("m")).await;
    let db = fresh_db(Db::Sqlite).await.unwrap();
    let gw = TestGateway::start(Setup::one("m", &sim.url, 8), &db.url).await;
    gw.tenant("lab", 1).await;
    user(&gw, "user@example.org", "user").await;
    user(&gw, "admin@example.org", "tenant_admin").await;
    user(&gw, "op@example.org", "operator").await;
    let victim = user(&gw, "victim@example.org", "user").await;
    let callers = [
        caller(&gw, "user@example.org", User).await,
        caller(&gw, "admin@example.org", TenantAdmin).await,
        caller(&gw, "op@example.org", Operator).await,
    ];
    let operator = &callers[2];

    for &(method, pattern, access, template, fields) in ROUTES {
        let path_for = |c: &Caller| {
            template
                .replace("{key}", &c.key)
                .replace("{victim}", &victim)
        };
        let post = method == "POST";
        let form = |csrf| form_of(post, fields, csrf);
        let cell = format!("{method} {pattern}");

        // Anonymous.
        let r = send(&gw, method, &path_for(operator), None, form(None)).await;
        if access == Public {
            assert!(!to_sign_in(&r) && r.0 != 403, "{cell} anonymous: {r:?}");
        } else {
            assert!(to_sign_in(&r), "{cell} anonymous: {r:?}");
        }
        if access == Public {
            continue;
        }

        // Signed in, the CSRF token missing or wrong: refused before anything changes.
        if post {
            for (what, token) in [("without a token", None), ("a wrong token", Some("x"))] {
                let r = send(
                    &gw,
                    method,
                    &path_for(operator),
                    Some(&operator.cookie),
                    form(token),
                )
                .await;
                assert_eq!(r.0, 403, "{cell} operator with {what}: {r:?}");
                assert!(r.2.contains(TOKEN_REFUSED), "{cell} {what}: {}", r.2);
            }
        }

        // Each role, with its own valid token: too low is 403 (before the token is
        // looked at), high enough is let through.
        for c in &callers {
            let r = send(
                &gw,
                method,
                &path_for(c),
                Some(&c.cookie),
                form(Some(&c.csrf)),
            )
            .await;
            let who = format!("{cell} as {:?}", c.role);
            if c.role < access {
                assert_eq!(r.0, 403, "{who}: {r:?}");
                assert!(r.2.contains(ROLE_REFUSED), "{who}: {}", r.2);
            } else if pattern == "/logout" {
                // Signing out succeeds by going to the sign-in page: the session is gone.
                assert!(to_sign_in(&r), "{who}: {r:?}");
                let after = send(&gw, "GET", "", Some(&c.cookie), None).await;
                assert!(to_sign_in(&after), "{who}: still signed in");
            } else {
                assert!(
                    !to_sign_in(&r) && r.0 != 401 && r.0 != 403 && r.0 < 500,
                    "{who}: {r:?}"
                );
            }
        }
    }
    gw.shutdown().await;
}
