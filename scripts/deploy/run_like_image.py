#!/usr/bin/env python3
"""Runs the gateway binary the way deploy/Dockerfile's image runs it, without a container
runtime: as user 65532 with no capabilities, in a private mount namespace whose root
filesystem is read-only, with a tmpfs as its only writable place (the data directory, as the
image's volume). Then it must start, store its SQLite database there, and serve a chat request
from a simulator.

    python3 scripts/deploy/run_like_image.py [path/to/fairgate]

Needs root (unshare -m, mount, setpriv). Exit 0: passed; 1: failed; 2: cannot run here (the
caller decides whether that is fatal: it is under CI).
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

UID = 65532
ADMIN = "image-check-admin-token-0123456789"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method, url, body=None, token=None, timeout=5):
    req = urllib.request.Request(url, method=method)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, data=data, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def wait_ready(url, proc, what):
    for _ in range(200):
        if proc.poll() is not None:
            raise SystemExit(f"run_like_image: {what} exited with {proc.returncode}")
        try:
            if http("GET", url, timeout=1)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"run_like_image: {what} not ready at {url}")


def main():
    binary = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "target/debug/fairgate")
    if not os.path.exists(binary):
        print(f"run_like_image: {binary} not found", file=sys.stderr)
        return 2
    missing = [t for t in ("unshare", "mount", "setpriv") if not shutil.which(t)]
    if missing or os.geteuid() != 0:
        print(f"run_like_image: needs root and {', '.join(missing) or 'unshare/mount/setpriv'}",
              file=sys.stderr)
        return 2
    probe = subprocess.run(
        ["unshare", "-m", "--", "sh", "-c", "mount --bind / / && mount -o remount,bind,ro /"],
        capture_output=True, text=True)
    if probe.returncode != 0:
        print(f"run_like_image: cannot make a read-only root here: {probe.stderr.strip()}",
              file=sys.stderr)
        return 2

    work = tempfile.mkdtemp(prefix="fg-image-")
    os.chmod(work, 0o755)
    data = os.path.join(work, "data")
    os.mkdir(data)
    sim_port, gw_port = free_port(), free_port()
    config = os.path.join(work, "fairgate.toml")
    with open(config, "w") as f:
        f.write(f'[[models]]\nname = "m"\n[[models.backends]]\n'
                f'url = "http://127.0.0.1:{sim_port}"\nmax_in_flight = 4\n')
    os.chmod(config, 0o644)
    procs = []
    try:
        sim = subprocess.Popen([binary, "sim", "--listen", f"127.0.0.1:{sim_port}",
                                "--model", "m", "--instant"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(sim)
        wait_ready(f"http://127.0.0.1:{sim_port}/health", sim, "the simulator")
        env = dict(os.environ,
                   FAIRGATE_LISTEN=f"127.0.0.1:{gw_port}",
                   FAIRGATE_DATA_DIR=data,
                   FAIRGATE_DATABASE=f"sqlite://{data}/fairgate.db",
                   FAIRGATE_ADMIN_TOKEN=ADMIN,
                   FAIRGATE_LOG="warn")
        # Every mount but the data directory read-only (the root and, where they are mounts of
        # their own, /tmp and /var/tmp); the data directory a tmpfs owned by the image's user.
        script = (
            "set -e; mount --make-rprivate /; mount --bind / /; mount -o remount,bind,ro /; "
            "for d in /tmp /var/tmp; do if mountpoint -q $d; then "
            "mount --bind $d $d; mount -o remount,bind,ro $d; fi; done; "
            f"mount -t tmpfs -o uid={UID},gid={UID},mode=0700,size=64m tmpfs '{data}'; "
            "if touch /.fg-image-probe 2>/dev/null; then echo 'root is writable' >&2; exit 3; fi; "
            f"exec setpriv --reuid={UID} --regid={UID} --clear-groups --inh-caps=-all "
            f"--bounding-set=-all '{binary}' serve --config '{config}'"
        )
        gw = subprocess.Popen(["unshare", "-m", "--", "sh", "-c", script], env=env)
        procs.append(gw)
        base = f"http://127.0.0.1:{gw_port}"
        wait_ready(f"{base}/readyz", gw, "the gateway")
        uid = int(open(f"/proc/{gw.pid}/status").read().split("Uid:")[1].split()[1])
        if uid != UID:
            raise SystemExit(f"run_like_image: the gateway runs as uid {uid}, not {UID}")
        s, out = http("POST", f"{base}/admin/v1/tenants", {"name": "t", "weight": 1}, ADMIN)
        assert s == 201, (s, out)
        s, out = http("POST", f"{base}/admin/v1/keys",
                      {"tenant": "t", "name": "k", "user": "u"}, ADMIN)
        assert s == 201, (s, out)
        key = json.loads(out)["key"]
        s, out = http("POST", f"{base}/v1/chat/completions",
                      {"model": "m", "max_tokens": 4,
                       "messages": [{"role": "user", "content": "hello"}]}, key)
        if s != 200:
            raise SystemExit(f"run_like_image: chat answered {s}: {out}")
        gw.terminate()
        rc = gw.wait(timeout=30)
        if rc != 0:
            raise SystemExit(f"run_like_image: the gateway exited with {rc} on SIGTERM")
        print("run_like_image: uid 65532, read-only root, data on tmpfs: started, served, "
              "stopped cleanly")
        return 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
