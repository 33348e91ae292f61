"""The ledger (admin `/usage` and `/requests`) agrees exactly with what the SDK was told."""

from collections import defaultdict

import openai
import pytest

from _support import LLAMA, QWEN, http, request_id, row_by_id, wait_for

MESSAGES = [{"role": "user", "content": "Count to three."}]
ROW_FIELDS = {
    "id", "ts", "tenant", "user", "key_id", "model", "backend", "endpoint", "stream", "prompt_tokens",
    "completion_tokens", "cached_tokens", "reserved_tokens", "usage_source", "status", "outcome",
    "error_class", "queue_ms", "ttft_ms", "duration_ms",
}


def cached_of(usage) -> int:
    details = getattr(usage, "prompt_tokens_details", None)
    return (getattr(details, "cached_tokens", None) or 0) if details is not None else 0


class Expect:
    """Requests made in a test, keyed by request id, with what the SDK saw."""

    def __init__(self):
        self.ok: dict[str, dict] = {}
        self.failed: dict[tuple, dict] = {}

    def ok_usage(self, rid, model, endpoint, stream, usage, key_id):
        self.ok[rid] = dict(
            model=model,
            endpoint=endpoint,
            stream=stream,
            prompt=usage.prompt_tokens,
            completion=getattr(usage, "completion_tokens", 0) or 0,
            cached=cached_of(usage),
            key_id=key_id,
        )

    def fail(self, status: int, **want):
        """A refused request. Matched to its row by (status, key_id), unique within one test, so
        this does not depend on error responses' `x-request-id` (tested in test_errors.py)."""
        key = (status, want["key_id"])
        assert key not in self.failed, f"ambiguous expectation {key}"
        self.failed[key] = dict(want, status=status)


def test_request_is_visible_in_ledger_right_after_response(admin, make_client, tenant):
    """The admin API flushes pending ledger writes before reading, so a request's row is there
    as soon as its response (or its stream) is complete: no polling."""
    bad = make_client(f"fgk_{tenant.key_id}_" + "E" * 40)
    for i in range(10):
        raw = tenant.client.chat.completions.with_raw_response.create(model=QWEN, messages=MESSAGES, max_tokens=1)
        rid = request_id(raw.headers)
        raw.parse()
        row = row_by_id(admin, tenant.name, rid)
        assert row is not None, f"iteration {i}: request {rid} not in /admin/v1/requests right after its response"
        assert row["outcome"] == "ok"

        raw = tenant.client.chat.completions.with_raw_response.create(
            model=LLAMA, messages=MESSAGES, max_tokens=2, stream=True
        )
        rid = request_id(raw.headers)
        assert len([c for c in raw.parse() if c.choices and c.choices[0].delta.content]) == 2
        row = row_by_id(admin, tenant.name, rid)
        assert row is not None, f"iteration {i}: stream {rid} not in /admin/v1/requests right after it was consumed"
        assert row["outcome"] == "ok"

        # Refused requests too (matched by count: see test_errors.py for their x-request-id).
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
        refused = [r for r in admin.requests(tenant.name, limit=200) if r["status"] == 401]
        assert len(refused) == i + 1, f"iteration {i}: the refused request's row is not visible right away"


def test_ledger_matches_sdk_usage_exactly(gateway, admin, make_client, tenant):
    c = tenant.client
    ex = Expect()

    # --- successful requests, usage as the SDK reports it ---------------------------------
    raw = c.chat.completions.with_raw_response.create(model=LLAMA, messages=MESSAGES, max_tokens=3)
    first = raw.parse()
    ex.ok_usage(request_id(raw.headers), LLAMA, "/v1/chat/completions", False, first.usage, tenant.key_id)

    raw = c.chat.completions.with_raw_response.create(
        model=QWEN, messages=MESSAGES, max_tokens=4, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(raw.parse())
    ex.ok_usage(request_id(raw.headers), QWEN, "/v1/chat/completions", True, chunks[-1].usage, tenant.key_id)

    raw = c.completions.with_raw_response.create(model=QWEN, prompt="Hello there", max_tokens=2)
    ex.ok_usage(request_id(raw.headers), QWEN, "/v1/completions", False, raw.parse().usage, tenant.key_id)

    raw = c.completions.with_raw_response.create(
        model=LLAMA, prompt="Hello there", max_tokens=3, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(raw.parse())
    ex.ok_usage(request_id(raw.headers), LLAMA, "/v1/completions", True, chunks[-1].usage, tenant.key_id)

    raw = c.embeddings.with_raw_response.create(model=LLAMA, input="embed me", encoding_format="float")
    ex.ok_usage(request_id(raw.headers), LLAMA, "/v1/embeddings", False, raw.parse().usage, tenant.key_id)

    # A stream without include_usage: the SDK sees no usage, but the gateway injected it upstream,
    # so the ledger still has exact numbers: the same prompt as the first request, 2 tokens out.
    raw = c.chat.completions.with_raw_response.create(model=LLAMA, messages=MESSAGES, max_tokens=2, stream=True)
    hidden_rid = request_id(raw.headers)
    assert len([x for x in raw.parse() if x.choices and x.choices[0].delta.content]) == 2

    # A key that is later revoked: its successful request counts, its refused one is attributed.
    revoked = admin.create_key(tenant.name, name="later-revoked")
    rc = make_client(revoked["key"])
    raw = rc.chat.completions.with_raw_response.create(model=QWEN, messages=MESSAGES, max_tokens=1)
    ex.ok_usage(request_id(raw.headers), QWEN, "/v1/chat/completions", False, raw.parse().usage, revoked["id"])
    admin.revoke_key(revoked["id"])

    # --- failures ---------------------------------------------------------------------------
    with pytest.raises(openai.AuthenticationError):
        rc.chat.completions.create(model=QWEN, messages=MESSAGES, max_tokens=1)
    ex.fail(401, outcome="auth_failed", error_class="api_key_revoked", key_id=revoked["id"])

    with pytest.raises(openai.AuthenticationError):
        make_client(f"fgk_{tenant.key_id}_" + "C" * 40).chat.completions.create(
            model=QWEN, messages=MESSAGES, max_tokens=1
        )
    ex.fail(401, outcome="auth_failed", error_class="invalid_api_key", key_id=tenant.key_id)

    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model="no-such-model", messages=MESSAGES, max_tokens=1)
    ex.fail(404, outcome="rejected", error_class="model_not_found", key_id=tenant.key_id)

    scoped = admin.create_key(tenant.name, models=[QWEN], name="qwen-only")
    with pytest.raises(openai.PermissionDeniedError):
        make_client(scoped["key"]).chat.completions.create(model=LLAMA, messages=MESSAGES, max_tokens=1)
    ex.fail(403, outcome="rejected", error_class="model_not_allowed", key_id=scoped["id"])

    with pytest.raises(openai.InternalServerError):
        c.chat.completions.create(
            model=LLAMA, messages=MESSAGES, max_tokens=1, extra_headers={"x-sim-fault": "error"}
        )
    ex.fail(502, outcome="upstream_error", error_class="upstream_status", key_id=tenant.key_id)

    r = http("POST", gateway["base_url"] + "/chat/completions", token=tenant.key, raw=b"{not json")
    assert r.status == 400, r.text
    ex.fail(400, outcome="rejected", error_class=None, key_id=tenant.key_id)

    # --- /admin/v1/requests: one row per request, exact ------------------------------------
    # Rows should be visible at once (test_request_is_visible_in_ledger_right_after_response
    # checks that strictly); here a short bounded wait keeps this test about exactness only.
    n_expected = len(ex.ok) + 1 + len(ex.failed)
    rows = wait_for(
        lambda: (lambda rs: rs if len(rs) >= n_expected else None)(admin.requests(tenant.name, limit=50)),
        timeout=5,
        what=f"{n_expected} ledger rows for tenant {tenant.name}",
    )
    by_id = {row["id"]: row for row in rows}
    assert len(by_id) == len(rows), "duplicate ledger rows"
    for row in rows:
        assert ROW_FIELDS <= set(row), f"ledger row lacks {ROW_FIELDS - set(row)}: {row}"
        assert row["tenant"] == tenant.name
    ts = [row["ts"] for row in rows]
    assert ts == sorted(ts, reverse=True), "requests are listed newest first"

    for rid, want in ex.ok.items():
        row = by_id.get(rid)
        assert row is not None, f"no ledger row for ok request {rid} ({want})"
        got = dict(
            outcome=row["outcome"], status=row["status"], model=row["model"], endpoint=row["endpoint"],
            stream=row["stream"], prompt=row["prompt_tokens"], completion=row["completion_tokens"],
            key_id=row["key_id"], usage_source=row["usage_source"], error_class=row["error_class"],
        )
        assert got == dict(
            outcome="ok", status=200, model=want["model"], endpoint=want["endpoint"], stream=want["stream"],
            prompt=want["prompt"], completion=want["completion"], key_id=want["key_id"],
            usage_source="upstream", error_class=None,
        ), row
        assert row["cached_tokens"] == want["cached"], row
        assert row["backend"], row
        assert row["duration_ms"] >= 0 and row["queue_ms"] >= 0

    hidden = by_id.get(hidden_rid)
    assert hidden is not None, "no ledger row for the stream without include_usage"
    assert (hidden["outcome"], hidden["stream"], hidden["completion_tokens"], hidden["usage_source"]) == (
        "ok", True, 2, "upstream"), hidden
    assert hidden["prompt_tokens"] == first.usage.prompt_tokens, (hidden, first.usage)

    failed_rows = [r for r in rows if r["outcome"] != "ok"]
    assert len(failed_rows) == len(ex.failed), f"want {len(ex.failed)} failed rows: {failed_rows}"
    for (status, key_id), want in ex.failed.items():
        match = [r for r in failed_rows if (r["status"], r["key_id"]) == (status, key_id)]
        assert len(match) == 1, f"want one ledger row for failed request {want}, got {match}"
        row = match[0]
        assert row["status"] == want["status"], row
        assert row["outcome"] == want["outcome"], row
        assert row["key_id"] == want["key_id"], row
        if want["error_class"] is None:
            assert row["error_class"], row
        else:
            assert row["error_class"] == want["error_class"], row
        assert row["prompt_tokens"] == 0 and row["completion_tokens"] == 0, row

    assert len(rows) == n_expected, "exactly one row per request"

    # --- /admin/v1/usage: sums per model equal what the SDK reported ----------------------------
    want_sum = defaultdict(lambda: {"prompt_tokens": 0, "completion_tokens": 0, "ok": 0})
    for w in ex.ok.values():
        s = want_sum[w["model"]]
        s["prompt_tokens"] += w["prompt"]
        s["completion_tokens"] += w["completion"]
        s["ok"] += 1
    want_sum[LLAMA]["prompt_tokens"] += hidden["prompt_tokens"]
    want_sum[LLAMA]["completion_tokens"] += 2
    want_sum[LLAMA]["ok"] += 1

    usage = admin.usage(tenant.name)
    for u in usage:
        assert {"tenant", "model", "requests", "prompt_tokens", "completion_tokens", "cached_tokens",
                "total_tokens"} <= set(u), u
        assert u["tenant"] == tenant.name, u
        assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"], u
    got_by_model = {u["model"]: u for u in usage}
    for model, w in want_sum.items():
        u = got_by_model.get(model)
        assert u is not None, f"no usage row for {model}: {usage}"
        assert (u["prompt_tokens"], u["completion_tokens"]) == (w["prompt_tokens"], w["completion_tokens"]), (
            model, u, w)
        assert u["requests"] >= w["ok"], (model, u, w)
        assert u["cached_tokens"] == sum(r["cached_tokens"] for r in rows if r["model"] == model), (model, u)
    for model, u in got_by_model.items():
        if model not in want_sum:
            assert u["prompt_tokens"] == 0 and u["completion_tokens"] == 0, u


def test_abandoned_stream_is_recorded_as_cancelled(admin, tenant):
    # The demo's simulator decodes at a visible pace (~12 ms/token), so 400 tokens take seconds
    # and the client is gone long before the generation ends.
    max_tokens = 400
    raw = tenant.client.chat.completions.with_raw_response.create(
        model=LLAMA,
        messages=MESSAGES,
        max_tokens=max_tokens,
        stream=True,
    )
    rid = request_id(raw.headers)
    stream = raw.parse()
    seen = 0
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            seen += 1
            if seen == 3:
                break
    stream.close()
    assert seen == 3

    row = wait_for(lambda: row_by_id(admin, tenant.name, rid), timeout=10, what=f"ledger row of {rid}")
    assert row["outcome"] == "cancelled", row
    assert row["error_class"] == "client_closed", row
    assert row["stream"] is True
    assert row["key_id"] == tenant.key_id
    assert row["model"] == LLAMA
    assert 3 <= row["completion_tokens"] < max_tokens, row


def test_broken_upstream_stream_is_recorded_as_upstream_error(admin, tenant):
    raw = tenant.client.chat.completions.with_raw_response.create(
        model=QWEN,
        messages=MESSAGES,
        max_tokens=20,
        stream=True,
        extra_headers={"x-sim-fault": "abort-after=3"},
    )
    rid = request_id(raw.headers)
    seen = 0
    try:
        for chunk in raw.parse():
            if chunk.choices and chunk.choices[0].delta.content:
                seen += 1
    except openai.APIError:
        pass
    # How many chunks the fault lets through is the simulator's business (test_errors.py checks
    # it); the ledger must charge exactly what reached the client.
    assert seen >= 1
    row = wait_for(lambda: row_by_id(admin, tenant.name, rid), timeout=10, what=f"ledger row of {rid}")
    assert row["outcome"] == "upstream_error", row
    assert row["error_class"] in ("upstream_stream_broken", "upstream_truncated"), row
    assert row["completion_tokens"] == seen, row
    assert row["status"] == 200, row
    assert row["key_id"] == tenant.key_id
