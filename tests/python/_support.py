"""Small helpers shared by the conformance tests: a stdlib HTTP client for the admin API and
for raw requests the SDK cannot make (malformed JSON, oversized bodies), and polling."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Optional

HTTP_TIMEOUT_S = 30.0

# Models the demo serves (the contract of `fairgate demo`).
LLAMA = "sim-llama"
QWEN = "sim-qwen"
DEMO_MODELS = (LLAMA, QWEN)


@dataclass
class HttpResult:
    status: int
    headers: dict[str, str]
    text: str
    json: Any = None

    def error(self) -> dict:
        """The `error` object of an OpenAI-shaped error body (asserts the shape)."""
        assert isinstance(self.json, dict) and isinstance(self.json.get("error"), dict), (
            f"HTTP {self.status}: body is not OpenAI-shaped: {self.text[:500]!r}"
        )
        return self.json["error"]


def http(
    method: str,
    url: str,
    *,
    token: Optional[str] = None,
    body: Any = None,
    raw: Optional[bytes] = None,
    headers: Optional[dict[str, str]] = None,
    timeout: float = HTTP_TIMEOUT_S,
) -> HttpResult:
    """One HTTP request; never raises for HTTP error statuses."""
    data = raw
    hdrs = {"Accept": "application/json"}
    if body is not None:
        data = json.dumps(body).encode()
    if data is not None:
        hdrs["Content-Type"] = "application/json"
    if token is not None:
        hdrs["Authorization"] = f"Bearer {token}"
    hdrs.update(headers or {})
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, rh, payload = resp.status, dict(resp.headers.items()), resp.read()
    except urllib.error.HTTPError as e:
        status, rh, payload = e.code, dict(e.headers.items()), e.read()
    text = payload.decode("utf-8", "replace")
    parsed = None
    if text:
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
    return HttpResult(status=status, headers={k.lower(): v for k, v in rh.items()}, text=text, json=parsed)


@dataclass
class Admin:
    """Client of `/admin/v1` (bearer admin token)."""

    url: str
    token: str

    def call(self, method: str, path: str, body: Any = None, *, expect: Optional[int] = None) -> HttpResult:
        r = http(method, self.url + path, token=self.token, body=body)
        if expect is not None:
            assert r.status == expect, f"{method} {path} -> HTTP {r.status}, wanted {expect}: {r.text[:500]}"
        return r

    def create_tenant(self, name: Optional[str] = None, weight: int = 1) -> dict:
        name = name or unique_name()
        r = self.call("POST", "/tenants", {"name": name, "weight": weight}, expect=201)
        assert r.json["name"] == name, r.text
        return r.json

    def create_key(self, tenant: str, models: Optional[list[str]] = None, name: str = "pytest") -> dict:
        body: dict[str, Any] = {"tenant": tenant, "name": name}
        if models is not None:
            body["models"] = models
        r = self.call("POST", "/keys", body, expect=201)
        assert isinstance(r.json.get("id"), str) and r.json["id"], r.text
        assert r.json["key"].startswith("fgk_"), r.text
        return r.json

    def revoke_key(self, key_id: str) -> None:
        r = self.call("DELETE", f"/keys/{key_id}")
        assert r.status in (200, 204), f"DELETE /keys/{key_id} -> HTTP {r.status}: {r.text[:500]}"

    def rotate_key(self, key_id: str) -> dict:
        r = self.call("POST", f"/keys/{key_id}/rotate")
        assert r.status in (200, 201), f"rotate {key_id} -> HTTP {r.status}: {r.text[:500]}"
        return r.json

    def usage(self, tenant: str) -> list[dict]:
        r = self.call("GET", f"/usage?tenant={tenant}", expect=200)
        return r.json["data"]

    def requests(self, tenant: str, limit: int = 50) -> list[dict]:
        r = self.call("GET", f"/requests?tenant={tenant}&limit={limit}", expect=200)
        return r.json["data"]


@dataclass
class TenantCtx:
    """A fresh tenant with one all-models key and an SDK client for it."""

    name: str
    key: str
    key_id: str
    client: Any


def unique_name(prefix: str = "py") -> str:
    """Lowercase alphanumeric, so it passes any reasonable name validation."""
    return prefix + uuid.uuid4().hex[:12]


def wait_for(fn: Callable[[], Any], timeout: float = 10.0, interval: float = 0.1, what: str = "condition") -> Any:
    """Polls `fn` until it returns a truthy value; returns it or fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = fn()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")
        time.sleep(interval)


def request_id(headers: Any) -> str:
    """The gateway's `x-request-id` (the ledger row id) from a response's headers."""
    rid = headers.get("x-request-id")
    assert rid, f"response has no x-request-id header: {dict(headers)!r}"
    return rid


def row_by_id(admin: Admin, tenant: str, rid: str, limit: int = 200) -> Optional[dict]:
    for row in admin.requests(tenant, limit=limit):
        if row["id"] == rid:
            return row
    return None
