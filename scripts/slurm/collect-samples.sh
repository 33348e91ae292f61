#!/usr/bin/env bash
# Records real slurmrestd requests/answers into scripts/slurm/samples/ (what the Rust client
# parses), from the local Slurm of local-slurm.sh. Run as root: scripts/slurm/collect-samples.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
eval "$(./local-slurm.sh)"
OUT=samples
SOCK="${FAIRGATE_SLURM_REST#unix:}"
V=v0.0.38
mkdir -p "$OUT"
: >"$OUT/http-status.txt"

# call METHOD PATH OUTFILE [BODYFILE]: pretty JSON into OUTFILE, the HTTP status into http-status.txt
call() {
    local code
    code="$(curl -s -o "$OUT/.raw" -w '%{http_code}' --unix-socket "$SOCK" -X "$1" \
        ${4:+-H 'Content-Type: application/json' --data "@$4"} "http://localhost$2")"
    python3 -m json.tool "$OUT/.raw" >"$OUT/$3"
    printf '%s %s -> HTTP %s (%s)\n' "$1" "$2" "$code" "$3" >>"$OUT/http-status.txt"
    rm -f "$OUT/.raw"
}
# Keep only job $2 in the "jobs" list of file $1 (the list holds every job the controller knows).
only_job() {
    python3 - "$OUT/$1" "$2" <<'EOF'
import json, sys
p, jid = sys.argv[1], int(sys.argv[2])
d = json.load(open(p))
d["jobs"] = [j for j in d["jobs"] if j["job_id"] == jid]
json.dump(d, open(p, "w"), indent=4)
EOF
}
state() { curl -s --unix-socket "$SOCK" "http://localhost/slurm/$V/job/$1" \
    | python3 -c 'import json,sys; j=json.load(sys.stdin)["jobs"]; print(j[0]["job_state"] if j else "GONE")'; }

cat >"$OUT/$V-job-submit-request.json" <<EOF
{
    "job": {
        "name": "fairgate-sample",
        "partition": "gpu",
        "nodes": 1,
        "tasks_per_node": 1,
        "gres": "gpu:2",
        "time_limit": 10,
        "current_working_directory": "/tmp",
        "standard_output": "/tmp/fairgate-sample-%j.out",
        "environment": {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": "/var/lib/$FAIRGATE_SLURM_USER",
            "FAIRGATE_MODEL": "sample-model"
        }
    },
    "script": "#!/bin/bash\\necho CUDA_VISIBLE_DEVICES=\$CUDA_VISIBLE_DEVICES\\nexec sleep 300\\n"
}
EOF
call POST "/slurm/$V/job/submit" "$V-job-submit-response.json" "$OUT/$V-job-submit-request.json"
id="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["job_id"])' "$OUT/$V-job-submit-response.json")"
for _ in $(seq 1 30); do [ "$(state "$id")" = RUNNING ] && break; sleep 1; done

call GET "/slurm/$V/job/$id" "$V-job-response.json"
call GET "/slurm/$V/jobs" "$V-jobs-response.json"
only_job "$V-jobs-response.json" "$id"
squeue --json >"$OUT/squeue-json.json"
only_job squeue-json.json "$id"
{
    echo "# squeue -h -o '%i|%j|%T|%N|%S|%l|%e' (id|name|state|nodes|start|time limit|end)"
    squeue -h -j "$id" -o '%i|%j|%T|%N|%S|%l|%e'
} >"$OUT/squeue-format.txt"

call DELETE "/slurm/$V/job/$id" "$V-job-delete-response.json"
for _ in $(seq 1 30); do [ "$(state "$id")" != RUNNING ] && break; sleep 0.5; done
call GET "/slurm/$V/job/$id" "$V-job-cancelled-response.json"
# After MinJobAge (10 s here) the controller forgets the job: what GET then answers.
for _ in $(seq 1 60); do [ "$(state "$id")" = GONE ] && break; sleep 1; done
call GET "/slurm/$V/job/$id" "$V-job-unknown-response.json"
call DELETE "/slurm/$V/job/$id" "$V-job-delete-unknown-response.json"

printf '%s\n' '{"job": {"environment": {"A": "1"}, "partition": "nope"}, "script": "#!/bin/bash\n"}' >"$OUT/.bad.json"
call POST "/slurm/$V/job/submit" "$V-job-submit-error-response.json" "$OUT/.bad.json"
printf '%s\n' '{"job": {"partition": "gpu"}, "script": "#!/bin/bash\n"}' >"$OUT/.bad.json"
call POST "/slurm/$V/job/submit" "$V-job-submit-noenv-response.json" "$OUT/.bad.json"
rm -f "$OUT/.bad.json"

curl -s --unix-socket "$SOCK" http://localhost/openapi/v3 \
    | python3 -c 'import json,sys; [print(m.upper(), p) for p, v in json.load(sys.stdin)["paths"].items() for m in v if m != "servers"]' \
    >"$OUT/openapi-v3-paths.txt"
call GET "/slurm/$V/ping" "$V-ping-response.json"
echo "samples in $(pwd)/$OUT (job $id)"
