"""Images, audio and speech through the official SDK, each recorded in its own unit."""

import io
import struct

import pytest
from _support import wait_for


def wav(seconds: int, rate: int = 8000) -> bytes:
    """A WAV file of silence: 8-bit mono PCM."""
    data = bytes([128]) * (seconds * rate)
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate, 1, 8)
    return (
        b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVE"
        + b"fmt " + struct.pack("<I", 16) + fmt
        + b"data" + struct.pack("<I", len(data)) + data
    )


def rows_by_endpoint(admin, tenant, n):
    rows = wait_for(
        lambda: (lambda rs: rs if len(rs) >= n else None)(admin.requests(tenant, limit=50)),
        what=f"{n} ledger rows",
    )
    return {r["endpoint"]: r for r in rows}


# The SDK marks `audio.translations` deprecated; it is still OpenAI's and vLLM's endpoint.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_images_audio_and_speech_are_recorded_in_their_units(admin, tenant):
    c = tenant.client
    img = c.images.generate(model="sim-llama", prompt="a lighthouse at dusk", n=2)
    assert len(img.data) == 2 and img.data[0].b64_json

    tr = c.audio.transcriptions.create(model="sim-llama", file=("talk.wav", io.BytesIO(wav(6)), "audio/wav"))
    assert tr.text

    tl = c.audio.translations.create(
        model="sim-llama", file=("talk.wav", io.BytesIO(wav(3)), "audio/wav"), response_format="verbose_json"
    )
    assert tl.text

    text = "Fair share, spoken aloud."
    speech = c.audio.speech.create(model="sim-llama", voice="alloy", input=text, response_format="wav")
    assert speech.content[:4] == b"RIFF"

    rows = rows_by_endpoint(admin, tenant.name, 4)
    assert rows["/v1/images/generations"]["unit"] == "images"
    assert rows["/v1/images/generations"]["units"] == 2
    assert rows["/v1/audio/transcriptions"]["unit"] == "audio_seconds"
    assert rows["/v1/audio/transcriptions"]["units"] == 6
    assert rows["/v1/audio/translations"]["units"] == 3
    assert rows["/v1/audio/speech"]["unit"] == "characters"
    assert rows["/v1/audio/speech"]["units"] == len(text)
    for r in rows.values():
        assert r["outcome"] == "ok", r
