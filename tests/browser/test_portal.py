"""The portal in real headless Chromium: sign-in, keys, history, usage, the operator's live
fair-share view, the audit log and role checks. Explicit waits only."""

from __future__ import annotations

import uuid

from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from _browser_support import WAIT_S, chat, http_json, shot


def wait(driver, timeout: float = WAIT_S) -> WebDriverWait:
    return WebDriverWait(driver, timeout, poll_frequency=0.2)


def heading(driver) -> str:
    return driver.find_element(By.CSS_SELECTOR, "main h1").text


def open_page(driver, url: str, title: str) -> None:
    driver.get(url)
    wait(driver).until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, "main h1"), title))


def sign_in(driver, gateway, email: str, password: str, screenshot: str | None = None) -> None:
    open_page(driver, gateway["portal_url"] + "/login", "Sign in")
    driver.find_element(By.NAME, "email").send_keys(email)
    driver.find_element(By.NAME, "password").send_keys(password)
    if screenshot:
        shot(driver, screenshot)
    driver.find_element(By.XPATH, "//button[normalize-space()='Sign in']").click()
    wait(driver).until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, "main h1"), "Your API keys"))
    assert email in driver.find_element(By.TAG_NAME, "header").text


def reload_until_text(driver, url: str, css: str, text: str, timeout: float = WAIT_S) -> None:
    """Waits for `text` in `css`, reloading `url` between polls (server-rendered pages)."""

    def ready(d):
        d.get(url)
        return any(text in e.text for e in d.find_elements(By.CSS_SELECTOR, css))

    WebDriverWait(driver, timeout, poll_frequency=0.5).until(ready, f"`{text}` never appeared in {css} at {url}")


def key_row(driver, name: str):
    rows = [r for r in driver.find_elements(By.CSS_SELECTOR, "main table tbody tr")
            if r.find_elements(By.TAG_NAME, "td") and r.find_elements(By.TAG_NAME, "td")[0].text == name]
    assert len(rows) == 1, f"want one row for key {name!r}, got {len(rows)}"
    return rows[0]


def test_user_creates_uses_and_revokes_a_key(driver, gateway, make_user):
    email, password = make_user("user")
    portal = gateway["portal_url"]
    sign_in(driver, gateway, email, password, screenshot="01-login")

    # Create a key restricted to sim-llama.
    name = f"browser-{uuid.uuid4().hex[:8]}"
    driver.find_element(By.NAME, "name").send_keys(name)
    driver.find_element(By.NAME, "expires_days").send_keys("7")
    driver.find_element(By.CSS_SELECTOR, "input[name='models'][value='sim-llama']").click()
    shot(driver, "02-keys")
    driver.find_element(By.XPATH, "//button[normalize-space()='Create key']").click()
    secret_el = wait(driver).until(EC.visibility_of_element_located((By.ID, "secret")))
    assert heading(driver) == "Key created"
    secret = secret_el.text.strip()
    assert secret.startswith("fgk_"), secret
    snippet = driver.find_element(By.ID, "snippet").text
    assert secret in snippet and gateway["base_url"] in snippet and "sim-llama" in snippet, snippet
    shot(driver, "03-key-created")

    # The secret is shown once: the keys page lists the key but never the secret.
    open_page(driver, portal, "Your API keys")
    assert secret not in driver.page_source
    row = key_row(driver, name)
    assert "active" in row.text and "sim-llama" in row.text and email in row.text, row.text

    # The key works against the OpenAI API, and the request shows up in history and usage.
    status, text = chat(gateway, secret, "sim-llama")
    assert status == 200, f"chat with the new key: HTTP {status}: {text[:500]}"
    other = next(m for m in gateway["models"] if m != "sim-llama")
    status, text = chat(gateway, secret, other)
    assert status in (403, 404), f"key restricted to sim-llama used {other}: HTTP {status}: {text[:300]}"

    reload_until_text(driver, portal + "/history", "main table tbody td", "sim-llama")
    assert heading(driver) == "Your requests"
    shot(driver, "04-history")

    open_page(driver, portal + "/usage", "Your usage")
    svgs = wait(driver).until(EC.presence_of_all_elements_located((By.CSS_SELECTOR, "main svg")))
    assert any("sim-llama" in s.text for s in svgs), [s.text for s in svgs]
    shot(driver, "05-usage")

    # The playground streams a reply through the same key.
    open_page(driver, portal + "/playground", "Playground")
    driver.find_element(By.ID, "key").send_keys(secret)
    driver.find_element(By.CSS_SELECTOR, "#play button[type=submit]").click()
    wait(driver).until(lambda d: "first token" in d.find_element(By.ID, "meta").text)
    assert driver.find_element(By.ID, "reply").text.strip(), "the playground showed no reply"
    assert "tokens" in driver.find_element(By.ID, "meta").text
    shot(driver, "05b-playground")

    # Revoke in the browser; the API refuses the key from then on.
    open_page(driver, portal, "Your API keys")
    row = key_row(driver, name)
    row.find_element(By.XPATH, ".//button[normalize-space()='Revoke']").click()
    # The POST redirects back to /portal: wait for the old page to go, then for the new state.
    wait(driver).until(EC.staleness_of(row))
    WebDriverWait(driver, WAIT_S, poll_frequency=0.2,
                  ignored_exceptions=(StaleElementReferenceException, AssertionError)).until(
        lambda d: heading(d) == "Your API keys" and "revoked" in key_row(d, name).text,
        f"key {name} never showed as revoked")
    assert not key_row(driver, name).find_elements(By.XPATH, ".//button[normalize-space()='Revoke']")
    status, text = chat(gateway, secret, "sim-llama")
    assert status == 401, f"revoked key: HTTP {status}: {text[:500]}"


def test_operator_changes_weight_live_and_it_is_audited(driver, gateway):
    # A request through the demo key so tenant `demo` is in the scheduler's live view.
    status, text = chat(gateway, gateway["key"], "sim-llama")
    assert status == 200, f"chat with the demo key: HTTP {status}: {text[:500]}"

    portal = gateway["portal_url"]
    sign_in(driver, gateway, gateway["portal_email"], gateway["portal_password"])
    nav = driver.find_element(By.CSS_SELECTOR, "nav").text
    assert "Fair share" in nav and "Audit log" in nav, nav

    open_page(driver, portal + "/operator", "Operator: fair share")
    current = driver.find_element(By.CSS_SELECTOR, "span[data-weight='demo']").text
    new = "5" if current != "5" else "7"
    form = driver.find_element(By.CSS_SELECTOR, "form[action='/portal/operator/tenants/demo/weight']")
    field = form.find_element(By.NAME, "weight")
    field.clear()
    field.send_keys(new)
    form.find_element(By.XPATH, ".//button[normalize-space()='Set']").click()

    # Back on the operator page: the tenants table shows the stored weight ...
    wait(driver).until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, "span[data-weight='demo']"), new))
    # ... and the live view, once its script has refreshed, shows the scheduler's.
    cell = (By.CSS_SELECTOR, "#live tr[data-tenant='demo'] td.w")
    wait(driver).until(EC.presence_of_element_located(cell))
    WebDriverWait(driver, WAIT_S, poll_frequency=0.2, ignored_exceptions=(StaleElementReferenceException,)).until(
        lambda d: (c := d.find_elements(*cell)) and all(e.text == new for e in c),
        f"live view never showed weight {new} for demo")
    shot(driver, "06-operator")

    open_page(driver, portal + "/audit", "Audit log")
    rows = driver.find_elements(By.CSS_SELECTOR, "main table tbody tr")
    hits = [r.text for r in rows if "tenant.update" in r.text and "tenant:demo" in r.text]
    assert hits, [r.text for r in rows]
    assert gateway["portal_email"] in hits[0], hits[0]
    shot(driver, "07-audit")


def test_user_role_is_refused_operator_pages(driver, gateway, make_user):
    email, password = make_user("user")
    portal = gateway["portal_url"]
    sign_in(driver, gateway, email, password)
    nav = driver.find_element(By.CSS_SELECTOR, "nav").text
    assert "Fair share" not in nav and "Audit log" not in nav, nav

    for path in ("/operator", "/audit"):
        open_page(driver, portal + path, "Forbidden")
        assert "may not use this page" in driver.find_element(By.CSS_SELECTOR, "main").text
    shot(driver, "08-forbidden")

    # The same session cookie over plain HTTP: the status really is 403, the JSON API too.
    cookie = "; ".join(f"{c['name']}={c['value']}" for c in driver.get_cookies())
    for path in ("/operator", "/audit", "/api/scheduler"):
        status, _ = http_json("GET", portal + path, cookie=cookie)
        assert status == 403, f"GET /portal{path} as a user: HTTP {status}"

    # Signing out ends the session: the portal sends the browser back to sign-in.
    driver.get(portal)
    driver.find_element(By.XPATH, "//button[normalize-space()='Sign out']").click()
    wait(driver).until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, "main h1"), "Sign in"))
    open_page(driver, portal, "Sign in")
    status, body = http_json("GET", portal + "/operator", cookie=cookie)  # follows the redirect
    assert status == 200 and "Sign in" in body, f"the signed-out session still authenticates: HTTP {status}"


def test_wrong_password_is_refused(driver, gateway, make_user):
    email, _ = make_user("user")
    open_page(driver, gateway["portal_url"] + "/login", "Sign in")
    driver.find_element(By.NAME, "email").send_keys(email)
    driver.find_element(By.NAME, "password").send_keys("not-the-password-at-all")
    driver.find_element(By.XPATH, "//button[normalize-space()='Sign in']").click()
    alert = wait(driver).until(EC.visibility_of_element_located((By.CSS_SELECTOR, "p.error[role='alert']")))
    assert "Wrong email or password" in alert.text
    assert heading(driver) == "Sign in"
