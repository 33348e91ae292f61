"""Chat completions through the SDK: non-stream, stream, stream with usage."""

import pytest

from _support import DEMO_MODELS

MESSAGES = [{"role": "user", "content": "Say something short."}]


@pytest.mark.parametrize("model", DEMO_MODELS)
def test_chat_non_stream(client, model):
    resp = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=5)
    assert resp.object == "chat.completion"
    assert resp.model == model
    assert len(resp.choices) == 1
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].message.content, resp
    assert resp.usage is not None
    assert resp.usage.completion_tokens == 5
    assert resp.usage.prompt_tokens > 0
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens


def test_chat_stream_without_include_usage_strips_injected_usage(client):
    """The gateway injects `include_usage` upstream for accounting; the client must not see it."""
    max_tokens = 6
    stream = client.chat.completions.create(
        model="sim-llama", messages=MESSAGES, max_tokens=max_tokens, stream=True
    )
    chunks = list(stream)
    assert chunks, "no chunks"
    for c in chunks:
        assert c.object == "chat.completion.chunk"
        assert c.usage is None, f"usage leaked to a client that did not ask for it: {c}"
        assert c.choices, f"a chunk with empty choices (the injected usage chunk) leaked: {c}"
    content_chunks = [c for c in chunks if c.choices[0].delta.content]
    text = "".join(c.choices[0].delta.content for c in content_chunks)
    assert text
    assert len(content_chunks) == max_tokens
    assert chunks[-1].choices[0].finish_reason is not None


def test_chat_stream_with_include_usage(client):
    max_tokens = 4
    stream = client.chat.completions.create(
        model="sim-qwen",
        messages=MESSAGES,
        max_tokens=max_tokens,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert len(chunks) >= 2
    last = chunks[-1]
    assert last.choices == [], last
    assert last.usage is not None
    assert last.usage.completion_tokens == max_tokens
    assert last.usage.prompt_tokens > 0
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    for c in chunks[:-1]:
        assert c.usage is None, c
        assert c.choices, c
    content_chunks = [c for c in chunks[:-1] if c.choices[0].delta.content]
    assert len(content_chunks) == max_tokens
    assert "".join(c.choices[0].delta.content for c in content_chunks)
