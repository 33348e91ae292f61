"""A small MCP tool server for test_mcp.py: the official `mcp` package's FastMCP over the
streamable HTTP transport, behind a check of the key the gateway must send.

    python mcp_server.py PORT LOG_PATH API_KEY [--json]

Tools: `add`, `echo`, `secret`. Each HTTP request (method, Authorization and Cookie headers) and
each tool call is appended to LOG_PATH as one JSON line, so the test can tell what reached the
server. A request without `Authorization: Bearer API_KEY` gets 401. `--json` answers POSTs with
plain JSON instead of SSE streams.
"""

from __future__ import annotations

import json
import sys

import uvicorn
from mcp.server.fastmcp import FastMCP

PORT = int(sys.argv[1])
LOG_PATH = sys.argv[2]
API_KEY = sys.argv[3]
JSON_RESPONSE = "--json" in sys.argv[4:]


def log(**entry) -> None:
    with open(LOG_PATH, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")


server = FastMCP("fairgate-test", host="127.0.0.1", port=PORT, json_response=JSON_RESPONSE)


@server.tool()
def add(a: int, b: int) -> int:
    """Adds two integers."""
    log(tool="add")
    return a + b


@server.tool()
def echo(text: str) -> str:
    """Returns the text it was given."""
    log(tool="echo")
    return text


@server.tool()
def secret() -> str:
    """What no tenant without permission may call."""
    log(tool="secret")
    return "the secret"


class RequireKey:
    """ASGI middleware: logs each request's credentials and refuses a wrong key."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            auth = headers.get("authorization")
            log(http=scope["method"], authorization=auth, cookie=headers.get("cookie"))
            if auth != f"Bearer {API_KEY}":
                await send({"type": "http.response.start", "status": 401, "headers": [(b"content-type", b"text/plain")]})
                await send({"type": "http.response.body", "body": b"wrong key\n"})
                return
        await self.app(scope, receive, send)


if __name__ == "__main__":
    uvicorn.run(RequireKey(server.streamable_http_app()), host="127.0.0.1", port=PORT, log_level="warning")
