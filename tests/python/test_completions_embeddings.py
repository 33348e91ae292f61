"""Legacy completions (non-stream and stream) and embeddings through the SDK."""

import pytest


def test_completions_non_stream(client):
    resp = client.completions.create(model="sim-qwen", prompt="Once upon a time", max_tokens=3)
    assert resp.object == "text_completion"
    assert len(resp.choices) == 1
    assert resp.choices[0].text
    assert resp.usage is not None
    assert resp.usage.completion_tokens == 3
    assert resp.usage.prompt_tokens > 0


def test_completions_stream(client):
    max_tokens = 5
    chunks = list(
        client.completions.create(model="sim-llama", prompt="Once upon a time", max_tokens=max_tokens, stream=True)
    )
    assert chunks
    for c in chunks:
        assert c.usage is None, c
        assert c.choices, c
    text_chunks = [c for c in chunks if c.choices[0].text]
    assert len(text_chunks) == max_tokens
    assert "".join(c.choices[0].text for c in text_chunks)


def test_completions_stream_with_include_usage(client):
    max_tokens = 3
    chunks = list(
        client.completions.create(
            model="sim-llama",
            prompt="Once upon a time",
            max_tokens=max_tokens,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    last = chunks[-1]
    assert last.choices == [], last
    assert last.usage is not None and last.usage.completion_tokens == max_tokens
    assert last.usage.prompt_tokens > 0


@pytest.mark.parametrize("encoding_format", [None, "float"])
def test_embeddings(client, encoding_format):
    kwargs = {} if encoding_format is None else {"encoding_format": encoding_format}
    resp = client.embeddings.create(model="sim-llama", input="hello world", **kwargs)
    assert len(resp.data) == 1
    vec = resp.data[0].embedding
    assert isinstance(vec, list) and len(vec) > 0
    assert all(isinstance(x, float) for x in vec)
    assert resp.usage.prompt_tokens > 0


def test_embeddings_batch(client):
    resp = client.embeddings.create(model="sim-qwen", input=["a", "b c", "d e f"], encoding_format="float")
    assert [d.index for d in resp.data] == [0, 1, 2]
    dims = {len(d.embedding) for d in resp.data}
    assert len(dims) == 1 and dims.pop() > 0
    assert resp.usage.prompt_tokens > 0
