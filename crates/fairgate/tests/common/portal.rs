//! Driving the portal over HTTP the way a browser does: a client that does not follow
//! redirects (the portal answers changes with 303), signing in, and pages and forms sent with
//! the session's cookie and CSRF token.

use reqwest::header;

use super::TestGateway;

pub fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The session cookie (`name=value`) a response sets.
pub fn cookie_of(resp: &reqwest::Response) -> String {
    resp.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned()
}

/// The CSRF token of a page's forms.
pub fn csrf_of(page: &str) -> String {
    let at = page
        .find("name=\"csrf\" value=\"")
        .expect("page has a CSRF field");
    let rest = &page[at + "name=\"csrf\" value=\"".len()..];
    rest[..rest.find('"').unwrap()].to_owned()
}

pub async fn get_page(gw: &TestGateway, cookie: &str, path: &str) -> (u16, String) {
    let r = browser()
        .get(format!("{}{path}", gw.base))
        .header(header::COOKIE, cookie)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

pub async fn post_form(
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

/// A signed-in browser: its session cookie and CSRF token.
pub struct Session {
    pub cookie: String,
    pub csrf: String,
}

/// Signs in with a password (which must succeed) and reads the session's CSRF token.
pub async fn signed_in(gw: &TestGateway, email: &str, password: &str) -> Session {
    let r = browser()
        .post(format!("{}/portal/login", gw.base))
        .form(&[("email", email), ("password", password)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303, "{email} signs in");
    let cookie = cookie_of(&r);
    let (_, page) = get_page(gw, &cookie, "/portal").await;
    Session {
        csrf: csrf_of(&page),
        cookie,
    }
}
