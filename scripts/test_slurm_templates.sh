#!/usr/bin/env bash
# Checks of the Slurm job templates (deploy/slurm) and of scripts/slurm:
#   (a) bash -n and shellcheck;
#   (b) dry-run renders: the multinode template for a 2-node layout (head/worker/serve commands,
#       tp=4, pp=2, 3 probes, nodes) and the single-node one (tp, one probe);
#   (c) `sbatch --test-only` of both templates on the local Slurm (scripts/slurm/local-slurm.sh,
#       started here when it is not running);
#   (d) the single-node template run as a real job submitted through slurmrestd (as the gateway
#       does), with SERVER_CMD = `$FAIRGATE_BIN sim` (else python3 -m http.server): the endpoint
#       file, the URL answering, the API key reaching the server, DELETE ending the job;
#   (e) the multinode template run for real on the one node with a stub `ray`.
# CI set (anything but empty/0/false): a Slurm that cannot be started, or no shellcheck, fails.
# Otherwise those checks are skipped with a message. Needs python3 and curl.
# shellcheck disable=SC2016  # $PORT etc. are meant to expand in the job, not here
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
T0=$SECONDS

step() { printf '\n==> [slurm %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
fail() { printf '\nFAIL: %s\n' "$*" >&2; exit 1; }
ok() { printf '  ok: %s\n' "$*"; }
in_ci() {
    local ci="${CI:-}"
    ci="${ci//[[:space:]]/}"
    case "${ci,,}" in "" | 0 | false) return 1 ;; *) return 0 ;; esac
}
skip() {
    in_ci && fail "$1 (CI is set, so this fails instead of skipping)"
    printf '  SKIPPED: %s\n' "$1" >&2
}

TMP="$(mktemp -d "${TMPDIR:-/tmp}/fairgate-slurm-test.XXXXXX")"
JOBS=()
cleanup() {
    if [ "${#JOBS[@]}" -gt 0 ] && command -v scancel >/dev/null; then scancel "${JOBS[@]}" 2>/dev/null || true; fi
    rm -rf "$TMP"
}
trap cleanup EXIT

SINGLE=deploy/slurm/vllm.sbatch
MULTI=deploy/slurm/vllm-multinode.sbatch
SHELL_FILES=("$SINGLE" "$MULTI" scripts/slurm/local-slurm.sh scripts/slurm/collect-samples.sh scripts/test_slurm_templates.sh)

# --- (a) syntax and lint -----------------------------------------------------------------------------
step "bash -n and shellcheck"
for f in "${SHELL_FILES[@]}"; do bash -n "$f" || fail "bash -n $f"; done
ok "bash -n: ${SHELL_FILES[*]}"
if command -v shellcheck >/dev/null; then
    shellcheck "${SHELL_FILES[@]}" || fail "shellcheck"
    ok "shellcheck $(shellcheck --version | awk '/^version:/ {print $2}')"
else
    skip "shellcheck is not installed (apt-get install shellcheck)"
fi

# --- (b) dry-run renders --------------------------------------------------------------------------------
step "dry-run renders"
# A fake scontrol that expands the one node list used here; a failing one forces the fallback.
mkdir -p "$TMP/fakebin" "$TMP/nobin"
printf '#!/bin/sh\n[ "$3" = "gpu[01-02]" ] && printf "gpu01\\ngpu02\\n"\n' >"$TMP/fakebin/scontrol"
printf '#!/bin/sh\nexit 1\n' >"$TMP/nobin/scontrol"
chmod +x "$TMP/fakebin/scontrol" "$TMP/nobin/scontrol"

# expect_line OUTPUT LINE: OUTPUT holds LINE exactly.
expect_line() { grep -qxF -- "$2" <<<"$1" || fail "expected the line
  $2
in
$1"; }
# expect_endpoint OUTPUT PYTHON-DICT: the ENDPOINT: line parses to exactly that object.
cat >"$TMP/check_endpoint.py" <<'EOF'
import ast, json, sys
got = json.loads(sys.stdin.read())
want = ast.literal_eval(sys.argv[1])
if got != want:
    sys.exit(f"endpoint JSON {got!r}\n   expected {want!r}")
EOF
expect_endpoint() {
    sed -n 's/^ENDPOINT: //p' <<<"$1" | python3 "$TMP/check_endpoint.py" "$2" || fail "endpoint JSON of
$1"
}

for variant in fakebin nobin; do
    list="gpu[01-02]"
    [ "$variant" = fakebin ] || list="gpu01,gpu02"
    out="$(env -u CUDA_VISIBLE_DEVICES -u FAIRGATE_ADVERTISE_HOST -u SERVER_CMD -u FAIRGATE_ENDPOINT_FILE \
        PATH="$TMP/$variant:$PATH" FAIRGATE_DRY_RUN=1 SLURM_JOB_ID=4242 SLURM_JOB_NODELIST="$list" \
        SLURM_JOB_NUM_NODES=2 GPUS_PER_NODE=4 FAIRGATE_MODEL=llama VLLM_MODEL=org/Llama-70B PORT=8100 \
        VLLM_EXTRA_ARGS='--max-model-len 8192' VLLM_API_KEY=sk-not-on-any-command-line \
        FAIRGATE_ENDPOINT_DIR=/srv/endpoints bash "$MULTI")" || fail "multinode dry run ($variant)"
    expect_line "$out" "HEAD: env VLLM_HOST_IP=gpu01 ray start --head --node-ip-address=gpu01 --port=6380 --dashboard-agent-listen-port=52365 --num-gpus=4 --disable-usage-stats"
    expect_line "$out" "WORKER gpu02: srun --nodes=1 --ntasks=1 -w gpu02 env VLLM_HOST_IP=gpu02 ray start --block --address=gpu01:6380 --node-ip-address=gpu02 --dashboard-agent-listen-port=52365 --num-gpus=4 --disable-usage-stats"
    expect_line "$out" "SERVE: vllm serve org/Llama-70B --served-model-name llama --host 0.0.0.0 --port 8100 --tensor-parallel-size 4 --pipeline-parallel-size 2 --distributed-executor-backend ray --max-model-len 8192"
    expect_line "$out" "ENDPOINT_FILE: /srv/endpoints/4242.json"
    expect_endpoint "$out" "{'job_id': '4242', 'url': 'http://gpu01:8100', 'probes': ['http://gpu01:8100/health', 'http://gpu01:52365/api/local_raylet_healthz', 'http://gpu02:52365/api/local_raylet_healthz'], 'nodes': ['gpu01', 'gpu02']}"
    [ "$(grep -c '^WORKER ' <<<"$out")" = 1 ] || fail "one worker expected:
$out"
    ! grep -q sk-not-on-any-command-line <<<"$out" || fail "VLLM_API_KEY shows in a command line"
done
ok "multinode, 2 nodes (scontrol and plain comma list): head, worker, serve tp=4 pp=2, 3 probes, nodes"

out="$(env -u GPUS_PER_NODE -u FAIRGATE_ENDPOINT_DIR -u SERVER_CMD -u VLLM_MODEL -u VLLM_EXTRA_ARGS \
    FAIRGATE_DRY_RUN=1 SLURM_JOB_ID=77 SLURMD_NODENAME=node7 CUDA_VISIBLE_DEVICES=0,1,2 \
    FAIRGATE_MODEL=Qwen/Qwen3-8B PORT=9000 FAIRGATE_ADVERTISE_HOST=node7.cluster \
    FAIRGATE_ENDPOINT_FILE='/srv/ep/job-%j.json' VLLM_API_KEY=sk-not-on-any-command-line bash "$SINGLE")" \
    || fail "single-node dry run"
expect_line "$out" "SERVE: vllm serve Qwen/Qwen3-8B --served-model-name Qwen/Qwen3-8B --host 0.0.0.0 --port 9000 --tensor-parallel-size 3"
expect_line "$out" "ENDPOINT_FILE: /srv/ep/job-77.json"
expect_endpoint "$out" "{'job_id': '77', 'url': 'http://node7.cluster:9000', 'probes': ['http://node7.cluster:9000/health'], 'nodes': ['node7']}"
! grep -q sk-not-on-any-command-line <<<"$out" || fail "VLLM_API_KEY shows in a command line"
# SERVER_CMD is kept unexpanded until the job runs it (after PORT is chosen).
out="$(FAIRGATE_DRY_RUN=1 SLURM_JOB_ID=78 FAIRGATE_MODEL=m PORT=9001 \
    SERVER_CMD='fairgate sim --listen 0.0.0.0:$PORT --model $FAIRGATE_MODEL' bash "$SINGLE")"
expect_line "$out" "SERVE: bash -c 'exec fairgate sim --listen 0.0.0.0:\$PORT --model \$FAIRGATE_MODEL'"
ok "single node: tp from CUDA_VISIBLE_DEVICES, one probe, %j in the endpoint path, SERVER_CMD"

# --- the local Slurm ---------------------------------------------------------------------------------------
step "local Slurm (scripts/slurm/local-slurm.sh)"
if ! exports="$(scripts/slurm/local-slurm.sh)"; then
    skip "the local Slurm could not be started (needs root and the Slurm packages; see above): (c), (d), (e)"
    echo "slurm template checks passed, Slurm parts skipped ($((SECONDS - T0)) s)"
    exit 0
fi
eval "$exports"
SOCK="${FAIRGATE_SLURM_REST#unix:}"
ok "SLURM_CONF=$SLURM_CONF FAIRGATE_SLURM_REST=$FAIRGATE_SLURM_REST"

# --- (c) sbatch --test-only ------------------------------------------------------------------------------
step "sbatch --test-only"
for tmpl in "$SINGLE" "$MULTI"; do
    msg="$(sbatch --test-only --gres=gpu:2 -t 1 -p gpu -N 1 "$tmpl" 2>&1)" || fail "sbatch --test-only $tmpl: $msg"
    grep -q "to start at" <<<"$msg" || fail "sbatch --test-only $tmpl: $msg"
done
ok "both templates accepted with --gres=gpu:2 -t 1 -p gpu -N 1"

# --- (d), (e) real jobs through slurmrestd --------------------------------------------------------------
rest() { # METHOD PATH [BODY-FILE]
    curl -sS --max-time 20 --unix-socket "$SOCK" -X "$1" ${3:+-H 'Content-Type: application/json' --data "@$3"} \
        "http://localhost/slurm/v0.0.38$2"
}
job_state() {
    rest GET "/job/$1" | python3 -c 'import json,sys; j=json.load(sys.stdin)["jobs"]; print(j[0]["job_state"] if j else "GONE")'
}
# submit TEMPLATE NAME KEY=VALUE...: the v0.0.38 request the gateway sends; prints the job id.
submit() {
    local tmpl="$1" name="$2"
    shift 2
    OUT_DIR="$TMP/out" python3 - "$tmpl" "$name" "$@" >"$TMP/req.json" <<'EOF'
import json, os, sys
tmpl, name, pairs = sys.argv[1], sys.argv[2], sys.argv[3:]
env = {"PATH": "/usr/local/bin:/usr/bin:/bin"}
env.update(p.split("=", 1) for p in pairs)
print(json.dumps({"job": {"name": name, "partition": "gpu", "nodes": 1, "gres": "gpu:2", "time_limit": 5,
                          "current_working_directory": "/tmp", "standard_output": f"{os.environ['OUT_DIR']}/{name}-%j.out",
                          "environment": env},
                  "script": open(tmpl).read()}))
EOF
    rest POST /job/submit "$TMP/req.json" | python3 -c '
import json, sys
d = json.load(sys.stdin)
if d.get("errors") or "job_id" not in d:
    sys.exit("submit failed: %r" % (d.get("errors"),))
print(d["job_id"])'
}
# wait_file PATH SECONDS
wait_file() { for _ in $(seq 1 $(($2 * 5))); do [ -s "$1" ] && return 0; sleep 0.2; done; return 1; }
# http_code URL [KEY]: the status of a GET, 000 when nothing answers
http_code() { curl -s -o /dev/null -w '%{http_code}' --max-time 5 ${2:+-H "Authorization: Bearer $2"} "$1" || true; }
wait_http() { for _ in $(seq 1 $(($2 * 5))); do [ "$(http_code "$1")" = 200 ] && return 0; sleep 0.2; done; return 1; }
# stop_job ID ENDPOINT-FILE URL: DELETE through slurmrestd; the job ends, the file goes, the port closes.
stop_job() {
    rest DELETE "/job/$1" >/dev/null || fail "DELETE job $1"
    local st=""
    for _ in $(seq 1 100); do
        st="$(job_state "$1")"
        case "$st" in PENDING | RUNNING | CONFIGURING | COMPLETING) sleep 0.2 ;; *) break ;; esac
    done
    [ "$st" = CANCELLED ] || fail "job $1 is $st after DELETE (want CANCELLED)"
    for _ in $(seq 1 50); do [ ! -e "$2" ] && break; sleep 0.2; done
    [ ! -e "$2" ] || fail "endpoint file $2 still there after the job ended"
    [ "$(http_code "$3")" = 000 ] || fail "$3 still answers after the job ended"
}
check_endpoint_file() { # FILE JOB-ID PROBE-COUNT: prints the url
    python3 - "$@" <<'EOF'
import json, re, socket, sys
path, job, nprobes = sys.argv[1], sys.argv[2], int(sys.argv[3])
d = json.load(open(path))
assert list(d) == ["job_id", "url", "probes", "nodes"], d
assert d["job_id"] == job, d
assert re.fullmatch(r"http://127\.0\.0\.1:\d+", d["url"]), d
assert d["probes"][0] == d["url"] + "/health" and len(d["probes"]) == nprobes, d
assert d["nodes"] == [socket.gethostname().split(".")[0]], d
print(d["url"])
EOF
}

# The server stand-in: fairgate's simulator when FAIRGATE_BIN is given (copied where the REST user,
# whom jobs run as, can execute it), else python's http.server.
KEY="sk-fairgate-slurm-test-$$"
if [ -n "${FAIRGATE_BIN:-}" ] && [ -x "$FAIRGATE_BIN" ]; then
    mkdir -p "$TMP/bin" && cp "$FAIRGATE_BIN" "$TMP/bin/fairgate" && chmod -R a+rX "$TMP"
    SERVER='$SIM sim --listen 127.0.0.1:$PORT --model $FAIRGATE_MODEL'
    SIM="$TMP/bin/fairgate"
else
    echo "  note: FAIRGATE_BIN not set or not executable: the stand-in server is python3 -m http.server"
    chmod a+rX "$TMP"
    SERVER='python3 -m http.server --bind 127.0.0.1 $PORT'
    SIM=""
fi

# Job output goes under $TMP (removed on exit); the jobs run as the REST user.
mkdir -p "$TMP/out" && chmod 1777 "$TMP/out"

step "(d) vllm.sbatch as a real job through slurmrestd"
jid="$(submit "$SINGLE" fairgate-tmpl-test FAIRGATE_MODEL=tiny VLLM_API_KEY="$KEY" SIM="$SIM" \
    FAIRGATE_ENDPOINT_DIR="$FAIRGATE_SLURM_ENDPOINTS" FAIRGATE_ADVERTISE_HOST=127.0.0.1 SERVER_CMD="$SERVER")" \
    || fail "submitting $SINGLE"
JOBS+=("$jid")
ep="$FAIRGATE_SLURM_ENDPOINTS/$jid.json"
wait_file "$ep" 30 || fail "no endpoint file $ep after 30 s (job $jid: $(job_state "$jid"); output: $(cat "$TMP/out/fairgate-tmpl-test-$jid.out" 2>/dev/null))"
url="$(check_endpoint_file "$ep" "$jid" 1)" || fail "endpoint file $ep: $(cat "$ep")"
ok "endpoint file $ep: $(cat "$ep")"
if [ -n "$SIM" ]; then
    wait_http "$url/health" 30 || fail "$url/health does not answer 200"
    [ "$(http_code "$url/v1/models")" = 401 ] || fail "$url/v1/models without the key: want 401"
    [ "$(http_code "$url/v1/models" "$KEY")" = 200 ] || fail "$url/v1/models with VLLM_API_KEY: want 200"
    KEY="$KEY" python3 -c '
import glob, os, sys
key = os.environ["KEY"].encode()
for p in glob.glob("/proc/[0-9]*/cmdline"):
    try:
        if key in open(p, "rb").read():
            sys.exit("VLLM_API_KEY is on the command line of " + p)
    except OSError:
        pass' || fail "the API key must stay off command lines"
    ok "$url answers: /health 200; /v1/models 401 without and 200 with VLLM_API_KEY; the key on no command line"
else
    for _ in $(seq 1 150); do [ "$(http_code "$url/")" = 200 ] && break; sleep 0.2; done
    [ "$(http_code "$url/")" = 200 ] || fail "$url does not answer"
    ok "$url answers"
fi
[ "$(job_state "$jid")" = RUNNING ] || fail "job $jid is not RUNNING"
stop_job "$jid" "$ep" "$url"
ok "DELETE /job/$jid: CANCELLED, endpoint file removed, port closed"

step "(e) vllm-multinode.sbatch as a real job on one node (stub ray)"
mkdir -p "$TMP/ray"
cat >"$TMP/ray/ray" <<'EOF'
#!/bin/bash
# Stub: `ray start --head` returns, `ray start --block` blocks, `ray status` shows one node.
case "$1" in
    start) [[ " $* " == *" --block "* ]] && exec sleep 600; exit 0 ;;
    status) printf 'Node status\n-----\nActive:\n 1 node_0123abcd\nPending:\n (no pending nodes)\n' ;;
esac
EOF
chmod -R a+rX "$TMP" && chmod +x "$TMP/ray/ray"
jid="$(submit "$MULTI" fairgate-tmpl-test-multi FAIRGATE_MODEL=tiny VLLM_API_KEY="$KEY" SIM="$SIM" \
    RAY_BIN="$TMP/ray/ray" FAIRGATE_ENDPOINT_FILE="$FAIRGATE_SLURM_ENDPOINTS/multi-%j.json" \
    FAIRGATE_ADVERTISE_HOST=127.0.0.1 SERVER_CMD="$SERVER")" || fail "submitting $MULTI"
JOBS+=("$jid")
ep="$FAIRGATE_SLURM_ENDPOINTS/multi-$jid.json"
wait_file "$ep" 30 || fail "no endpoint file $ep after 30 s (job $jid: $(job_state "$jid"); output: $(cat "$TMP/out/fairgate-tmpl-test-multi-$jid.out" 2>/dev/null))"
url="$(check_endpoint_file "$ep" "$jid" 2)" || fail "endpoint file $ep: $(cat "$ep")"
if [ -n "$SIM" ]; then wait_http "$url/health" 30; else
    for _ in $(seq 1 150); do [ "$(http_code "$url/")" = 200 ] && break; sleep 0.2; done
fi
[ "$(http_code "$url/${SIM:+health}")" = 200 ] || fail "$url does not answer"
stop_job "$jid" "$ep" "$url"
ok "endpoint file with the head's vLLM and Ray agent probes; the server answered; DELETE ended it"

echo
echo "slurm template checks passed ($((SECONDS - T0)) s)"
