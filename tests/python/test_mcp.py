"""MCP through the gateway (issue 16): a real MCP server (the official `mcp` package's FastMCP,
streamable HTTP, `mcp_server.py`) behind a real `fairgate serve`, driven with the official MCP
client and with raw HTTP.

Two servers run: `files` answers POSTs with SSE streams, `jsonfiles` with plain JSON. Tenants are
declared in the gateway's config file with their `policy.mcp` allowlists; keys come from the
admin API. What reached each server is read from its log (tool calls, credentials seen).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from _support import Admin, http, wait_for

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from demo_process import fairgate_binary, require, tail  # noqa: E402

try:
    import anyio
    import httpx
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared.exceptions import McpError
except ImportError as e:  # pragma: no cover - the venv lacks the package
    MCP_IMPORT_ERROR: Exception | None = e
else:
    MCP_IMPORT_ERROR = None

HERE = Path(__file__).resolve().parent
ADMIN_TOKEN = "mcp-test-admin-token-0123456789"
UPSTREAM_KEY = "upstream-key-files"
UPSTREAM_KEY_JSON = "upstream-key-json"
START_TIMEOUT_S = 60.0
PROTOCOL = "2025-06-18"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, what: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with code {proc.returncode}.\n--- log ---\n{tail(log)}", pytrace=False)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"{what} did not listen on {port} within {START_TIMEOUT_S:.0f}s.\n--- log ---\n{tail(log)}", pytrace=False)


def stop(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


@dataclass
class Env:
    base: str  # http://127.0.0.1:PORT
    admin: Admin
    logs: dict[str, Path]  # server name -> its log
    keys: dict[str, str]  # tenant -> key

    def url(self, server: str) -> str:
        return f"{self.base}/mcp/{server}"

    def server_log(self, server: str) -> list[dict]:
        p = self.logs[server]
        return [json.loads(line) for line in p.read_text().splitlines()] if p.exists() else []

    def keys_upstream(self, server: str) -> str:
        return {"files": UPSTREAM_KEY, "jsonfiles": UPSTREAM_KEY_JSON}[server]

    def tools_called(self, server: str) -> list[str]:
        return [e["tool"] for e in self.server_log(server) if "tool" in e]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    if MCP_IMPORT_ERROR is not None:
        require("the `mcp` Python package", f"{MCP_IMPORT_ERROR}; pip install -r tests/python/requirements.txt")
    binary = fairgate_binary()
    tmp = tmp_path_factory.mktemp("mcp")
    procs: list[tuple[str, subprocess.Popen]] = []
    logs = {"files": tmp / "files.log", "jsonfiles": tmp / "jsonfiles.log"}
    try:
        ports = {}
        for name, key, extra in (("files", UPSTREAM_KEY, []), ("jsonfiles", UPSTREAM_KEY_JSON, ["--json"])):
            port = free_port()
            out = tmp / f"{name}.stderr.log"
            with open(out, "wb") as f:
                p = subprocess.Popen(
                    [sys.executable, str(HERE / "mcp_server.py"), str(port), str(logs[name]), key, *extra],
                    stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                )
            procs.append((name, p))
            wait_port(port, p, f"MCP server `{name}`", out)
            ports[name] = port

        gw_port = free_port()
        config = tmp / "fairgate.toml"
        config.write_text(f"""
listen = "127.0.0.1:{gw_port}"
database = "sqlite://{tmp / 'fairgate.db'}"
data_dir = "{tmp}"
admin_token = "{ADMIN_TOKEN}"

[[mcp.servers]]
name = "files"
url = "http://127.0.0.1:{ports['files']}/mcp"
api_key = "{UPSTREAM_KEY}"

[[mcp.servers]]
name = "jsonfiles"
url = "http://127.0.0.1:{ports['jsonfiles']}/mcp"
api_key_env = "FG_TEST_MCP_JSON_KEY"

[[tenants]]
name = "mcp-allowed"
policy = {{ mcp = {{ files = ["add", "echo"], jsonfiles = ["add"] }} }}

[[tenants]]
name = "mcp-other"

[[tenants]]
name = "mcp-limited"
policy = {{ limits = {{ rpm = 2 }}, on_limit = "reject", mcp = {{ jsonfiles = ["*"] }} }}
""")
        gw_log = tmp / "fairgate.stderr.log"
        gw_env = dict(os.environ, FG_TEST_MCP_JSON_KEY=UPSTREAM_KEY_JSON)
        gw_env.pop("FAIRGATE_BIN", None)
        with open(gw_log, "wb") as f:
            gw = subprocess.Popen(
                [str(binary), "serve", "--config", str(config)],
                stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT, env=gw_env, cwd=tmp,
            )
        procs.append(("gateway", gw))
        wait_port(gw_port, gw, "fairgate serve", gw_log)
        base = f"http://127.0.0.1:{gw_port}"
        wait_for(lambda: http("GET", base + "/readyz").status == 200, timeout=START_TIMEOUT_S, what="gateway ready")
        admin = Admin(base + "/admin/v1", ADMIN_TOKEN)
        keys = {t: admin.create_key(t)["key"] for t in ("mcp-allowed", "mcp-other", "mcp-limited")}
        yield Env(base=base, admin=admin, logs=logs, keys=keys)
    finally:
        codes = {name: stop(p) for name, p in reversed(procs)}
    assert codes.get("gateway") == 0, f"fairgate exited with {codes.get('gateway')}:\n{tail(gw_log)}"


def session_run(env: Env, server: str, key: str, body):
    """Runs `body(session)` in an initialized MCP client session through the gateway."""

    async def main():
        headers = {"Authorization": f"Bearer {key}", "Cookie": "portal_session=must-not-pass"}
        async with httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(30, read=60)) as client:
            async with streamable_http_client(env.url(server), http_client=client) as (read, write, _):
                async with ClientSession(read, write) as s:
                    await s.initialize()
                    return await body(s)

    return anyio.run(main)


def mcp_rows(env: Env, tenant: str, server: str) -> list[dict]:
    return [r for r in env.admin.requests(tenant, limit=500) if r["endpoint"] == f"/mcp/{server}"]


@pytest.mark.parametrize("server", ["files", "jsonfiles"])
def test_session_lists_allowed_tools_calls_one_and_refuses_the_rest(env, server):
    allowed = {"files": {"add", "echo"}, "jsonfiles": {"add"}}[server]

    async def body(s):
        listed = {t.name for t in (await s.list_tools()).tools}
        added = await s.call_tool("add", {"a": 2, "b": 40})
        with pytest.raises(McpError) as refused:
            await s.call_tool("secret", {})
        return listed, added, refused.value

    listed, added, refused = session_run(env, server, env.keys["mcp-allowed"], body)
    # tools/list answers (SSE or JSON) show only what the tenant may call.
    assert listed == allowed
    assert not added.isError, added
    assert [c.text for c in added.content if c.type == "text"] == ["42"], added
    # The denied call is answered by the gateway, as a JSON-RPC error...
    assert "`secret`" in refused.error.message and "not allowed" in refused.error.message, refused.error
    # ...and never reached the server, which saw only its own key, never the client's.
    assert env.tools_called(server) == ["add"]
    seen = env.server_log(server)
    assert seen and all(e["authorization"] == f"Bearer {env.keys_upstream(server)}" for e in seen if "http" in e)
    assert all(e["cookie"] is None for e in seen if "http" in e), seen

    def settled():
        rows = mcp_rows(env, "mcp-allowed", server)
        ok = [r for r in rows if r["units"] == 1 and r["outcome"] == "ok"]
        denied = [r for r in rows if r.get("error_class") == "mcp_tool_not_allowed"]
        return (rows, ok, denied) if ok and denied else None

    rows, ok, denied = wait_for(settled, what=f"the ledger rows of the {server} session")
    assert len(ok) == 1 and len(denied) == 1, rows
    assert ok[0]["status"] == 200
    assert denied[0]["status"] == 403 and denied[0]["outcome"] == "rejected" and denied[0]["units"] == 0
    for r in rows:
        assert r["model"] == f"mcp:{server}" and r["unit"] == "calls", r
        assert r["key_id"] and r["tenant"] == "mcp-allowed", r
    # Settled when the answer passed, though the client closes streams as soon as it has it.
    assert all(r["outcome"] in ("ok", "rejected") for r in rows), rows
    # Only the tool calls count as calls.
    assert sum(r["units"] for r in rows) == 1, rows


def test_a_keys_policy_narrows_its_tenants_allowlist(env):
    key = env.admin.call(
        "POST", "/keys", {"tenant": "mcp-allowed", "name": "narrow", "policy": {"mcp": {"files": ["echo", "secret"]}}},
        expect=201,
    ).json["key"]

    async def body(s):
        listed = {t.name for t in (await s.list_tools()).tools}
        echoed = await s.call_tool("echo", {"text": "narrow"})
        refused = []
        for tool, args in (("add", {"a": 1, "b": 1}), ("secret", {})):
            try:
                await s.call_tool(tool, args)
            except McpError as e:
                refused.append((tool, e.error.message))
        return listed, echoed, refused

    before = env.tools_called("files")
    listed, echoed, refused = session_run(env, "files", key, body)
    # Only what both the tenant (add, echo) and the key (echo, secret) allow.
    assert listed == {"echo"}
    assert [c.text for c in echoed.content if c.type == "text"] == ["narrow"]
    assert [t for t, _ in refused] == ["add", "secret"], refused
    assert env.tools_called("files")[len(before):] == ["echo"]
    # A server the key does not name is refused though its tenant has it.
    r = raw(env, "jsonfiles", key, INITIALIZE)
    assert r.status == 403 and r.error()["code"] == "mcp_server_not_allowed", r.text


def raw(env: Env, server: str, key: str | None, message: dict, session: str | None = None):
    headers = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": PROTOCOL}
    if session:
        headers["Mcp-Session-Id"] = session
    return http("POST", env.url(server), token=key, body=message, headers=headers)


INITIALIZE = {
    "jsonrpc": "2.0", "id": 1, "method": "initialize",
    "params": {"protocolVersion": PROTOCOL, "capabilities": {}, "clientInfo": {"name": "pytest", "version": "1"}},
}


def test_tenant_without_the_server_and_unknown_servers_are_refused(env):
    r = raw(env, "files", env.keys["mcp-other"], INITIALIZE)
    assert r.status == 403, r.text
    assert r.error()["code"] == "mcp_server_not_allowed" and r.error()["type"] == "permission_error"
    # A server the tenant has is not a licence for another.
    r = raw(env, "files", env.keys["mcp-limited"], INITIALIZE)
    assert r.status == 403 and r.error()["code"] == "mcp_server_not_allowed", r.text
    r = raw(env, "nosuch", env.keys["mcp-allowed"], INITIALIZE)
    assert r.status == 404 and r.error()["code"] == "mcp_server_not_found", r.text
    r = http("PUT", env.url("files"), token=env.keys["mcp-allowed"], body={})
    assert r.status == 404 and r.error()["code"] == "unknown_url", r.text
    rows = wait_for(lambda: [x for x in env.admin.requests("mcp-other") if x["status"] == 403], what="403 row")
    assert rows[0]["endpoint"] == "/mcp/files" and rows[0]["error_class"] == "mcp_server_not_allowed", rows


def test_no_key_or_a_bad_key_is_401(env):
    before = len(env.server_log("files"))
    r = raw(env, "files", None, INITIALIZE)
    assert r.status == 401 and r.error()["code"] == "missing_api_key", r.text
    assert r.headers.get("www-authenticate") == "Bearer"
    r = raw(env, "files", "fgk_nope_nope", INITIALIZE)
    assert r.status == 401 and r.error()["code"] == "invalid_api_key", r.text
    assert len(env.server_log("files")) == before, "an unauthenticated request reached the server"


def test_tool_calls_take_the_tenants_rate_limit(env):
    key = env.keys["mcp-limited"]
    r = raw(env, "jsonfiles", key, INITIALIZE)
    assert r.status == 200, r.text
    session = r.headers.get("mcp-session-id")
    assert session, r.headers
    r = raw(env, "jsonfiles", key, {"jsonrpc": "2.0", "method": "notifications/initialized"}, session)
    assert r.status == 202, r.text
    # Listing is not a call: it does not count against RPM, and `*` shows every tool.
    r = raw(env, "jsonfiles", key, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, session)
    assert r.status == 200 and {t["name"] for t in r.json["result"]["tools"]} == {"add", "echo", "secret"}, r.text
    statuses = []
    for i in range(3):
        call = {"jsonrpc": "2.0", "id": 10 + i, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": f"hi {i}"}}}
        r = raw(env, "jsonfiles", key, call, session)
        statuses.append(r.status)
        if r.status == 200:
            assert r.json["result"]["content"][0]["text"] == f"hi {i}", r.text
    assert statuses == [200, 200, 429], statuses
    assert r.error()["code"] == "rpm_limit_exceeded" and int(r.headers["retry-after"]) >= 1, (r.headers, r.text)

    rows = wait_for(
        lambda: [x for x in mcp_rows(env, "mcp-limited", "jsonfiles") if x["status"] == 429],
        what="the 429 row",
    )
    assert rows[0]["error_class"] == "rpm_limit_exceeded" and rows[0]["unit"] == "calls", rows
    calls = [x for x in mcp_rows(env, "mcp-limited", "jsonfiles") if x["units"] == 1]
    assert len(calls) == 2, calls


def test_metrics_count_calls_by_outcome(env):
    text = http("GET", env.base + "/metrics").text
    lines = [line for line in text.splitlines() if line.startswith("fairgate_mcp_calls_total{")]
    assert any('outcome="denied"' in line and 'server="files"' in line for line in lines), lines
    assert any('outcome="ok"' in line and 'tenant="mcp-allowed"' in line for line in lines), lines
