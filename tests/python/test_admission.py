"""Admission through the official SDK: budgets, rate limits and priority classes surface as the
exceptions and fields an OpenAI client expects."""

import openai
import pytest

from _support import LLAMA, row_by_id, unique_name, wait_for

MESSAGES = [{"role": "user", "content": "Tell me about fair queueing."}]


def tenant_with_policy(admin, make_client, policy: dict):
    name = unique_name()
    admin.call("POST", "/tenants", {"name": name, "weight": 1, "policy": policy}, expect=201)
    key = admin.create_key(name)
    return name, key, make_client(key["key"])


def test_hard_budget_cuts_a_stream_then_refuses_with_402(admin, make_client):
    name, _, client = tenant_with_policy(
        admin, make_client, {"budgets": [{"period": "day", "tokens": 60}], "hard_cap": True}
    )
    stream = client.chat.completions.create(model=LLAMA, messages=MESSAGES, max_tokens=300, stream=True)
    received = 0
    with pytest.raises(openai.APIError) as cut:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                received += 1
    assert "budget" in str(cut.value).lower()
    assert 0 < received < 300

    with pytest.raises(openai.APIStatusError) as refused:
        client.chat.completions.create(model=LLAMA, messages=MESSAGES, max_tokens=5)
    assert refused.value.status_code == 402
    assert refused.value.code == "budget_exceeded"
    assert refused.value.type == "insufficient_quota"

    rows = wait_for(lambda: admin.requests(name) if len(admin.requests(name)) >= 2 else None, what="ledger rows")
    outcomes = sorted(r["outcome"] for r in rows)
    assert outcomes == ["cut_off", "rejected"], rows


def test_tpm_limit_is_a_rate_limit_error_with_retry_after(admin, make_client):
    _, _, client = tenant_with_policy(
        admin, make_client, {"limits": {"tpm": 500}, "on_limit": "reject"}
    )
    with pytest.raises(openai.RateLimitError) as limited:
        for _ in range(20):
            client.chat.completions.create(model=LLAMA, messages=MESSAGES, max_tokens=200)
    assert limited.value.code == "tpm_limit_exceeded"
    assert int(limited.value.response.headers["retry-after"]) >= 1


def test_priority_header_is_recorded(admin, tenant):
    raw = tenant.client.chat.completions.with_raw_response.create(
        model=LLAMA,
        messages=MESSAGES,
        max_tokens=4,
        extra_headers={"x-fairgate-priority": "batch"},
    )
    assert raw.headers["x-fairgate-queue-wait-ms"].isdigit()
    rid = raw.headers["x-request-id"]
    raw.parse()
    row = wait_for(lambda: row_by_id(admin, tenant.name, rid), what="ledger row")
    assert row["priority"] == "batch"

    with pytest.raises(openai.BadRequestError) as bad:
        tenant.client.chat.completions.create(
            model=LLAMA, messages=MESSAGES, max_tokens=4, extra_headers={"x-fairgate-priority": "now"}
        )
    assert bad.value.code == "invalid_header"
