"""The portal under its Content-Security-Policy in real Chromium: every page, the playground
and both live views work with scripts and styles from /portal/static only, and the browser
reports no policy violation (an inline script, handler or style would be refused and logged)."""

from __future__ import annotations

from selenium.webdriver.common.by import By

from test_portal import open_page, sign_in, wait

PAGES = [
    ("", "Your API keys"),
    ("/usage", "Your usage"),
    ("/history", "Your requests"),
    ("/models", "Models"),
    ("/playground", "Playground"),
    ("/tenant", "Tenant"),
    ("/operator", "Operator: fair share"),
    ("/operator/tenants", "Operator: tenants and groups"),
    ("/operator/backends", "Operator: models and backends"),
    ("/audit", "Audit log"),
]


def violations(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser")
            if "Content Security Policy" in e["message"] or "Refused to" in e["message"]]


def test_no_page_breaks_the_content_security_policy(driver, gateway):
    portal = gateway["portal_url"]
    sign_in(driver, gateway, gateway["portal_email"], gateway["portal_password"])
    seen = []
    for path, title in PAGES:
        open_page(driver, portal + path, title)
        # The stylesheet applied (a style from app.css, not inline).
        margin = driver.execute_script(
            "return getComputedStyle(document.querySelector('header strong')).marginRight")
        assert margin != "0px", f"{path}: app.css not applied"
        if path == "/operator/backends":
            # One live refresh ran (app.js marks refreshed cells).
            wait(driver).until(lambda d: d.find_elements(By.CSS_SELECTOR, "td[data-h]"))
        if path == "/operator":
            # The live view replaced the server-rendered tables (whose headers carry `scope`)
            # with ones built from fetched data (whose headers do not).
            wait(driver).until(lambda d: d.execute_script(
                "const l=document.getElementById('live');"
                "return l.querySelectorAll('th').length>0&&l.querySelectorAll('th[scope]').length===0"))
        seen += [f"{path}: {v}" for v in violations(driver)]
    assert not seen, seen
