"""Helpers shared by the browser suite's conftest and tests (plain HTTP, screenshots)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT_DIR = Path(__file__).resolve().parent / "screenshots"
HTTP_TIMEOUT_S = 30.0
WAIT_S = 15.0

screenshots_taken: list[Path] = []


def http_json(method: str, url: str, token: str | None = None, body: dict | None = None,
              cookie: str | None = None) -> tuple[int, str]:
    """(status, body text) of one request; HTTP errors are returned, not raised."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    if cookie:
        req.add_header("Cookie", cookie)
    try:
        with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_S) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def chat(gateway: dict, key: str, model: str = "sim-llama") -> tuple[int, str]:
    return http_json(
        "POST",
        gateway["base_url"] + "/chat/completions",
        token=key,
        body={"model": model, "messages": [{"role": "user", "content": "Hello from the browser suite"}],
              "max_tokens": 8},
    )


def shot(driver, name: str) -> Path:
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOT_DIR / f"{name}.png"
    assert driver.save_screenshot(str(path)), f"could not save {path}"
    screenshots_taken.append(path)
    return path
