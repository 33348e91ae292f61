"""Fixtures for the browser suite: one `fairgate demo` per session and a headless Chromium per test.

The gateway fixture mirrors tests/python/conftest.py (copied, not imported: the suites stay
independent). Chromium and chromedriver are system packages (Debian: `chromium`,
`chromium-driver`); override their paths with CHROMIUM_BIN / CHROMEDRIVER_BIN. When they are
missing the tests skip with the reason, except under CI=true, where they fail.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from _browser_support import REPO_ROOT, http_json, screenshots_taken, shot

READY_TIMEOUT_S = 60.0
SHUTDOWN_TIMEOUT_S = 20.0


# ---- the gateway -------------------------------------------------------------------------


def _binary() -> Path:
    p = Path(os.environ.get("FAIRGATE_BIN", "target/debug/fairgate"))
    if not p.is_absolute():
        p = REPO_ROOT / p
    if not p.is_file():
        pytest.exit(
            f"fairgate binary not found at {p}: build it (cargo build --bin fairgate) or set FAIRGATE_BIN",
            returncode=2,
        )
    return p


def _tail(path: Path, n: int = 8000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError as e:
        return f"<could not read {path}: {e}>"


def _read_line(proc: subprocess.Popen, timeout: float) -> bytes | None:
    """First stdout line of `proc`, or None on timeout / early exit."""
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    fd = proc.stdout.fileno()
    buf = b""
    deadline = time.monotonic() + timeout
    try:
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            if not sel.select(timeout=min(left, 0.5)):
                if proc.poll() is not None:
                    return None
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            buf += chunk
    finally:
        sel.unregister(proc.stdout)
        sel.close()
    return buf.partition(b"\n")[0]


@pytest.fixture(scope="session")
def gateway(tmp_path_factory):
    """Starts `fairgate demo` and yields its JSON ready line (plus `origin`)."""
    binary = _binary()
    data_dir = tmp_path_factory.mktemp("fairgate-data")
    stderr_path = data_dir.parent / "fairgate-demo.stderr.log"
    env = dict(os.environ)
    env.pop("FAIRGATE_BIN", None)
    cmd = [str(binary), "demo", "--listen", "127.0.0.1:0", "--data-dir", str(data_dir), "--json"]
    with open(stderr_path, "wb") as stderr_file:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr_file, env=env, cwd=data_dir
        )
    try:
        line = _read_line(proc, READY_TIMEOUT_S)
        if line is None:
            pytest.fail(
                f"`{' '.join(cmd)}` printed no ready line (exit code {proc.poll()}).\n"
                f"--- stderr ---\n{_tail(stderr_path)}",
                pytrace=False,
            )
        info = json.loads(line)
        for field in ("base_url", "key", "admin_url", "admin_token", "portal_url", "portal_email", "portal_password"):
            assert field in info, f"demo ready line lacks `{field}`: {info!r}"
        assert info["portal_url"].endswith("/portal"), info
        drain = threading.Thread(target=lambda: proc.stdout.read(), daemon=True)
        drain.start()
        info = dict(info, origin=info["portal_url"][: -len("/portal")], stderr_log=str(stderr_path))
        yield info
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=SHUTDOWN_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


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
        why = (f"browser tests need {' and '.join(missing)}: "
               "apt-get install -y chromium chromium-driver, or set the variables")
        if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            pytest.fail(f"CI=true and {why}", pytrace=False)
        pytest.skip(why)
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
