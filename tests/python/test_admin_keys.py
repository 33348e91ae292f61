"""Admin API: tenants CRUD, key rotation and revocation as seen through the SDK."""

import openai
import pytest

from _support import LLAMA, QWEN, http, unique_name, wait_for

MESSAGES = [{"role": "user", "content": "hi"}]


def test_rotate_key(admin, make_client, tenant):
    old = admin.create_key(tenant.name, name="rotating")
    old_client = make_client(old["key"])
    assert old_client.chat.completions.create(model=QWEN, messages=MESSAGES, max_tokens=1).choices

    rotated = admin.rotate_key(old["id"])
    assert rotated["id"] == old["id"], "rotation keeps the key id"
    assert rotated["key"].startswith(f"fgk_{old['id']}_")
    assert rotated["key"] != old["key"]

    with pytest.raises(openai.AuthenticationError) as ei:
        old_client.chat.completions.create(model=QWEN, messages=MESSAGES, max_tokens=1)
    assert ei.value.status_code == 401
    assert ei.value.code == "invalid_api_key"

    new_client = make_client(rotated["key"])
    resp = new_client.chat.completions.create(model=LLAMA, messages=MESSAGES, max_tokens=2)
    assert resp.usage.completion_tokens == 2

    # The refused attempt with the old secret is attributed to the key (and so to the tenant).
    failed = wait_for(
        lambda: [r for r in admin.requests(tenant.name) if r["status"] == 401], timeout=5, what="the 401 row"
    )
    assert len(failed) == 1, failed
    assert failed[0]["outcome"] == "auth_failed" and failed[0]["key_id"] == old["id"], failed[0]
    assert failed[0]["error_class"] == "invalid_api_key", failed[0]


def test_tenant_crud(admin):
    name = unique_name("crud")
    r = admin.call("POST", "/tenants", {"name": name, "weight": 2}, expect=201)
    t = r.json
    assert t["name"] == name and t["weight"] == 2
    assert "group" in t and isinstance(t["created_at"], int)

    dup = admin.call("POST", "/tenants", {"name": name, "weight": 2})
    assert dup.status == 409, dup.text
    assert dup.error()["type"]

    listed = admin.call("GET", "/tenants", expect=200).json
    items = listed["data"] if isinstance(listed, dict) else listed
    assert name in [x["name"] for x in items]

    assert admin.call("GET", f"/tenants/{name}", expect=200).json["name"] == name
    patched = admin.call("PATCH", f"/tenants/{name}", {"weight": 5}, expect=200).json
    assert patched["weight"] == 5
    assert admin.call("GET", f"/tenants/{name}", expect=200).json["weight"] == 5

    d = admin.call("DELETE", f"/tenants/{name}")
    assert d.status in (200, 204), d.text
    gone = admin.call("GET", f"/tenants/{name}")
    assert gone.status == 404, gone.text
    assert gone.error()["message"]


def test_admin_rejects_bad_input_and_unknowns(admin):
    r = admin.call("POST", "/tenants", {"name": unique_name(), "weight": 0})
    assert r.status == 400, r.text
    r = admin.call("POST", "/keys", {"tenant": unique_name("nope"), "name": "k"})
    assert r.status in (400, 404), r.text
    r = admin.call("DELETE", "/keys/doesnotexist1")
    assert r.status == 404, r.text


def test_admin_requires_token(gateway):
    for token in (None, "wrong-token-wrong-token", gateway["key"]):
        r = http("GET", gateway["admin_url"] + "/tenants", token=token)
        assert r.status == 401, (token, r.status, r.text)
        assert r.error()["type"] == "authentication_error"


def test_api_key_is_not_an_admin_token_and_admin_token_is_not_an_api_key(gateway, make_client):
    with pytest.raises(openai.AuthenticationError):
        make_client(gateway["admin_token"]).models.list()
