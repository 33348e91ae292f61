//! One control plane: the same administrative change made through the admin API and through
//! the portal leaves the same store state and the same audit entry (action, target, before,
//! after); only the actor differs (the admin token vs the operator's email). Each change is
//! made through the admin API, undone, then made through the portal, and the two results are
//! compared field by field.

mod common;

use common::portal::*;
use common::*;
use fairgate_sim::SimConfig;
use reqwest::{header, Method};
use serde_json::{json, Value};

const PASSWORD: &str = "correct horse battery staple";
const OPS: &str = "ops@example.org";

struct Portal<'a> {
    gw: &'a TestGateway,
    cookie: String,
    csrf: String,
}

impl<'a> Portal<'a> {
    async fn sign_in(gw: &'a TestGateway) -> Portal<'a> {
        let Session { cookie, csrf } = signed_in(gw, OPS, PASSWORD).await;
        Portal { gw, cookie, csrf }
    }

    /// Posts a form; the portal answers a change it made with a redirect.
    async fn post(&self, path: &str, fields: &[(&str, &str)]) {
        let mut form: Vec<(&str, &str)> = vec![("csrf", &self.csrf)];
        form.extend_from_slice(fields);
        let r = browser()
            .post(format!("{}{path}", self.gw.base))
            .header(header::COOKIE, &self.cookie)
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303, "{path}: {:?}", r.text().await);
    }
}

async fn admin_ok(gw: &TestGateway, method: Method, path: &str, body: Value) -> Value {
    let (s, v) = gw.admin(method, path, Some(body)).await;
    assert!((200..300).contains(&s), "{path}: {s} {v}");
    v
}

async fn get(gw: &TestGateway, path: &str) -> Value {
    let (s, v) = gw.admin(Method::GET, path, None).await;
    assert_eq!(s, 200, "{path}: {v}");
    v
}

/// The newest audit entry: (actor, action, target, before, after).
async fn last_audit(gw: &TestGateway) -> (String, String, String, Value, Value) {
    let v = get(gw, "/audit?limit=1").await;
    let e = &v["data"][0];
    let json = |x: &Value| {
        x.as_str()
            .map(|t| serde_json::from_str(t).unwrap())
            .unwrap_or(Value::Null)
    };
    (
        e["actor"].as_str().unwrap().to_owned(),
        e["action"].as_str().unwrap().to_owned(),
        e["target"].as_str().unwrap().to_owned(),
        json(&e["before"]),
        json(&e["after"]),
    )
}

/// Runs `admin_way`, reads the state and the audit entry, runs `undo`, runs `portal_way`, and
/// asserts both ways left the same state and the same entry.
macro_rules! same_change {
    ($gw:expr, $state:expr, $admin_way:expr, $undo:expr, $portal_way:expr) => {{
        $admin_way;
        let by_admin = get($gw, $state).await;
        let (actor_a, action_a, target_a, before_a, after_a) = last_audit($gw).await;
        $undo;
        $portal_way;
        let by_portal = get($gw, $state).await;
        let (actor_p, action_p, target_p, before_p, after_p) = last_audit($gw).await;
        assert_eq!(by_admin, by_portal, "store state of {}", $state);
        assert_eq!(actor_a, "admin-token");
        assert_eq!(actor_p, OPS);
        assert_eq!(
            (&action_a, &target_a, &before_a, &after_a),
            (&action_p, &target_p, &before_p, &after_p),
            "audit entry of {}",
            $state
        );
        action_a
    }};
}

#[tokio::test]
async fn the_same_change_through_the_admin_api_and_the_portal_is_one_operation() {
    let sim = Sim::start(SimConfig::instant("m")).await;
    let db = fresh_db(Db::Sqlite).await.unwrap();
    let gw = TestGateway::start(Setup::one("m", &sim.url, 8), &db.url).await;
    gw.tenant("lab", 1).await;
    admin_ok(&gw, Method::PUT, "/groups/science", json!({"weight": 2})).await;
    admin_ok(
        &gw,
        Method::POST,
        "/users",
        json!({"email": OPS, "password": PASSWORD, "role": "operator"}),
    )
    .await;
    let dave = admin_ok(
        &gw,
        Method::POST,
        "/users",
        json!({"email": "dave@example.org", "password": PASSWORD, "role": "user", "tenant": "lab"}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let portal = Portal::sign_in(&gw).await;

    // A tenant's weight.
    let action = same_change!(
        &gw,
        "/tenants/lab",
        admin_ok(&gw, Method::PATCH, "/tenants/lab", json!({"weight": 5})).await,
        admin_ok(&gw, Method::PATCH, "/tenants/lab", json!({"weight": 1})).await,
        portal
            .post("/portal/operator/tenants/lab/weight", &[("weight", "5")])
            .await
    );
    assert_eq!(action, "tenant.update");
    assert_eq!(get(&gw, "/tenants/lab").await["weight"], 5);

    // A tenant's group.
    let action = same_change!(
        &gw,
        "/tenants/lab",
        admin_ok(
            &gw,
            Method::PATCH,
            "/tenants/lab",
            json!({"group": "science"})
        )
        .await,
        admin_ok(&gw, Method::PATCH, "/tenants/lab", json!({"group": null})).await,
        portal
            .post(
                "/portal/operator/tenants/lab/group",
                &[("group", "science")]
            )
            .await
    );
    assert_eq!(action, "tenant.update");
    assert_eq!(get(&gw, "/tenants/lab").await["group"], "science");

    // A group's weight.
    let action = same_change!(
        &gw,
        "/groups/science",
        admin_ok(&gw, Method::PUT, "/groups/science", json!({"weight": 7})).await,
        admin_ok(&gw, Method::PUT, "/groups/science", json!({"weight": 2})).await,
        portal
            .post("/portal/operator/groups/science/weight", &[("weight", "7")])
            .await
    );
    assert_eq!(action, "group.set");
    assert_eq!(get(&gw, "/groups/science").await["weight"], 7);

    // Off-boarding a person.
    let users = "/users?tenant=lab";
    let action = same_change!(
        &gw,
        users,
        admin_ok(
            &gw,
            Method::PATCH,
            &format!("/users/{dave}"),
            json!({"disabled": true})
        )
        .await,
        admin_ok(
            &gw,
            Method::PATCH,
            &format!("/users/{dave}"),
            json!({"disabled": false})
        )
        .await,
        portal
            .post(&format!("/portal/operator/users/{dave}/disable"), &[])
            .await
    );
    assert_eq!(action, "user.disable");
    gw.shutdown().await;
}
