//! Guardrail policies in the portal (issue 16): an operator sets a tenant's and a key's modes
//! on a form; the change is live at the next request, audited once with the modes before and
//! after, refused for people who are not operators and for modes that cannot work (with the
//! reason on the form and nothing changed). The same change through the admin API is audited
//! the same way.

mod common;

use common::portal::*;
use common::*;
use fairgate_sim::SimConfig;
use reqwest::{header, Method};
use serde_json::{json, Value};

const PASSWORD: &str = "correct horse battery staple";
const OPS: &str = "ops@example.org";
const EMAIL: &str = "jane.doe@example.com";

async fn user(gw: &TestGateway, email: &str, role: &str) {
    let (s, v) = gw
        .admin(
            Method::POST,
            "/users",
            Some(json!({"email": email, "password": PASSWORD, "role": role, "tenant": "lab"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
}

async fn sign_in(gw: &TestGateway, email: &str) -> Session {
    signed_in(gw, email, PASSWORD).await
}

/// Posts a form with the session's token; returns status, `Location` and body.
async fn post(
    gw: &TestGateway,
    s: &Session,
    path: &str,
    fields: &[(&str, &str)],
) -> (u16, String, String) {
    let mut form: Vec<(&str, &str)> = vec![("csrf", &s.csrf)];
    form.extend_from_slice(fields);
    let r = browser()
        .post(format!("{}{path}", gw.base))
        .header(header::COOKIE, &s.cookie)
        .form(&form)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let location = r
        .headers()
        .get(header::LOCATION)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, location, r.text().await.unwrap())
}

fn with_email() -> Value {
    json!({
        "model": "m",
        "messages": [{"role": "user", "content": format!("Please write to {EMAIL} about the meeting.")}],
        "max_tokens": 4,
    })
}

/// The audit log, newest first: (actor, action, target, before, after).
async fn audit(gw: &TestGateway) -> Vec<(String, String, String, Value, Value)> {
    let (s, v) = gw.admin(Method::GET, "/audit?limit=1000", None).await;
    assert_eq!(s, 200, "{v}");
    let json = |x: &Value| {
        x.as_str()
            .map(|t| serde_json::from_str(t).unwrap())
            .unwrap_or(Value::Null)
    };
    v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["actor"].as_str().unwrap().to_owned(),
                e["action"].as_str().unwrap().to_owned(),
                e["target"].as_str().unwrap().to_owned(),
                json(&e["before"]),
                json(&e["after"]),
            )
        })
        .collect()
}

async fn modes(gw: &TestGateway, path: &str) -> Value {
    let (s, v) = gw.admin(Method::GET, path, None).await;
    assert_eq!(s, 200, "{v}");
    v["policy"]
        .get("guardrails")
        .cloned()
        .unwrap_or_else(|| json!({}))
}

#[tokio::test]
async fn an_operator_sets_guardrails_on_the_portal_live_and_audited() {
    let sim = Sim::start(SimConfig::instant("m")).await;
    let db = fresh_db(Db::Sqlite).await.unwrap();
    let gw = TestGateway::start(Setup::one("m", &sim.url, 8), &db.url).await;
    gw.tenant("lab", 1).await;
    user(&gw, OPS, "operator").await;
    user(&gw, "ada@example.org", "user").await;
    user(&gw, "tom@example.org", "tenant_admin").await;
    let (key_id, secret) = gw.key("lab", None).await;

    // Off by default: an e-mail in the prompt goes through.
    let r = gw.post(&secret, "/v1/chat/completions", with_email()).await;
    assert_eq!(r.status(), 200);

    let ops = sign_in(&gw, OPS).await;
    let tenant_page = "/portal/operator/tenants/lab";
    let (s, page) = get_page(&gw, &ops.cookie, tenant_page).await;
    assert_eq!(s, 200);
    assert!(
        page.contains("action=\"/portal/operator/tenants/lab/guardrails\"")
            && page.contains("<select name=\"pii\">")
            && page.contains("<select name=\"injection\">"),
        "{page}"
    );
    // The injection select offers no `redact`.
    let injection = &page[page.find("<select name=\"injection\">").unwrap()..];
    let injection = &injection[..injection.find("</select>").unwrap()];
    assert!(!injection.contains("value=\"redact\""), "{injection}");
    assert!(
        page.contains("data-effective=\"m:pii\">off</span>"),
        "{page}"
    );
    let entries = audit(&gw).await.len();

    // A plain user and a tenant admin may not post the form, even with their own token.
    for who in ["ada@example.org", "tom@example.org"] {
        let s = sign_in(&gw, who).await;
        let r = post(
            &gw,
            &s,
            "/portal/operator/tenants/lab/guardrails",
            &[("pii", "block")],
        )
        .await;
        assert_eq!(r.0, 403, "{who}: {r:?}");
        let r = post(
            &gw,
            &s,
            &format!("/portal/operator/keys/{key_id}/guardrails"),
            &[("pii", "block")],
        )
        .await;
        assert_eq!(r.0, 403, "{who}: {r:?}");
        let (status, _) =
            get_page(&gw, &s.cookie, &format!("/portal/operator/keys/{key_id}")).await;
        assert_eq!(status, 403, "{who}");
    }
    // Without the token: refused too.
    let r = browser()
        .post(format!(
            "{}/portal/operator/tenants/lab/guardrails",
            gw.base
        ))
        .header(header::COOKIE, &ops.cookie)
        .form(&[("pii", "block")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // A mode that cannot work: the form again with the reason, nothing changed.
    let (s, _, page) = post(
        &gw,
        &ops,
        "/portal/operator/tenants/lab/guardrails",
        &[("pii", "block"), ("injection", "redact")],
    )
    .await;
    assert_eq!(s, 400, "{page}");
    assert!(page.contains("id=\"form-error\""), "{page}");
    assert!(page.contains("Prompt injection"), "{page}");
    assert!(page.contains("applies to PII only"), "{page}");
    assert!(!page.contains("policy.guardrails"), "{page}");
    let (s, _, page) = post(
        &gw,
        &ops,
        "/portal/operator/tenants/lab/guardrails",
        &[("pii", "sometimes")],
    )
    .await;
    assert_eq!(s, 400, "{page}");
    assert!(page.contains("`sometimes` is not a mode"), "{page}");
    assert_eq!(modes(&gw, "/tenants/lab").await, json!({}));
    assert_eq!(
        audit(&gw).await.len(),
        entries,
        "a refused form was audited"
    );
    let r = gw.post(&secret, "/v1/chat/completions", with_email()).await;
    assert_eq!(r.status(), 200);

    // The operator sets pii to block: live at the next request, one audit entry.
    let (s, location, body) = post(
        &gw,
        &ops,
        "/portal/operator/tenants/lab/guardrails",
        &[("pii", "block"), ("injection", "")],
    )
    .await;
    assert_eq!((s, location.as_str()), (303, tenant_page), "{body}");
    assert_eq!(modes(&gw, "/tenants/lab").await, json!({"pii": "block"}));
    let r = gw.post(&secret, "/v1/chat/completions", with_email()).await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "guardrail_pii", "{v}");
    let log = audit(&gw).await;
    assert_eq!(log.len(), entries + 1, "one entry per change: {log:?}");
    assert_eq!(
        log[0],
        (
            OPS.to_owned(),
            "tenant.guardrails".to_owned(),
            "tenant:lab".to_owned(),
            json!({}),
            json!({"pii": "block"})
        )
    );
    let (_, page) = get_page(&gw, &ops.cookie, "/portal/audit").await;
    assert!(page.contains("tenant.guardrails"), "{page}");
    assert!(!page.contains(&secret));

    // The page shows the tenant's modes and what applies, with where it comes from.
    let (_, page) = get_page(&gw, &ops.cookie, tenant_page).await;
    assert!(
        page.contains("data-setting=\"guardrails\">pii block, injection inherit"),
        "{page}"
    );
    assert!(
        page.contains("data-effective=\"m:pii\">block</span> <span class=\"muted\">(tenant)"),
        "{page}"
    );
    assert!(
        page.contains("data-effective=\"m:injection\">off</span> <span class=\"muted\">(gateway)"),
        "{page}"
    );
    assert!(
        page.contains(&format!("data-key-link=\"{key_id}\"")),
        "{page}"
    );
    // The same modes again: nothing to change, nothing audited.
    let (s, _, _) = post(
        &gw,
        &ops,
        "/portal/operator/tenants/lab/guardrails",
        &[("pii", "block")],
    )
    .await;
    assert_eq!(s, 303);
    assert_eq!(audit(&gw).await.len(), entries + 1);
    // A tenant admin sees the tenant's modes (read only).
    let tom = sign_in(&gw, "tom@example.org").await;
    let (_, page) = get_page(&gw, &tom.cookie, "/portal/tenant").await;
    assert!(page.contains("pii block, injection inherit"), "{page}");

    // The key's page: its own modes go over the tenant's.
    let key_page = format!("/portal/operator/keys/{key_id}");
    let (s, page) = get_page(&gw, &ops.cookie, &key_page).await;
    assert_eq!(s, 200);
    assert!(
        page.contains("data-effective=\"m:pii\">block</span> <span class=\"muted\">(tenant)"),
        "{page}"
    );
    let (s, location, body) = post(
        &gw,
        &ops,
        &format!("{key_page}/guardrails"),
        &[("pii", "log"), ("injection", "block")],
    )
    .await;
    assert_eq!((s, location.as_str()), (303, key_page.as_str()), "{body}");
    assert_eq!(
        modes(&gw, &format!("/keys/{key_id}")).await,
        json!({"pii": "log", "injection": "block"})
    );
    let r = gw.post(&secret, "/v1/chat/completions", with_email()).await;
    assert_eq!(
        r.status(),
        200,
        "the key's log goes over the tenant's block"
    );
    let log = audit(&gw).await;
    assert_eq!(
        log[0],
        (
            OPS.to_owned(),
            "key.guardrails".to_owned(),
            format!("key:{key_id}"),
            json!({}),
            json!({"pii": "log", "injection": "block"})
        )
    );
    let (_, page) = get_page(&gw, &ops.cookie, &key_page).await;
    assert!(
        page.contains("data-effective=\"m:pii\">log</span> <span class=\"muted\">(key)"),
        "{page}"
    );
    let (s, _, page) = post(
        &gw,
        &ops,
        &format!("{key_page}/guardrails"),
        &[("pii", "inherit"), ("injection", "redact")],
    )
    .await;
    assert_eq!(s, 400);
    assert!(
        page.contains("applies to PII only") && page.contains("id=\"form-error\""),
        "{page}"
    );
    assert_eq!(
        modes(&gw, &format!("/keys/{key_id}")).await,
        json!({"pii": "log", "injection": "block"})
    );
    // Back to inherit: the tenant's block applies again.
    let (s, _, _) = post(
        &gw,
        &ops,
        &format!("{key_page}/guardrails"),
        &[("pii", ""), ("injection", "")],
    )
    .await;
    assert_eq!(s, 303);
    assert_eq!(modes(&gw, &format!("/keys/{key_id}")).await, json!({}));
    let r = gw.post(&secret, "/v1/chat/completions", with_email()).await;
    assert_eq!(r.status(), 400);
    let (_, page) = get_page(&gw, &ops.cookie, "/portal/operator/keys/nope").await;
    assert!(page.contains("There is no key"), "{page}");
    gw.shutdown().await;
}

#[tokio::test]
async fn guardrail_changes_through_the_admin_api_are_audited_like_the_portal_s() {
    let sim = Sim::start(SimConfig::instant("m")).await;
    let db = fresh_db(Db::Sqlite).await.unwrap();
    let gw = TestGateway::start(Setup::one("m", &sim.url, 8), &db.url).await;
    gw.tenant("lab", 1).await;
    let (key_id, secret) = gw.key("lab", None).await;

    // Only the modes change: the same entry as the portal's form writes.
    let (s, v) = gw
        .admin(
            Method::PATCH,
            "/tenants/lab",
            Some(json!({"policy": {"guardrails": {"pii": "block"}}})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let log = audit(&gw).await;
    assert_eq!(
        log[0],
        (
            "admin-token".to_owned(),
            "tenant.guardrails".to_owned(),
            "tenant:lab".to_owned(),
            json!({}),
            json!({"pii": "block"})
        )
    );
    let r = gw.post(&secret, "/v1/chat/completions", with_email()).await;
    assert_eq!(r.status(), 400);

    let (s, v) = gw
        .admin(
            Method::PATCH,
            &format!("/keys/{key_id}"),
            Some(json!({"policy": {"guardrails": {"pii": "redact", "injection": "log"}}})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let log = audit(&gw).await;
    assert_eq!(
        log[0],
        (
            "admin-token".to_owned(),
            "key.guardrails".to_owned(),
            format!("key:{key_id}"),
            json!({}),
            json!({"pii": "redact", "injection": "log"})
        )
    );

    // Modes and something else: one `tenant.update`, whose before and after hold the modes.
    let (s, v) = gw
        .admin(
            Method::PATCH,
            "/tenants/lab",
            Some(json!({"weight": 3, "policy": {"guardrails": {"pii": "log"}}})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let log = audit(&gw).await;
    let (actor, action, target, before, after) = &log[0];
    assert_eq!(
        (actor.as_str(), action.as_str(), target.as_str()),
        ("admin-token", "tenant.update", "tenant:lab")
    );
    assert_eq!(before["policy"]["guardrails"], json!({"pii": "block"}));
    assert_eq!(after["policy"]["guardrails"], json!({"pii": "log"}));
    assert_eq!(after["weight"], 3);
    assert_eq!(log.len(), 5, "one entry per change: {log:?}");

    // Refused through the admin API in the same words, nothing audited.
    let (s, v) = gw
        .admin(
            Method::PATCH,
            "/tenants/lab",
            Some(json!({"policy": {"guardrails": {"injection": "redact"}}})),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v.to_string().contains("policy.guardrails.injection") && v.to_string().contains("PII only"),
        "{v}"
    );
    assert_eq!(audit(&gw).await.len(), 5);
    gw.shutdown().await;
}
