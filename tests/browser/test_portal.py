"""The portal in real headless Chromium: sign-in, keys, history, usage, the operator's live
fair-share view and telemetry (live charts, a user's own last hour), tenant and group management, a tenant's guardrail
modes, the backends page (add, drain, live refresh, remove), the audit log and role checks. Explicit waits only."""

from __future__ import annotations

import json
import uuid

from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

from _browser_support import WAIT_S, chat, http_json, shot


def wait(driver, timeout: float = WAIT_S) -> WebDriverWait:
    # While a page is being replaced, Chromium can answer a lookup with a generic error
    # ("Node with given id does not belong to the document") instead of a stale-element
    # one: retry those too until the wait runs out.
    return WebDriverWait(driver, timeout, poll_frequency=0.2, ignored_exceptions=(WebDriverException,))


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

    # Rotate: a new secret for the same key, shown once; the old one stops working at once.
    open_page(driver, portal, "Your API keys")
    key_row(driver, name).find_element(By.XPATH, ".//button[normalize-space()='Rotate']").click()
    secret_el = wait(driver).until(EC.visibility_of_element_located((By.ID, "secret")))
    assert heading(driver) == "Key rotated"
    rotated = secret_el.text.strip()
    assert rotated != secret and rotated.startswith(secret.rsplit("_", 1)[0] + "_"), (secret, rotated)
    shot(driver, "05c-key-rotated")
    status, text = chat(gateway, secret, "sim-llama")
    assert status == 401, f"the old secret after rotation: HTTP {status}: {text[:300]}"
    status, text = chat(gateway, rotated, "sim-llama")
    assert status == 200, f"the rotated secret: HTTP {status}: {text[:300]}"
    secret = rotated

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


def requests_in(el) -> int:
    """The request count a telemetry summary line starts with (`12 requests · ...`)."""
    return int(el.text.split()[0])


def test_operator_watches_telemetry_live_and_a_user_sees_their_own(driver, gateway, make_user):
    email, password = make_user("user")
    status, text = http_json("POST", gateway["admin_url"] + "/keys", token=gateway["admin_token"],
                             body={"tenant": "demo", "name": f"tele-{uuid.uuid4().hex[:8]}", "user": email})
    assert status == 201, f"creating a key for {email}: HTTP {status}: {text[:500]}"
    key = json.loads(text)["key"]
    for _ in range(3):
        status, text = chat(gateway, key)
        assert status == 200, f"chat: HTTP {status}: {text[:300]}"

    # The operator's page: per-model charts drawn, the top lists name the tenant.
    portal = gateway["portal_url"]
    sign_in(driver, gateway, gateway["portal_email"], gateway["portal_password"])
    driver.find_element(By.LINK_TEXT, "Telemetry").click()
    wait(driver).until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, "main h1"), "Operator: telemetry"))
    summary = (By.CSS_SELECTOR, "section[data-model='sim-llama'] p.summary")
    before = requests_in(driver.find_element(*summary))
    assert before >= 3, driver.find_element(*summary).text
    assert driver.find_elements(By.CSS_SELECTOR, "section[data-model='sim-llama'] svg polyline"), \
        "no line drawn for sim-llama"
    tops = driver.find_element(By.CSS_SELECTOR, "section.top[aria-label='Tenants by tokens']").text
    assert "demo" in tops, tops

    # Live: more traffic shows up without a reload (the page's script swaps the fragment in).
    driver.execute_script("window.__same_page = true")
    for _ in range(4):
        status, text = chat(gateway, gateway["key"])
        assert status == 200, f"chat with the demo key: HTTP {status}: {text[:300]}"
    WebDriverWait(driver, WAIT_S, poll_frequency=0.5, ignored_exceptions=(WebDriverException,)).until(
        lambda d: requests_in(d.find_element(*summary)) >= before + 4,
        "the telemetry page never showed the new requests")
    assert driver.execute_script("return window.__same_page === true"), "the page was reloaded"
    shot(driver, "13-telemetry")

    # The user's own last hour, on the usage page: exactly their requests, updated live.
    driver.delete_all_cookies()
    sign_in(driver, gateway, email, password)
    open_page(driver, portal + "/usage", "Your usage")
    mine = (By.CSS_SELECTOR, "#my-telemetry p.summary")
    assert requests_in(driver.find_element(*mine)) == 3, driver.find_element(*mine).text
    driver.execute_script("window.__same_page = true")
    for _ in range(2):
        status, text = chat(gateway, key)
        assert status == 200, f"chat: HTTP {status}: {text[:300]}"
    WebDriverWait(driver, WAIT_S, poll_frequency=0.5, ignored_exceptions=(WebDriverException,)).until(
        lambda d: requests_in(d.find_element(*mine)) == 5,
        "the usage page never showed the user's new requests")
    assert driver.execute_script("return window.__same_page === true"), "the page was reloaded"
    assert driver.find_elements(By.CSS_SELECTOR, "#my-telemetry svg polyline, #my-telemetry svg circle")
    shot(driver, "14-my-telemetry")


def submit(driver, form, button: str) -> None:
    """Clicks `button` in `form` and waits until the page the POST leads to has loaded."""
    # A mark on the old document: gone once the browser has replaced it.
    driver.execute_script("window.__leaving = true")
    form.find_element(By.XPATH, f".//button[normalize-space()='{button}']").click()
    wait(driver).until(
        lambda d: d.execute_script("return document.readyState === 'complete' && !window.__leaving"),
        f"the form's `{button}` never led to a new page")


def setting(driver, name: str) -> str:
    return driver.find_element(By.CSS_SELECTOR, f"span[data-setting='{name}']").text


def test_operator_creates_a_tenant_with_weight_and_limit_live(driver, gateway):
    portal = gateway["portal_url"]
    sign_in(driver, gateway, gateway["portal_email"], gateway["portal_password"])
    driver.find_element(By.LINK_TEXT, "Manage tenants").click()
    wait(driver).until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, "main h1"), "Operator: tenants and groups"))

    suffix = uuid.uuid4().hex[:8]
    group, tenant = f"dept-{suffix}", f"lab-{suffix}"

    # A group first, so the new tenant can join it.
    form = driver.find_element(By.ID, "new-group")
    form.find_element(By.NAME, "name").send_keys(group)
    weight = form.find_element(By.NAME, "weight")
    weight.clear()
    weight.send_keys("3")
    submit(driver, form, "Add group")
    wait(driver).until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, f"span[data-group-weight='{group}']"), "3"))

    # The tenant, with a weight, in that group; the portal goes on to its page.
    form = driver.find_element(By.ID, "new-tenant")
    form.find_element(By.NAME, "name").send_keys(tenant)
    weight = form.find_element(By.NAME, "weight")
    weight.clear()
    weight.send_keys("4")
    Select(form.find_element(By.NAME, "group")).select_by_value(group)
    submit(driver, form, "Add tenant")
    assert heading(driver) == f"Tenant {tenant}"
    assert setting(driver, "weight") == "4" and setting(driver, "group") == group

    # A limit: one request a minute, refused at once beyond that.
    form = driver.find_element(By.ID, "policy")
    form.find_element(By.NAME, "rpm").send_keys("1")
    Select(form.find_element(By.NAME, "on_limit")).select_by_value("reject")
    submit(driver, form, "Save limits")
    assert "1 requests/min" in setting(driver, "limits"), setting(driver, "limits")
    assert "reject at once" in setting(driver, "on_limit")

    # A budget line without tokens or cost is refused with the reason, the form kept.
    form = driver.find_element(By.ID, "budget")
    submit(driver, form, "Save budget")
    alert = driver.find_element(By.CSS_SELECTOR, "p.error[role='alert']")
    assert "day budget: set `tokens` or `cost`" in alert.text, alert.text
    shot(driver, "11-operator-form-error")
    # Then a real one, in currency units.
    form = driver.find_element(By.ID, "budget")
    form.find_element(By.NAME, "tokens").send_keys("100000")
    form.find_element(By.NAME, "cost").send_keys("1.50")
    submit(driver, form, "Save budget")
    assert "per day: 100000 tokens and cost 1.50" in setting(driver, "budgets"), setting(driver, "budgets")
    shot(driver, "09-operator-tenant")

    # The admin API stores what the forms said.
    status, text = http_json("GET", f"{gateway['admin_url']}/tenants/{tenant}", token=gateway["admin_token"])
    assert status == 200, text
    t = json.loads(text)
    assert (t["weight"], t["group"]) == (4, group), t
    assert t["policy"]["limits"] == {"rpm": 1} and t["policy"]["on_limit"] == "reject", t
    assert t["policy"]["budgets"] == [{"period": "day", "tokens": 100000, "cost": 1500000}], t

    # The tenant list shows it with its policy.
    open_page(driver, portal + "/operator/tenants", "Operator: tenants and groups")
    link = driver.find_element(By.CSS_SELECTOR, f"a[data-tenant-link='{tenant}']")
    row = link.find_element(By.XPATH, "./ancestor::tr").text
    assert group in row and "1 requests/min" in row and "100000 tokens" in row, row
    shot(driver, "10-operator-tenants")

    # The live fair-share view has it with its weight, with no restart in between.
    open_page(driver, portal + "/operator", "Operator: fair share")
    cell = (By.CSS_SELECTOR, f"#live tr[data-tenant='{tenant}'] td.w")
    WebDriverWait(driver, WAIT_S, poll_frequency=0.2, ignored_exceptions=(StaleElementReferenceException,)).until(
        lambda d: (c := d.find_elements(*cell)) and all(e.text == "4" for e in c),
        f"live view never showed tenant {tenant} with weight 4")

    # And the limit holds for real traffic: one request, then 429.
    status, text = http_json("POST", gateway["admin_url"] + "/keys", token=gateway["admin_token"],
                             body={"tenant": tenant, "name": "browser-limit"})
    assert status == 201, text
    key = json.loads(text)["key"]
    first, _ = chat(gateway, key)
    second, body = chat(gateway, key)
    assert (first, second) == (200, 429), f"rpm=1, on_limit=reject: got {first}, {second}: {body[:300]}"


def test_operator_blocks_pii_for_a_tenant_live_and_audited(driver, gateway):
    portal, admin, token = gateway["portal_url"], gateway["admin_url"], gateway["admin_token"]
    tenant = f"pii-{uuid.uuid4().hex[:8]}"
    status, text = http_json("POST", admin + "/tenants", token=token, body={"name": tenant, "weight": 1})
    assert status == 201, text
    status, text = http_json("POST", admin + "/keys", token=token, body={"tenant": tenant, "name": "browser-pii"})
    assert status == 201, text
    key = json.loads(text)["key"]
    sign_in(driver, gateway, gateway["portal_email"], gateway["portal_password"])
    open_page(driver, f"{portal}/operator/tenants/{tenant}", f"Tenant {tenant}")

    # One select per guardrail; prompt injection cannot be redacted, so it is not offered.
    form = driver.find_element(By.ID, "guardrails")
    offered = [o.get_attribute("value") for o in Select(form.find_element(By.NAME, "injection")).options]
    assert "redact" not in offered and "block" in offered, offered
    Select(form.find_element(By.NAME, "pii")).select_by_value("block")
    submit(driver, form, "Save guardrails")
    assert setting(driver, "guardrails").startswith("pii block"), setting(driver, "guardrails")
    effective = driver.find_element(By.CSS_SELECTOR, "span[data-effective='sim-llama:pii']")
    assert effective.text == "block", effective.text
    driver.execute_script("arguments[0].scrollIntoView()", driver.find_element(By.ID, "guardrails"))
    shot(driver, "15-operator-guardrails")
    # The key's page, linked from the tenant's, shows what applies to the key and where from.
    driver.find_element(By.CSS_SELECTOR, "a[data-key-link]").click()
    wait(driver).until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, "main h1"), "Key browser-pii"))
    effective = driver.find_element(By.CSS_SELECTOR, "span[data-effective='sim-llama:pii']")
    assert effective.text == "block", effective.text
    shot(driver, "16-operator-key-guardrails")

    # Live for the next request: an e-mail address in the prompt is refused.
    status, body = http_json(
        "POST", gateway["base_url"] + "/chat/completions", token=key,
        body={"model": "sim-llama", "messages": [{"role": "user", "content": "Write to jane.doe@example.com"}],
              "max_tokens": 8})
    assert status == 400 and "guardrail_pii" in body, (status, body[:300])

    # Audited once, with the modes before and after.
    open_page(driver, portal + "/audit", "Audit log")
    hits = [r.text for r in driver.find_elements(By.CSS_SELECTOR, "main table tbody tr")
            if "tenant.guardrails" in r.text and f"tenant:{tenant}" in r.text]
    assert len(hits) == 1 and '"pii":"block"' in hits[0], hits


def backend_row(driver, model: str, url: str):
    return driver.find_element(By.CSS_SELECTOR, f"section[data-model='{model}'] tr[data-url='{url}']")


def row_text(driver, model: str, url: str) -> str:
    rows = driver.find_elements(By.CSS_SELECTOR, f"section[data-model='{model}'] tr[data-url='{url}']")
    return rows[0].text if rows else ""


def test_operator_adds_drains_and_removes_a_backend(driver, gateway):
    portal = gateway["portal_url"]
    status, text = http_json("GET", gateway["admin_url"] + "/backends", token=gateway["admin_token"])
    assert status == 200, text
    llama = next(m for m in json.loads(text)["data"] if m["model"] == "sim-llama")
    original = llama["backends"][0]["url"]
    # A second address of the same simulator: draining it leaves sim-llama served for the
    # tests that follow.
    extra = original.replace("127.0.0.1", "localhost")
    assert extra != original, original

    sign_in(driver, gateway, gateway["portal_email"], gateway["portal_password"])
    driver.find_element(By.LINK_TEXT, "Backends").click()
    wait(driver).until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, "main h1"), "Operator: models and backends"))
    assert "healthy" in backend_row(driver, "sim-llama", original).text

    # Add the second address through the form.
    form = driver.find_element(By.CSS_SELECTOR, "section[data-model='sim-llama'] form[id^='add-']")
    form.find_element(By.NAME, "url").send_keys(extra)
    limit = form.find_element(By.NAME, "max_in_flight")
    limit.clear()
    limit.send_keys("8")
    submit(driver, form, "Add backend")
    assert heading(driver) == "Operator: models and backends"
    row = backend_row(driver, "sim-llama", extra)
    assert "healthy" in row.text and "added live" in row.text, row.text

    # Drain it: the page says so after the redirect (and the live refresh keeps saying so).
    submit(driver, backend_row(driver, "sim-llama", extra), "Drain")
    WebDriverWait(driver, WAIT_S, poll_frequency=0.2, ignored_exceptions=(WebDriverException,)).until(
        lambda d: "draining" in row_text(d, "sim-llama", extra), "the backend never showed as draining")
    assert "draining" not in row_text(driver, "sim-llama", original)
    status, text = http_json("GET", gateway["admin_url"] + "/backends", token=gateway["admin_token"])
    drained = next(b for m in json.loads(text)["data"] for b in m["backends"] if b["url"] == extra)
    assert drained["draining"] is True, drained
    # Let one live refresh run, so the picture shows the page as the script keeps it.
    WebDriverWait(driver, WAIT_S, poll_frequency=0.2, ignored_exceptions=(WebDriverException,)).until(
        lambda d: d.find_element(By.CSS_SELECTOR, f"tr[data-url='{extra}'] td").get_attribute("data-h") is not None,
        "the live refresh never ran")
    shot(driver, "12-operator-backends")

    # A change made elsewhere (the admin API) shows up without a reload.
    status, text = http_json("POST", gateway["admin_url"] + "/models/sim-llama/backends/resume",
                             token=gateway["admin_token"], body={"url": extra})
    assert status == 200, text
    driver.execute_script("window.__same_page = true")
    WebDriverWait(driver, WAIT_S, poll_frequency=0.2, ignored_exceptions=(WebDriverException,)).until(
        lambda d: "draining" not in row_text(d, "sim-llama", extra)
        and backend_row(d, "sim-llama", extra).find_elements(By.XPATH, ".//button[normalize-space()='Drain']"),
        "the live view never showed the resumed backend")
    assert driver.execute_script("return window.__same_page === true"), "the page was reloaded"

    # Remove it (the browser asks first); it leaves the list at once, being idle.
    driver.execute_script("window.__leaving = true")
    backend_row(driver, "sim-llama", extra).find_element(By.XPATH, ".//button[normalize-space()='Remove']").click()
    wait(driver).until(EC.alert_is_present()).accept()
    wait(driver).until(lambda d: d.execute_script("return document.readyState === 'complete' && !window.__leaving"))
    assert not row_text(driver, "sim-llama", extra)
    assert "healthy" in row_text(driver, "sim-llama", original)

    # All three are in the audit log under the operator's name.
    open_page(driver, portal + "/audit", "Audit log")
    rows = [r.text for r in driver.find_elements(By.CSS_SELECTOR, "main table tbody tr")]
    for action in ("backend.add", "backend.drain", "backend.remove"):
        hits = [r for r in rows if action in r and extra in r]
        assert hits and gateway["portal_email"] in hits[0], (action, rows[:10])


def test_user_role_is_refused_operator_pages(driver, gateway, make_user):
    email, password = make_user("user")
    portal = gateway["portal_url"]
    sign_in(driver, gateway, email, password)
    nav = driver.find_element(By.CSS_SELECTOR, "nav").text
    for link in ("Fair share", "Manage tenants", "Backends", "Audit log"):
        assert link not in nav, nav

    for path in ("/operator", "/operator/tenants", "/operator/backends", "/audit"):
        open_page(driver, portal + path, "Forbidden")
        assert "may not use this page" in driver.find_element(By.CSS_SELECTOR, "main").text
    shot(driver, "08-forbidden")

    # The models page shows replicas as counts, never a backend's address.
    open_page(driver, portal + "/models", "Models")
    row = driver.find_element(By.CSS_SELECTOR, "tr[data-model='sim-llama']").text
    assert " healthy" in row and " of " in row, row
    assert "127.0.0.1" not in driver.page_source and "localhost" not in driver.page_source

    # The same session cookie over plain HTTP: the status really is 403, the JSON APIs too.
    cookie = "; ".join(f"{c['name']}={c['value']}" for c in driver.get_cookies())
    for path in ("/operator", "/operator/tenants", "/operator/backends", "/audit", "/api/scheduler",
                 "/api/backends"):
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
