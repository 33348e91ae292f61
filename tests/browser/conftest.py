"""Fixtures for the browser suite: one `fairgate demo` per session and a headless Chromium per test.

The gateway comes from the runner shared with tests/python (tests/demo_process.py). Chromium
and chromedriver are system packages (Debian: `chromium`, `chromium-driver`); override their paths with CHROMIUM_BIN / CHROMEDRIVER_BIN. When they are
missing the tests skip with the reason, except under CI (demo_process.in_ci: any non-empty CI
other than false/0), where they fail.
"""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from pathlib import Path

import pytest

from _browser_support import REPO_ROOT, http_json, screenshots_taken, shot

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from demo_process import demo_gateway, require  # noqa: E402



# ---- the gateway -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def gateway(tmp_path_factory):
    """`fairgate demo` (shared runner, tests/demo_process.py) with its ready line plus `origin`."""
    for info in demo_gateway(tmp_path_factory):
        assert info["portal_url"].endswith("/portal"), info
        yield dict(info, origin=info["portal_url"][: -len("/portal")])


@pytest.fixture(scope="session")
def make_user(gateway):
    """`make_user(role)` -> (email, password) of a fresh local account in tenant `demo`."""

    def make(role: str = "user") -> tuple[str, str]:
        email = f"browser-{role}-{uuid.uuid4().hex[:10]}@example.com"
        password = f"pw-{uuid.uuid4().hex}"
        status, text = http_json(
            "POST", gateway["admin_url"] + "/users", token=gateway["admin_token"],
            body={"email": email, "password": password, "role": role, "tenant": "demo"},
        )
        assert status == 201, f"creating user {email}: HTTP {status}: {text[:500]}"
        return email, password

    return make


# ---- the browser -------------------------------------------------------------------------


def _find(env_var: str, names: list[str]) -> str | None:
    p = os.environ.get(env_var)
    if p:
        return p if os.path.isfile(p) and os.access(p, os.X_OK) else None
    for n in names:
        found = shutil.which(n)
        if found:
            return found
    return None


@pytest.fixture(scope="session")
def browser_paths() -> tuple[str, str]:
    chromium = _find("CHROMIUM_BIN", ["chromium", "chromium-browser", "google-chrome", "google-chrome-stable"])
    driver = _find("CHROMEDRIVER_BIN", ["chromedriver"])
    missing = [n for n, p in (("chromium (CHROMIUM_BIN)", chromium), ("chromedriver (CHROMEDRIVER_BIN)", driver)) if not p]
    if missing:
        require(" and ".join(missing),
                "apt-get install -y chromium chromium-driver, or set the variables")
    return chromium, driver


@pytest.fixture
def driver(browser_paths, request):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, chromedriver = browser_paths
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900",
              "--disable-gpu", "--no-first-run", "--disable-extensions"):
        opts.add_argument(a)
    # The console log, so a test can see Content-Security-Policy violations.
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # Explicit paths: selenium-manager must never try to download a browser or driver.
    d = webdriver.Chrome(service=Service(executable_path=chromedriver), options=opts)
    d.set_window_size(1280, 900)
    d.set_page_load_timeout(30)
    try:
        yield d
    finally:
        # On failure keep a picture of where the browser was.
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            try:
                shot(d, f"FAILED-{request.node.name}")
            except Exception:
                pass
        d.quit()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    rep = yield
    if rep.when == "call":
        item.rep_call = rep
    return rep


def pytest_terminal_summary(terminalreporter):
    if screenshots_taken:
        terminalreporter.write_sep("-", "browser screenshots")
        for p in screenshots_taken:
            try:
                shown = p.relative_to(REPO_ROOT)
            except ValueError:
                shown = p
            terminalreporter.write_line(str(shown))
