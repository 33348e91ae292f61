#!/usr/bin/env bash
# The whole test suite: formatting, lints, build, Rust tests, then the OpenAI-SDK conformance
# suite (tests/python) and the browser suite (tests/browser, headless Chromium) against the
# freshly built binary.
#
#   ./scripts/test.sh               everything
#   SKIP_LINT=1 ./scripts/test.sh   skip `cargo fmt --check` and clippy (quick local runs)
#
# Environment:
#   FAIRGATE_TEST_POSTGRES_URL  PostgreSQL for the tests (trust auth). Unset: this script starts a
#                               private server for the run (initdb in a temp directory, a free
#                               loopback port, stopped and removed on exit); without the server
#                               binaries it says what to install, and the PostgreSQL tests skip
#                               (they fail under CI).
#   FAIRGATE_TEST_PG_BINDIR     directory holding initdb/postgres/pg_ctl (default: newest
#                               /usr/lib/postgresql/*/bin, else the initdb on PATH)
#   CI                          any non-empty value other than false/0: nothing may skip
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

warn() {
    printf '\nwarning: %s\n' "$*" >&2
}

# The one CI rule (same as fairgate_testkit::in_ci and tests/demo_process.py's in_ci).
in_ci() {
    local ci="${CI:-}"
    ci="${ci//[[:space:]]/}"
    case "${ci,,}" in
        "" | 0 | false) return 1 ;;
        *) return 0 ;;
    esac
}

# --- a private PostgreSQL for the run, when none is given -----------------------------------------
# One server for the whole run (one initdb instead of one per test binary); each test isolates
# itself in its own schema. Stopped and removed by the EXIT trap.
PG_TMP=""
PG_BINDIR=""
PG_AS=()

find_pg_bindir() {
    if [ -n "${FAIRGATE_TEST_PG_BINDIR:-}" ]; then
        PG_BINDIR="$FAIRGATE_TEST_PG_BINDIR"
    else
        # shellcheck disable=SC2012  # version directory names are plain numbers
        PG_BINDIR="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)"
        if [ -z "$PG_BINDIR" ] || [ ! -x "$PG_BINDIR/initdb" ]; then
            local initdb
            initdb="$(command -v initdb || true)"
            PG_BINDIR="${initdb:+$(dirname "$(readlink -f "$initdb")")}"
        fi
    fi
    [ -n "$PG_BINDIR" ] && [ -x "$PG_BINDIR/initdb" ] && [ -x "$PG_BINDIR/pg_ctl" ] \
        && [ -x "$PG_BINDIR/postgres" ]
}

stop_private_postgres() {
    if [ -n "$PG_TMP" ] && [ -d "$PG_TMP" ]; then
        if [ -f "$PG_TMP/data/postmaster.pid" ]; then
            ${PG_AS[@]+"${PG_AS[@]}"} "$PG_BINDIR/pg_ctl" -D "$PG_TMP/data" -m fast -w -t 60 stop \
                >/dev/null 2>&1 || true
        fi
        rm -rf "$PG_TMP"
    fi
}

free_port() {
    "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start_private_postgres() {
    if ! find_pg_bindir; then
        warn "FAIRGATE_TEST_POSTGRES_URL is not set and no PostgreSQL server binaries (initdb, pg_ctl, postgres) were found: install them (Debian/Ubuntu: apt-get install postgresql; Fedora: dnf install postgresql-server; macOS: brew install postgresql) or set FAIRGATE_TEST_POSTGRES_URL. The PostgreSQL tests will SKIP$(in_ci && echo ' and FAIL, because CI is set')."
        return 0
    fi
    PG_TMP="$(mktemp -d "${TMPDIR:-/tmp}/fairgate-test-pg.XXXXXX")"
    trap stop_private_postgres EXIT
    if [ "$(id -u)" = 0 ]; then
        # PostgreSQL refuses to run as root: run it as the `postgres` user the package creates.
        id postgres >/dev/null 2>&1 \
            || die "running as root and there is no 'postgres' user to run a private PostgreSQL as (apt-get install postgresql creates it), or set FAIRGATE_TEST_POSTGRES_URL"
        chown postgres: "$PG_TMP"
        if command -v runuser >/dev/null 2>&1; then
            PG_AS=(runuser -u postgres --)
        else
            PG_AS=(setpriv --reuid=postgres --regid=postgres --init-groups)
        fi
    fi
    ${PG_AS[@]+"${PG_AS[@]}"} "$PG_BINDIR/initdb" -D "$PG_TMP/data" -U postgres --auth=trust \
        --encoding=UTF8 --locale=C --no-sync >"$PG_TMP/initdb.log" 2>&1 \
        || die "initdb of the private PostgreSQL failed: $(tail -n 20 "$PG_TMP/initdb.log")"
    local port tries=0
    while :; do
        port="$(free_port)"
        if ${PG_AS[@]+"${PG_AS[@]}"} "$PG_BINDIR/pg_ctl" -D "$PG_TMP/data" -l "$PG_TMP/postgres.log" \
            -w -t 90 -o "-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$PG_TMP -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300" \
            start >/dev/null; then
            break
        fi
        tries=$((tries + 1))
        [ "$tries" -lt 3 ] || die "the private PostgreSQL did not start: $(tail -n 20 "$PG_TMP/postgres.log")"
    done
    "$PG_BINDIR/createdb" -h 127.0.0.1 -p "$port" -U postgres -w test \
        || die "creating database test in the private PostgreSQL failed"
    export FAIRGATE_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$port/test"
    echo "private PostgreSQL for this run: $FAIRGATE_TEST_POSTGRES_URL (data in $PG_TMP)"
}

command -v cargo >/dev/null 2>&1 || die "cargo not found (install Rust via rustup, or add ~/.cargo/bin to PATH)"

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

if [ -z "${FAIRGATE_TEST_POSTGRES_URL:-}" ]; then
    step "private PostgreSQL (FAIRGATE_TEST_POSTGRES_URL not set)"
    start_private_postgres
fi

# Deployment artifacts (issue 14): hadolint, helm lint/template, schema validation of every
# rendered object, the rendered cluster config run as two gateways. Tools are cached under
# .tools/deploy (the Rust dashboard test renders the chart with that helm too); under CI a
# missing tool fails the run.
step "deployment checks (scripts/test_deploy.sh)"
FAIRGATE_BIN="$FAIRGATE_BIN" ./scripts/test_deploy.sh

# Slurm job templates (deploy/slurm): dry-run renders, sbatch --test-only, both templates run as
# real jobs through slurmrestd on the local single-node Slurm. scripts/slurm/local-slurm.sh starts
# it when .ci/run has not (needs root; installs the packages with apt-get); its exports also point
# the Rust tests at it. Without it the Slurm checks skip locally and fail under CI.
step "Slurm job templates (scripts/test_slurm_templates.sh)"
if [ -z "${FAIRGATE_SLURM_REST:-}" ]; then
    if slurm_env="$(./scripts/slurm/local-slurm.sh)"; then
        eval "$slurm_env"
    elif in_ci; then
        die "the local Slurm did not start (scripts/slurm/local-slurm.sh, see above)"
    else
        warn "the local Slurm did not start (see above): the Slurm checks will SKIP"
    fi
fi
FAIRGATE_BIN="$FAIRGATE_BIN" ./scripts/test_slurm_templates.sh

# The binary as the image runs it: uid 65532, no capabilities, read-only root, data on a tmpfs.
step "the binary as the image runs it (scripts/deploy/run_like_image.py)"
set +e
python3 scripts/deploy/run_like_image.py "$FAIRGATE_BIN"
rc=$?
set -e
case "$rc" in
    0) ;;
    2) if in_ci; then die "run_like_image could not run (needs root, unshare, mount, setpriv)"; fi
       warn "run_like_image skipped: this machine cannot run it (under CI it fails)" ;;
    *) die "run_like_image failed" ;;
esac

step "cargo test --workspace (FAIRGATE_TEST_POSTGRES_URL=${FAIRGATE_TEST_POSTGRES_URL:-<none>})"
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

# The same conformance idea with the official npm `openai` package (tests/js, node --test);
# `npm ci` when tests/js/node_modules is missing or the lock changed. Without node/npm it skips
# locally and fails under CI.
step "JS SDK suite: node --test tests/js (FAIRGATE_BIN=$FAIRGATE_BIN)"
FAIRGATE_BIN="$FAIRGATE_BIN" ./scripts/test_js_sdk.sh

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
