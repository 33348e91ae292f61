"""Fixtures: one `fairgate demo` process per test session, and fresh tenants/keys per test.

The binary comes from `FAIRGATE_BIN` (default `target/debug/fairgate` relative to the repository
root). The demo serves two simulated vLLM models and prints one JSON line with its URLs and
credentials when it is ready.
"""

from __future__ import annotations

import sys
from pathlib import Path

import openai
import pytest

from _support import DEMO_MODELS, Admin, TenantCtx

# The demo process runner is shared with tests/browser.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from demo_process import demo_gateway  # noqa: E402

SDK_TIMEOUT_S = 30.0


@pytest.fixture(scope="session")
def gateway(tmp_path_factory):
    """Starts `fairgate demo` and yields its JSON info; asserts a clean exit on SIGTERM."""
    for info in demo_gateway(tmp_path_factory):
        assert sorted(info["models"]) == sorted(DEMO_MODELS), info
        yield info


@pytest.fixture(scope="session")
def admin(gateway) -> Admin:
    return Admin(gateway["admin_url"], gateway["admin_token"])


@pytest.fixture(scope="session")
def make_client(gateway):
    """`make_client(key)` -> an `openai.OpenAI` for the gateway with retries off."""

    def make(key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=gateway["base_url"], api_key=key, max_retries=0, timeout=SDK_TIMEOUT_S)

    return make


@pytest.fixture(scope="session")
def client(gateway, make_client) -> openai.OpenAI:
    """SDK client with the demo key (every model)."""
    return make_client(gateway["key"])


@pytest.fixture
def tenant(admin, make_client) -> TenantCtx:
    """A fresh tenant with one all-models key, so ledger assertions see only this test's traffic."""
    t = admin.create_tenant()
    k = admin.create_key(t["name"])
    return TenantCtx(name=t["name"], key=k["key"], key_id=k["id"], client=make_client(k["key"]))
