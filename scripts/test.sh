#!/usr/bin/env bash
# The whole test suite: formatting, lints, build, Rust tests, then the OpenAI-SDK conformance
# suite (tests/python) and the browser suite (tests/browser, headless Chromium) against the
# freshly built binary.
#
#   ./scripts/test.sh               everything
#   SKIP_LINT=1 ./scripts/test.sh   skip `cargo fmt --check` and clippy (quick local runs)
#
# Environment:
#   FAIRGATE_TEST_POSTGRES_URL  Postgres for the store tests (default postgres://postgres@127.0.0.1:5432/test)
#   FAIRGATE_BIN                binary the Python suite starts (default target/debug/fairgate)
#   PYTHON                      interpreter used to create .venv-test (default python3)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$(pwd)"

if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi

step() {
    printf '\n==> [%s] %s\n' "$(date +%H:%M:%S)" "$*"
}

die() {
    printf '\nerror: %s\n' "$*" >&2
    exit 1
}

command -v cargo >/dev/null 2>&1 || die "cargo not found (install Rust via rustup, or add ~/.cargo/bin to PATH)"

export FAIRGATE_TEST_POSTGRES_URL="${FAIRGATE_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}"
FAIRGATE_BIN="${FAIRGATE_BIN:-target/debug/fairgate}"
PYTHON="${PYTHON:-python3}"
VENV="$ROOT/.venv-test"
REQS="$ROOT/tests/python/requirements.txt"

if [ "${SKIP_LINT:-0}" = "1" ]; then
    step "cargo fmt / clippy: skipped (SKIP_LINT=1)"
else
    step "cargo fmt --all -- --check"
    cargo fmt --all -- --check

    step "cargo clippy --workspace --all-targets -- -D warnings"
    cargo clippy --workspace --all-targets -- -D warnings
fi

step "cargo build --workspace --bins"
cargo build --workspace --bins

step "cargo test --workspace (FAIRGATE_TEST_POSTGRES_URL=$FAIRGATE_TEST_POSTGRES_URL)"
cargo test --workspace

step "python test environment (.venv-test)"
# Recreate/refresh only when the venv is missing or broken, or requirements.txt changed.
stamp="$VENV/.requirements.sha256"
want="$(sha256sum "$REQS" | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV" || die "'$PYTHON -m venv' failed (on Debian/Ubuntu: apt-get install python3-venv)"
fi
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$REQS"
    printf '%s\n' "$want" >"$stamp"
    echo "installed: $(tr '\n' ' ' < <(grep -Ev '^\s*(#|$)' "$REQS"))"
else
    echo "up to date"
fi

[ -x "$FAIRGATE_BIN" ] || die "binary $FAIRGATE_BIN not found after the build"

step "pytest tests/python (FAIRGATE_BIN=$FAIRGATE_BIN)"
FAIRGATE_BIN="$FAIRGATE_BIN" "$VENV/bin/python" -m pytest tests/python -q

# Browser suite: the portal in headless Chromium via Selenium. Needs the system packages
# chromium + chromium-driver (.ci/run installs them); without them the tests skip locally and
# fail under CI=true. Screenshots land in tests/browser/screenshots/.
step "browser test environment (.venv-test + tests/browser/requirements.txt)"
BROWSER_REQS="$ROOT/tests/browser/requirements.txt"
browser_stamp="$VENV/.browser-requirements.sha256"
browser_want="$(sha256sum "$BROWSER_REQS" | cut -d' ' -f1)"
if [ "$(cat "$browser_stamp" 2>/dev/null || true)" != "$browser_want" ]; then
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$BROWSER_REQS"
    printf '%s\n' "$browser_want" >"$browser_stamp"
    echo "installed: $(tr '\n' ' ' < <(grep -Ev '^\s*(#|$)' "$BROWSER_REQS"))"
else
    echo "up to date"
fi

# Last runner on purpose: its summary line ("N passed in ...") closes the output.
step "pytest tests/browser (FAIRGATE_BIN=$FAIRGATE_BIN)"
FAIRGATE_BIN="$FAIRGATE_BIN" "$VENV/bin/python" -m pytest tests/browser -q
