"""Runs `fairgate demo` for the Python suites (tests/python, tests/browser): one process per
test session, its one JSON ready line, and a clean exit on SIGTERM.

The binary comes from `FAIRGATE_BIN` (default `target/debug/fairgate` relative to the repository
root).
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
READY_TIMEOUT_S = 60.0
SHUTDOWN_TIMEOUT_S = 20.0
# What every caller relies on in the ready line.
REQUIRED_FIELDS = (
    "base_url", "key", "admin_url", "admin_token", "models", "portal_url", "portal_email", "portal_password",
)


def in_ci() -> bool:
    """The one rule for "are we under CI", as in the Rust kit (`fairgate_testkit::in_ci`): `CI`
    set to anything non-empty other than `false` or `0`."""
    v = os.environ.get("CI", "").strip()
    return v != "" and v != "0" and v.lower() != "false"


def require(what: str, why: str) -> None:
    """Something a test needs is missing: fail under CI (CI must not go green without having run
    it), skip loudly elsewhere."""
    if in_ci():
        pytest.fail(f"{what} is required under CI (CI is set): {why}", pytrace=False)
    pytest.skip(f"SKIP: {what} unavailable: {why}")


def fairgate_binary() -> Path:
    p = Path(os.environ.get("FAIRGATE_BIN", "target/debug/fairgate"))
    if not p.is_absolute():
        p = REPO_ROOT / p
    if not p.is_file():
        pytest.exit(
            f"fairgate binary not found at {p}: build it (cargo build --bin fairgate) or set FAIRGATE_BIN",
            returncode=2,
        )
    return p


def tail(path: Path, n: int = 8000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError as e:
        return f"<could not read {path}: {e}>"


def read_line(proc: subprocess.Popen, timeout: float) -> bytes | None:
    """First stdout line of `proc`, or None on timeout / early exit."""
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    fd = proc.stdout.fileno()
    buf = b""
    deadline = time.monotonic() + timeout
    try:
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            if not sel.select(timeout=min(left, 0.5)):
                if proc.poll() is not None:
                    return None
                continue
            chunk = os.read(fd, 65536)
            if not chunk:  # EOF: the process closed stdout (exited)
                return None
            buf += chunk
    finally:
        sel.unregister(proc.stdout)
        sel.close()
    line, _, rest = buf.partition(b"\n")
    if rest.strip():
        raise AssertionError(f"demo printed more than one line before the first read: {rest[:500]!r}")
    return line


def demo_gateway(tmp_path_factory) -> Iterator[dict]:
    """Starts `fairgate demo`, yields its ready line (plus `stderr_log`, `pid`), then stops it
    with SIGTERM and asserts a clean exit and nothing else on stdout."""
    binary = fairgate_binary()
    data_dir = tmp_path_factory.mktemp("fairgate-data")
    stderr_path = data_dir.parent / "fairgate-demo.stderr.log"
    env = dict(os.environ)
    # Harness variable, not gateway configuration (FAIRGATE_* variables are config overrides).
    env.pop("FAIRGATE_BIN", None)
    cmd = [str(binary), "demo", "--listen", "127.0.0.1:0", "--data-dir", str(data_dir), "--json"]
    with open(stderr_path, "wb") as stderr_file:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr_file, env=env, cwd=data_dir
        )
    try:
        line = read_line(proc, READY_TIMEOUT_S)
        if line is None:
            if proc.poll() is not None:
                why = f"exited with code {proc.returncode} before printing its ready line"
            else:
                why = f"printed no ready line within {READY_TIMEOUT_S:.0f}s"
            pytest.fail(f"`{' '.join(cmd)}` {why}.\n--- stderr ---\n{tail(stderr_path)}", pytrace=False)
        try:
            info = json.loads(line)
        except ValueError:
            pytest.fail(f"demo ready line is not JSON: {line[:500]!r}\n--- stderr ---\n{tail(stderr_path)}", pytrace=False)
        for field in REQUIRED_FIELDS:
            assert field in info, f"demo ready line lacks `{field}`: {info!r}"
        assert info["base_url"].startswith("http://127.0.0.1:") and info["base_url"].endswith("/v1"), info
        assert info["admin_url"].startswith("http://127.0.0.1:") and info["admin_url"].endswith("/admin/v1"), info
        assert info["key"].startswith("fgk_"), info

        # Anything printed to stdout later must not block the process on a full pipe.
        extra_stdout: list[bytes] = []
        drain = threading.Thread(
            target=lambda: extra_stdout.extend(iter(lambda: proc.stdout.read1(65536) or None, None)), daemon=True
        )
        drain.start()
        info = dict(info, stderr_log=str(stderr_path), pid=proc.pid)
        yield info
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=SHUTDOWN_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                pytest.fail(
                    f"fairgate demo did not exit within {SHUTDOWN_TIMEOUT_S:.0f}s of SIGTERM.\n"
                    f"--- stderr ---\n{tail(stderr_path)}",
                    pytrace=False,
                )
    assert proc.returncode == 0, (
        f"fairgate demo exited with code {proc.returncode} after SIGTERM (want 0).\n--- stderr ---\n{tail(stderr_path)}"
    )
    drain.join(timeout=5)
    assert not b"".join(extra_stdout).strip(), (
        f"demo must print exactly one line to stdout (logs go to stderr); also got: {b''.join(extra_stdout)[:500]!r}"
    )


