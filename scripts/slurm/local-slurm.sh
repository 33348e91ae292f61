#!/usr/bin/env bash
# A single-node Slurm on this machine, for tests (recipe: ../shared/research/hpc.md, verified on
# Debian bookworm with Slurm 22.05.8). Needs root (munge key, mknod, useradd, apt-get).
#
#   scripts/slurm/local-slurm.sh [start]   start what is not running, then print `export` lines:
#                                          eval "$(scripts/slurm/local-slurm.sh)"
#   scripts/slurm/local-slurm.sh status    what runs, sinfo
#   scripts/slurm/local-slurm.sh stop      stop the daemons this script started (pid files)
#
# Environment: FAIRGATE_SLURM_DIR (state directory, default /tmp/fairgate-slurm),
# FAIRGATE_SLURM_CPUS (CPUs the node advertises, default nproc; more than nproc lets more small
# test jobs run at once). slurmctld/slurmd use the default ports 6817/6818: one instance per host.
#
# Layout of $DIR: etc/{slurm.conf,gres.conf}, dev/fakegpu[0-3] (char devices, so gres/gpu
# schedules without GPUs), state/ spool/ log/ run/ (root's), rest/ (the REST user's: its socket),
# endpoints/ (mode 1777: job templates write endpoint files there as root or as the REST user).
#
# slurmrestd and who it acts as (observed with 22.05.8, rest_auth/local over the unix socket):
# slurmrestd refuses to run as root, so it runs as $REST_USER. rest_auth/local reads the peer's
# uid from the socket (SO_PEERCRED) and accepts only that same uid or root; root's requests are
# then carried out with slurmrestd's own (munge) identity, so a client running as root (the
# provisioner in tests) or as $REST_USER connects without any token and every job it submits runs
# as $REST_USER. Other uids get 401. No headers are needed; X-SLURM-USER-NAME naming anyone but
# $REST_USER gets 401 ("rejecting thread config for user root while running as ..."), and
# X-SLURM-USER-TOKEN is ignored on this socket.
set -euo pipefail

DIR="${FAIRGATE_SLURM_DIR:-/tmp/fairgate-slurm}"
REST_USER=fairgate-slurm
HOST="$(hostname -s)"
CONF="$DIR/etc/slurm.conf"
SOCK="$DIR/rest/slurmrestd.sock"
export SLURM_CONF="$CONF"

log() { printf 'local-slurm: %s\n' "$*" >&2; }
die() { printf 'local-slurm: error: %s\n' "$*" >&2; exit 1; }

# A pid file names a live process of the expected program (pids are reused; a zombie is dead).
# /proc rather than kill -0, so that `status` works for users other than the daemons' owners.
alive() {
    local pid
    pid="$(cat "$1" 2>/dev/null || true)"
    [ -n "$pid" ] && grep -qx "$2" "/proc/$pid/comm" 2>/dev/null \
        && ! grep -q '^State:[[:space:]]*[ZX]' "/proc/$pid/status" 2>/dev/null
}
munge_ok() { command -v munge >/dev/null && munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
node_state() { sinfo -h -N -n "$HOST" -o '%T' 2>/dev/null | head -n1; }
rest_ok() { curl -sf --max-time 5 --unix-socket "$SOCK" http://x/slurm/v0.0.38/diag >/dev/null 2>&1; }

print_exports() {
    printf 'export SLURM_CONF=%q\n' "$CONF"
    printf 'export FAIRGATE_SLURM_REST=%q\n' "unix:$SOCK"
    printf 'export FAIRGATE_SLURM_ENDPOINTS=%q\n' "$DIR/endpoints"
    printf 'export FAIRGATE_SLURM_USER=%q\n' "$REST_USER"
}

status() {
    local d
    if munge_ok; then log "munged: running"; else log "munged: not running"; fi
    for d in slurmctld slurmd slurmrestd; do
        if alive "$DIR/run/$d.pid" "$d"; then
            log "$d: running (pid $(cat "$DIR/run/$d.pid"))"
        else
            log "$d: not running"
        fi
    done
    if [ -f "$CONF" ]; then sinfo >&2 || true; fi
}

stop() {
    local d pid
    # slurmrestd first (it talks to slurmctld), munged last and only when this script started it.
    for d in slurmrestd slurmd slurmctld munged; do
        [ "$d" != munged ] || [ -f "$DIR/run/munged.ours" ] || continue
        local pf="$DIR/run/$d.pid"
        [ "$d" != munged ] || pf=/run/munge/munged.pid
        if alive "$pf" "$d"; then
            pid="$(cat "$pf")"
            log "stopping $d (pid $pid)"
            kill "$pid"
            for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
            if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid" 2>/dev/null || true; fi
        fi
        rm -f "$DIR/run/$d.pid"
    done
    rm -f "$DIR/run/munged.ours" "$SOCK"
}

case "${1:-start}" in
    start) ;;
    status) status; exit 0 ;;
    stop) stop; exit 0 ;;
    *) die "usage: $0 [start|status|stop]" ;;
esac

# Everything already up (an earlier run): nothing to do, and no root needed to say so.
if munge_ok && alive "$DIR/run/slurmctld.pid" slurmctld && alive "$DIR/run/slurmd.pid" slurmd \
    && alive "$DIR/run/slurmrestd.pid" slurmrestd && [[ "$(node_state)" =~ ^(idle|mixed|allocated|completing) ]]; then
    log "already running (node $HOST: $(node_state))"
    print_exports
    exit 0
fi

# --- packages (only when missing) ----------------------------------------------------------------
[ "$(id -u)" = 0 ] || die "must run as root (munge key, mknod, useradd; slurmctld runs as SlurmUser=root)"
missing=()
for b in slurmctld slurmd slurmrestd munged sbatch curl; do command -v "$b" >/dev/null || missing+=("$b"); done
if [ "${#missing[@]}" -gt 0 ]; then
    command -v apt-get >/dev/null || die "missing ${missing[*]}; install slurmctld slurmd slurmrestd munge slurm-client curl"
    log "installing Slurm packages (missing: ${missing[*]})"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq </dev/null >&2
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurmrestd munge slurm-client curl \
        </dev/null >&2
fi

# --- munge: every Slurm message is signed by munged ------------------------------------------------
if ! munge_ok; then
    id munge >/dev/null 2>&1 || die "no 'munge' user (the munge package creates it)"
    if [ ! -s /etc/munge/munge.key ]; then
        log "creating /etc/munge/munge.key"
        mkdir -p /etc/munge
        (umask 077 && head -c 1024 /dev/urandom >/etc/munge/munge.key)
    fi
    chown munge: /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/lib/munge /var/log/munge
    chown munge: /run/munge /var/lib/munge /var/log/munge
    log "starting munged"
    # No systemd in containers: start it directly, as the munge user (it refuses root).
    runuser -u munge -- /usr/sbin/munged --force
    mkdir -p "$DIR/run" && touch "$DIR/run/munged.ours"
    for _ in $(seq 1 50); do munge_ok && break; sleep 0.2; done
    munge_ok || die "munged did not come up (see /var/log/munge/munged.log)"
fi

# --- the REST user and directories -----------------------------------------------------------------
if ! id "$REST_USER" >/dev/null 2>&1; then
    log "creating system user $REST_USER"
    useradd --system --create-home --home-dir "/var/lib/$REST_USER" --shell /bin/bash "$REST_USER"
fi
mkdir -p "$DIR"/{etc,dev,state,spool,log,run,rest,endpoints}
# $DIR must be traversable by the REST user and by jobs (they run as that user).
chmod 755 "$DIR" "$DIR/etc" "$DIR/dev" "$DIR/log"
chown "$REST_USER": "$DIR/rest" && chmod 700 "$DIR/rest"
chmod 1777 "$DIR/endpoints"
for i in 0 1 2 3; do
    # Character devices (same numbers as /dev/null): plain files leave the node INVAL.
    [ -c "$DIR/dev/fakegpu$i" ] || { rm -f "$DIR/dev/fakegpu$i"; mknod "$DIR/dev/fakegpu$i" c 1 3; }
done

# --- configuration (rewritten every time; the daemons read it at start) -----------------------------
cpus="${FAIRGATE_SLURM_CPUS:-$(nproc)}"
# 80% of MemTotal: slurmd drains a node whose RealMemory exceeds what it finds.
mem_mb="$(awk '/^MemTotal:/ { printf "%d", $2 / 1024 * 0.8 }' /proc/meminfo)"
cat >"$CONF.tmp" <<EOF
# Generated by scripts/slurm/local-slurm.sh: single-node test cluster.
ClusterName=fairgate
SlurmctldHost=$HOST
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
# CPUs only: no job holds the node's whole memory, so several test jobs run at once.
SelectTypeParameters=CR_CPU
# Accept CPUs= above what slurmd finds (FAIRGATE_SLURM_CPUS) instead of draining the node.
SlurmdParameters=config_overrides
GresTypes=gpu
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
# Tests want finished jobs gone and cancellations quick; a node that was down comes back.
MinJobAge=10
KillWait=5
OverTimeLimit=0
InactiveLimit=0
ReturnToService=2
NodeName=$HOST CPUs=$cpus RealMemory=$mem_mb Gres=gpu:4 State=UNKNOWN
PartitionName=gpu Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
mv "$CONF.tmp" "$CONF"
# slurmd reads gres.conf from slurm.conf's directory.
echo "Name=gpu File=$DIR/dev/fakegpu[0-3]" >"$DIR/etc/gres.conf"
chmod 644 "$CONF" "$DIR/etc/gres.conf"

# --- slurmctld + slurmd (they daemonize and write their pid files) ----------------------------------
if ! alive "$DIR/run/slurmctld.pid" slurmctld; then
    log "starting slurmctld"
    slurmctld -f "$CONF"
fi
if ! alive "$DIR/run/slurmd.pid" slurmd; then
    log "starting slurmd"
    slurmd -f "$CONF"
fi
state=""
for i in $(seq 1 60); do
    state="$(node_state)"
    case "$state" in
        idle* | mixed* | allocated* | completing*) break ;;
        # A drained/down node left from an earlier run: put it back once slurmd has registered.
        *drain* | down*) [ "$i" -lt 5 ] || scontrol update nodename="$HOST" state=resume 2>/dev/null || true ;;
    esac
    sleep 1
done
case "$state" in
    idle* | mixed* | allocated* | completing*) log "node $HOST is $state" ;;
    *) die "node $HOST is '${state:-unknown}' after 60 s (see $DIR/log/slurmctld.log, slurmd.log)" ;;
esac

# --- slurmrestd, as the REST user on a unix socket ----------------------------------------------------
if ! alive "$DIR/run/slurmrestd.pid" slurmrestd; then
    rm -f "$SOCK"
    # Without slurmdbd only the controller plugins load (openapi/dbv* would fail).
    log "starting slurmrestd as $REST_USER on $SOCK"
    # setpriv execs (runuser would fork and wait), so $! is slurmrestd's own pid. A job submitted
    # without current_working_directory gets slurmrestd's cwd (and its slurm-%j.out goes there):
    # start it in the user's home, not in a directory it cannot write (launch failure).
    cd "$(getent passwd "$REST_USER" | cut -d: -f6)"
    SLURM_CONF="$CONF" setsid setpriv --reuid="$REST_USER" --regid="$REST_USER" --init-groups \
        slurmrestd -f "$CONF" -a rest_auth/local -s openapi/v0.0.38,openapi/v0.0.37 "unix:$SOCK" \
        </dev/null >>"$DIR/log/slurmrestd.log" 2>&1 &
    echo $! >"$DIR/run/slurmrestd.pid"
fi
for _ in $(seq 1 50); do rest_ok && break; sleep 0.2; done
rest_ok || die "slurmrestd does not answer on $SOCK (see $DIR/log/slurmrestd.log)"
log "slurmrestd answers on $SOCK"

print_exports
