"""Gateway errors reach the SDK as the right exception classes with OpenAI-shaped bodies."""

import openai
import pytest

from _support import LLAMA, QWEN, http, row_by_id

MESSAGES = [{"role": "user", "content": "hi"}]


def assert_openai_error(exc: openai.APIStatusError, status: int, type_: str, code: str | None = None):
    """Checks status, the raw body's shape, and what the SDK parsed out of it."""
    assert exc.status_code == status, f"status {exc.status_code}, want {status}: {exc.response.text[:500]}"
    body = exc.response.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert {"message", "type", "param", "code"} <= set(err), err
    assert isinstance(err["message"], str) and err["message"], err
    assert err["type"] == type_, err
    if code is not None:
        assert err["code"] == code, err
    # The SDK hands the inner object to the exception.
    assert exc.body == err
    assert exc.type == type_
    assert exc.code == err["code"]
    return err


@pytest.mark.parametrize("key", ["sk-not-a-fairgate-key", "fgk_aaaaaaaaaaaa_" + "A" * 40, "fgk_"])
def test_bad_key_is_authentication_error(make_client, key):
    with pytest.raises(openai.AuthenticationError) as ei:
        make_client(key).chat.completions.create(model=LLAMA, messages=MESSAGES, max_tokens=1)
    assert_openai_error(ei.value, 401, "authentication_error", "invalid_api_key")
    assert ei.value.response.headers.get("www-authenticate", "").lower().startswith("bearer")


def test_wrong_secret_for_existing_key_id_is_authentication_error(make_client, tenant):
    prefix = tenant.key[: len("fgk_") + len(tenant.key_id) + 1]
    assert prefix == f"fgk_{tenant.key_id}_", "key format is fgk_<id>_<secret>"
    with pytest.raises(openai.AuthenticationError) as ei:
        make_client(prefix + "B" * 40).models.list()
    assert_openai_error(ei.value, 401, "authentication_error", "invalid_api_key")


def test_missing_key_is_401(gateway):
    r = http("POST", gateway["base_url"] + "/chat/completions", body={"model": LLAMA, "messages": MESSAGES})
    assert r.status == 401, r.text
    err = r.error()
    assert err["type"] == "authentication_error"
    assert err["code"] == "missing_api_key"


def test_revoked_key_is_authentication_error(admin, make_client, tenant):
    k = admin.create_key(tenant.name, name="to-revoke")
    c = make_client(k["key"])
    assert c.chat.completions.create(model=QWEN, messages=MESSAGES, max_tokens=1).usage.completion_tokens == 1
    admin.revoke_key(k["id"])
    with pytest.raises(openai.AuthenticationError) as ei:
        c.chat.completions.create(model=QWEN, messages=MESSAGES, max_tokens=1)
    assert_openai_error(ei.value, 401, "authentication_error", "api_key_revoked")
    # Revoking one key leaves the tenant's other keys alone.
    assert tenant.client.chat.completions.create(model=QWEN, messages=MESSAGES, max_tokens=1).choices


def test_model_outside_key_scope_is_permission_denied(admin, make_client, tenant):
    k = admin.create_key(tenant.name, models=[QWEN], name="qwen-only")
    c = make_client(k["key"])
    assert c.chat.completions.create(model=QWEN, messages=MESSAGES, max_tokens=1).choices
    with pytest.raises(openai.PermissionDeniedError) as ei:
        c.chat.completions.create(model=LLAMA, messages=MESSAGES, max_tokens=1)
    err = assert_openai_error(ei.value, 403, "permission_error", "model_not_allowed")
    assert err["param"] == "model"
    with pytest.raises(openai.PermissionDeniedError):
        c.embeddings.create(model=LLAMA, input="x", encoding_format="float")


def test_unknown_model_is_not_found(client):
    with pytest.raises(openai.NotFoundError) as ei:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES, max_tokens=1)
    err = assert_openai_error(ei.value, 404, "invalid_request_error", "model_not_found")
    assert err["param"] == "model"
    assert "no-such-model" in err["message"]


def test_empty_messages_is_bad_request(client):
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(model=LLAMA, messages=[], max_tokens=1)
    assert_openai_error(ei.value, 400, "invalid_request_error")


def test_missing_messages_is_bad_request(client):
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(model=LLAMA, messages=openai.omit, max_tokens=1)
    err = assert_openai_error(ei.value, 400, "invalid_request_error")
    assert "messages" in (err["param"] or "") + err["message"], err


def test_wrong_field_type_is_bad_request(client):
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(model=LLAMA, messages=MESSAGES, extra_body={"max_tokens": "five"})
    err = assert_openai_error(ei.value, 400, "invalid_request_error")
    assert "max_tokens" in (err["param"] or "") + err["message"], err


def test_malformed_json_is_bad_request(gateway):
    r = http(
        "POST",
        gateway["base_url"] + "/chat/completions",
        token=gateway["key"],
        raw=b'{"model": "sim-llama", "messages": [',
    )
    assert r.status == 400, r.text
    err = r.error()
    assert err["type"] == "invalid_request_error"
    assert err["message"]
    assert r.headers.get("content-type", "").startswith("application/json")


def test_body_too_large_is_413(gateway, make_client):
    # A client of its own: the gateway stops reading the body, so this connection is not reused.
    c = make_client(gateway["key"])
    big = "x" * (9 * 1024 * 1024)  # default limit: 8 MiB
    with pytest.raises(openai.APIStatusError) as ei:
        c.chat.completions.create(model=LLAMA, messages=[{"role": "user", "content": big}], max_tokens=1)
    assert_openai_error(ei.value, 413, "invalid_request_error", "body_too_large")
    c.close()


def test_body_too_large_response_says_connection_close(gateway, make_client):
    """The gateway answers 413 without reading the rest of the body, after which the server side
    closes the connection. Unless the response says `Connection: close`, the SDK's pool keeps the
    connection and the client's *next* request on it can fail with `APIConnectionError`
    ("Server disconnected without sending a response")."""
    c = make_client(gateway["key"])
    big = "x" * (9 * 1024 * 1024)
    with pytest.raises(openai.APIStatusError) as ei:
        c.chat.completions.create(model=LLAMA, messages=[{"role": "user", "content": big}], max_tokens=1)
    c.close()
    assert ei.value.status_code == 413
    assert ei.value.response.headers.get("connection", "").lower() == "close", dict(ei.value.response.headers)


def test_upstream_failure_is_internal_server_error_502(client):
    with pytest.raises(openai.InternalServerError) as ei:
        client.chat.completions.create(
            model=LLAMA, messages=MESSAGES, max_tokens=2, extra_headers={"x-sim-fault": "error"}
        )
    assert_openai_error(ei.value, 502, "server_error", "upstream_status")


def test_upstream_failure_on_stream_request_is_502_before_streaming(client):
    with pytest.raises(openai.InternalServerError) as ei:
        client.chat.completions.create(
            model=QWEN, messages=MESSAGES, max_tokens=2, stream=True, extra_headers={"x-sim-fault": "error"}
        )
    assert_openai_error(ei.value, 502, "server_error", "upstream_status")


def test_upstream_stream_abort_surfaces_as_api_error(client):
    """A stream that breaks after it started cannot change the status any more; the gateway ends
    it with an OpenAI-shaped error event, which the SDK raises as `openai.APIError`."""
    stream = client.chat.completions.create(
        model=LLAMA,
        messages=MESSAGES,
        max_tokens=20,
        stream=True,
        extra_headers={"x-sim-fault": "abort-after=3"},
    )
    got = []
    with pytest.raises(openai.APIError) as ei:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                got.append(chunk.choices[0].delta.content)
    assert len(got) == 3
    assert not isinstance(ei.value, openai.APIStatusError), "headers were already sent: no status error"
    assert isinstance(ei.value.body, dict) and ei.value.body.get("type") == "server_error", ei.value.body


@pytest.mark.parametrize("case", ["unknown_model", "bad_key", "upstream_error"])
def test_error_responses_carry_request_id_of_their_ledger_row(admin, make_client, tenant, case):
    """Like successful ones, error responses name their ledger row in `x-request-id`."""
    with pytest.raises(openai.APIStatusError) as ei:
        if case == "unknown_model":
            tenant.client.chat.completions.create(model="no-such-model", messages=MESSAGES, max_tokens=1)
        elif case == "bad_key":
            make_client(f"fgk_{tenant.key_id}_" + "D" * 40).models.list()
        else:
            tenant.client.chat.completions.create(
                model=QWEN, messages=MESSAGES, max_tokens=1, extra_headers={"x-sim-fault": "error"}
            )
    resp = ei.value.response
    rid = resp.headers.get("x-request-id")
    assert rid, (
        f"HTTP {resp.status_code} error response has x-request-id={rid!r}; headers: {dict(resp.headers)!r}"
    )
    row = row_by_id(admin, tenant.name, rid)
    assert row is not None and row["status"] == resp.status_code, row
