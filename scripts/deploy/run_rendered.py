"""Runs the gateway exactly as the rendered Helm chart would (run by scripts/test_deploy.sh).

Takes the gateway Deployment, its ConfigMap and its Secret from `helm template` output and
starts TWO `fairgate serve` processes the way the container runs them: the container's
args, its environment (plain values, `$(VAR)` references, and `secretKeyRef`s resolved from the
rendered Secret), and the config file where its volumeMount puts the ConfigMap. Only addresses
are substituted:

  - the database URL (FAIRGATE_DATABASE) -> the test PostgreSQL (FAIRGATE_TEST_POSTGRES_URL,
    else postgres://127.0.0.1:5432/test), in a fresh schema dropped afterwards;
  - the Redis URL (FAIRGATE_CLUSTER__REDIS_URL) -> a private redis-server on a free port;
  - FAIRGATE_LISTEN -> 127.0.0.1:<free port>, FAIRGATE_DATA_DIR -> a temp dir, per process;
  - paths of mounted volumes -> temp dirs holding what the volume would hold;
  - each backend `url` (or `discover`) in the TOML -> a `fairgate sim` for that model.

Then creates a tenant and a key through the admin API of the first process and gets a streamed
chat completion through each. Exit 0 on success, 1 with a message otherwise; everything it
started or created is removed in all cases.

    python run_rendered.py --bin target/debug/fairgate rendered/cluster.yaml
"""

import argparse
import base64
import http.client
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.parse

import yaml

REPO = pathlib.Path(__file__).resolve().parent.parent.parent
DEFAULT_PG = "postgres://127.0.0.1:5432/test"
# Where the container image's ENTRYPOINT lives (deploy/Dockerfile); `command` naming it runs
# the binary under test instead.
IMAGE_ENTRYPOINT = "/usr/local/bin/fairgate"


class Failure(Exception):
    pass


def log(msg):
    print(f"run_rendered: {msg}", flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the rendered objects ------------------------------------------------------------------------


def load_objects(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if isinstance(d, dict)]


def pick(objs, kind, name=None, pred=None):
    found = [
        o
        for o in objs
        if o.get("kind") == kind
        and (name is None or o["metadata"]["name"] == name)
        and (pred is None or pred(o))
    ]
    return found


def gateway_container(objs, container_name):
    deps = pick(
        objs,
        "Deployment",
        pred=lambda o: o["metadata"].get("labels", {}).get("app.kubernetes.io/component")
        == "gateway",
    )
    if len(deps) != 1:
        raise Failure(f"expected one gateway Deployment, found {len(deps)}")
    pod = deps[0]["spec"]["template"]["spec"]
    cs = [c for c in pod["containers"] if c["name"] == container_name]
    if len(cs) != 1:
        raise Failure(f"Deployment/{deps[0]['metadata']['name']} has no container {container_name}")
    return deps[0], pod, cs[0]


def secret_value(objs, name, key, optional):
    secrets = pick(objs, "Secret", name)
    if not secrets:
        if optional:
            return None
        raise Failure(
            f"Secret/{name} is not among the rendered objects (an existing Secret?): "
            "cannot resolve its keys"
        )
    s = secrets[0]
    if key in (s.get("stringData") or {}):
        return str(s["stringData"][key])
    if key in (s.get("data") or {}):
        return base64.b64decode(s["data"][key]).decode("utf-8")
    if optional:
        return None
    raise Failure(f"Secret/{name} has no key {key} (and the reference is not optional)")


def configmap_value(objs, name, key, optional):
    cms = pick(objs, "ConfigMap", name)
    if cms and key in (cms[0].get("data") or {}):
        return cms[0]["data"][key]
    if optional:
        return None
    raise Failure(f"ConfigMap/{name} has no key {key}")


def expand(value, env):
    """Kubernetes `$(VAR)` expansion: defined variables only, `$$` escapes."""

    def sub(m):
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", sub, value)


def resolve_env(objs, container):
    env = {}
    for src in container.get("envFrom") or []:
        prefix = src.get("prefix", "")
        if "secretRef" in src:
            s = pick(objs, "Secret", src["secretRef"]["name"])
            if not s and not src["secretRef"].get("optional"):
                raise Failure(f"envFrom Secret/{src['secretRef']['name']} is not rendered")
            for s_ in s:
                for k, v in (s_.get("data") or {}).items():
                    env[prefix + k] = base64.b64decode(v).decode("utf-8")
                for k, v in (s_.get("stringData") or {}).items():
                    env[prefix + k] = str(v)
        if "configMapRef" in src:
            for c in pick(objs, "ConfigMap", src["configMapRef"]["name"]):
                for k, v in (c.get("data") or {}).items():
                    env[prefix + k] = v
    for e in container.get("env") or []:
        name = e["name"]
        if "value" in e:
            env[name] = expand(str(e["value"]), env)
        elif "valueFrom" in e:
            vf = e["valueFrom"]
            if "secretKeyRef" in vf:
                r = vf["secretKeyRef"]
                v = secret_value(objs, r["name"], r["key"], r.get("optional", False))
            elif "configMapKeyRef" in vf:
                r = vf["configMapKeyRef"]
                v = configmap_value(objs, r["name"], r["key"], r.get("optional", False))
            else:
                raise Failure(f"env {name}: unsupported valueFrom {sorted(vf)}")
            if v is not None:
                env[name] = v
        else:
            env[name] = ""
    return env


# FAIRGATE_* variables the binary reads that are not config fields.
NON_CONFIG_VARS = {"FAIRGATE_LOG"}


def check_env_names(env):
    """A FAIRGATE_* variable whose first segment is not a field the config loader overlays is
    silently ignored by the gateway (config/mod.rs ENV_FIELDS): the chart must not set one."""
    src = REPO / "crates/fairgate-gateway/src/config/mod.rs"
    try:
        m = re.search(r"const ENV_FIELDS: &\[&str\] = &\[(.*?)\];", src.read_text("utf-8"), re.S)
    except OSError:
        m = None
    if not m:
        log(f"warning: ENV_FIELDS not found in {src}; FAIRGATE_* names not checked")
        return
    fields = set(re.findall(r'"([a-z0-9_]+)"', m.group(1)))
    ignored = [
        k for k in env
        if k.startswith("FAIRGATE_") and k not in NON_CONFIG_VARS
        and k[len("FAIRGATE_"):].split("__")[0].lower() not in fields
    ]
    if ignored:
        raise Failure(f"the container sets {ignored}, which the gateway ignores (no such config "
                      f"field; it overlays {sorted(fields)})")


# --- substitutions -------------------------------------------------------------------------------


def toml_string(s):
    return json.dumps(s)  # a TOML basic string is a JSON string for these (ASCII URLs)


def replace_backends(toml_text, sims):
    """Points every backend of the TOML at a simulator; `sims(model, index)` gives its port."""
    cfg = tomllib.loads(toml_text)
    out = toml_text
    wanted = []
    for m in cfg.get("models", []):
        for i, b in enumerate(m.get("backends", [])):
            port = sims(m["name"], i)
            if "url" in b:
                old, new = b["url"], f"http://127.0.0.1:{port}"
            elif "discover" in b:
                old, new = b["discover"], f"dns://127.0.0.1:{port}"
            else:
                raise Failure(f"model {m['name']}: backend {i} has neither url nor discover")
            literal = toml_string(old)
            if out.count(literal) < 1:
                raise Failure(f"cannot find {literal} in the config text to substitute it")
            out = out.replace(literal, toml_string(new), 1)
            wanted.append(new)
    # The substituted text must still parse, with exactly the simulator addresses as backends.
    got = [
        b.get("url", b.get("discover"))
        for m in tomllib.loads(out).get("models", [])
        for b in m.get("backends", [])
    ]
    if sorted(got) != sorted(wanted):
        raise Failure(f"backend substitution went wrong: {got} != {wanted}")
    return out


def pg_url_with_schema(base, schema):
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}options=-c%20search_path%3D{schema}"


def psql(base, sql):
    r = subprocess.run(
        ["psql", base, "-v", "ON_ERROR_STOP=1", "-qAt", "-c", sql],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if r.returncode != 0:
        raise Failure(f"psql {sql!r} against {base}: {r.stderr.strip()}")
    return r.stdout


# --- HTTP ----------------------------------------------------------------------------------------


def request(port, method, path, body=None, token=None, timeout=10):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    headers = {}
    if body is not None:
        headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        c.request(method, path, json.dumps(body) if body is not None else None, headers)
        r = c.getresponse()
        return r.status, r.read().decode("utf-8", "replace")
    finally:
        c.close()


def stream_chat(port, key, model):
    """A streamed chat completion; returns the text, raises Failure with the reason."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    body = {
        "model": model,
        "stream": True,
        "max_tokens": 8,
        "messages": [{"role": "user", "content": "Say hello from the rendered chart."}],
    }
    try:
        c.request(
            "POST",
            "/v1/chat/completions",
            json.dumps(body),
            {"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
        )
        r = c.getresponse()
        if r.status != 200:
            raise Failure(f"HTTP {r.status}: {r.read().decode('utf-8', 'replace')[:500]}")
        ctype = r.getheader("Content-Type", "")
        if not ctype.startswith("text/event-stream"):
            raise Failure(f"Content-Type {ctype!r}, not text/event-stream")
        text, chunks = [], 0
        while True:
            line = r.readline()
            if not line:
                raise Failure(f"stream ended after {chunks} chunks without `data: [DONE]`")
            line = line.decode("utf-8").rstrip("\r\n")
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            ev = json.loads(data)
            if "error" in ev:
                raise Failure(f"error event in the stream: {data[:500]}")
            chunks += 1
            for ch in ev.get("choices", []):
                text.append((ch.get("delta") or {}).get("content") or "")
        if chunks == 0 or not "".join(text):
            raise Failure(f"stream had {chunks} chunks and no content")
        return "".join(text)
    finally:
        c.close()


# --- processes -----------------------------------------------------------------------------------


def die_with_parent():
    """In the child: SIGKILL when this script dies, so that nothing outlives a killed run."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Procs:
    def __init__(self, tmp):
        self.tmp = tmp
        self.procs = []  # (label, Popen, log path)

    def start(self, label, argv, env=None, cwd=None):
        logp = os.path.join(self.tmp, f"{label}.log")
        f = open(logp, "wb")
        p = subprocess.Popen(
            argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
        f.close()
        self.procs.append((label, p, logp))
        return p

    def check_alive(self, p):
        for label, q, logp in self.procs:
            if q is p and q.poll() is not None:
                raise Failure(f"{label} exited with {q.returncode}:\n{tail(logp)}")

    def stop_all(self):
        # Gateways first (they flush to the database and Redis), then the rest; SIGTERM, as the
        # kubelet would, then SIGKILL after a while.
        for label, p, _ in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 25
        for label, p, logp in reversed(self.procs):
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log(f"{label} did not stop on SIGTERM; killing it")
                p.kill()
                p.wait()

    def logs(self):
        return "\n".join(f"--- {label} ({logp}):\n{tail(logp)}" for label, _, logp in self.procs)


def check_gateway_exits(procs, json_logs):
    """After SIGTERM: each gateway exited 0, and (with FAIRGATE_LOG_FORMAT=json) logged JSON."""
    for label, p, logp in procs.procs:
        if not label.startswith("gateway-"):
            continue
        if p.returncode != 0:
            raise Failure(f"{label} exited with {p.returncode} on SIGTERM")
        with open(logp, encoding="utf-8", errors="replace") as f:
            lines = [ln for ln in f.read().splitlines() if ln.strip()]
        if not lines:
            raise Failure(f"{label} logged nothing")
        if json_logs:
            for ln in lines:
                try:
                    json.loads(ln)
                except ValueError:
                    raise Failure(f"{label}: FAIRGATE_LOG_FORMAT=json, but a log line is not "
                                  f"JSON: {ln[:300]}") from None
        for ln in lines:
            if re.search(r'"level":\s*"(WARN|ERROR)"|\b(WARN|ERROR)\b', ln):
                log(f"{label} logged: {ln[:400]}")


def tail(path, n=40):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return "(no log)"


def wait_for(what, fn, timeout, proc=None, procs=None):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc is not None:
            procs.check_alive(proc)
        try:
            ok, last = fn()
            if ok:
                return last
        except (OSError, http.client.HTTPException) as e:
            last = str(e)
        time.sleep(0.1)
    raise Failure(f"{what}: not within {timeout} s (last: {last})")


def redis_ping(port):
    with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
        s.sendall(b"PING\r\n")
        got = s.recv(64)
    return got.startswith(b"+PONG"), got


# --- the run -------------------------------------------------------------------------------------


def run(args, tmp, procs, cleanups):
    objs = load_objects(args.rendered)
    dep, pod, container = gateway_container(objs, args.container)
    env = resolve_env(objs, container)
    args.json_logs = env.get("FAIRGATE_LOG_FORMAT") == "json"
    log(f"Deployment/{dep['metadata']['name']} container {container['name']}: "
        f"args {container.get('args')}, env {sorted(env)}")

    # The command line: the image's ENTRYPOINT (deploy/Dockerfile) unless `command` replaces it.
    command = container.get("command") or [IMAGE_ENTRYPOINT]
    if command[0] != IMAGE_ENTRYPOINT:
        raise Failure(f"container command {command} does not run {IMAGE_ENTRYPOINT}")
    argv = [expand(a, env) for a in command[1:] + (container.get("args") or [])]
    if not argv or argv[0] != "serve":
        raise Failure(f"container does not run `fairgate serve`: {argv}")

    # Volumes: what a mount path holds and which local directory stands in for it.
    volumes = {v["name"]: v for v in pod.get("volumes") or []}
    mounts = []  # (mountPath, volume)
    for vm in container.get("volumeMounts") or []:
        if vm["name"] not in volumes:
            raise Failure(f"volumeMount {vm['name']} has no volume")
        mounts.append((vm["mountPath"].rstrip("/") or "/", volumes[vm["name"]], vm))

    config_path = None
    for i, a in enumerate(argv):
        if a in ("--config", "-c") and i + 1 < len(argv):
            config_path = argv[i + 1]
        elif a.startswith("--config="):
            config_path = a.split("=", 1)[1]
    if config_path is None:
        raise Failure(f"`fairgate serve` gets no --config: {argv}")

    def mount_of(path):
        best = None
        for mp, vol, vm in mounts:
            if path == mp or path.startswith(mp + "/"):
                if best is None or len(mp) > len(best[0]):
                    best = (mp, vol, vm)
        return best

    m = mount_of(config_path)
    if m is None or "configMap" not in m[1]:
        raise Failure(f"--config {config_path} is not in a mounted ConfigMap (mounts: "
                      f"{[(mp, sorted(v)) for mp, v, _ in mounts]})")
    mp, vol, vm = m
    rel = config_path[len(mp) + 1:]
    if vm.get("subPath"):
        raise Failure("a subPath mount of the config is not handled")
    cm_name = vol["configMap"]["name"]
    items = vol["configMap"].get("items")
    key = rel
    if items:
        by_path = {it["path"]: it["key"] for it in items}
        if rel not in by_path:
            raise Failure(f"ConfigMap/{cm_name} volume items do not project {rel}")
        key = by_path[rel]
    toml_text = configmap_value(objs, cm_name, key, False)
    try:
        cfg = tomllib.loads(toml_text)
    except tomllib.TOMLDecodeError as e:
        raise Failure(f"ConfigMap/{cm_name} {key} is not valid TOML: {e}")
    models = [mm["name"] for mm in cfg.get("models", [])]
    if not models:
        raise Failure("the rendered config declares no [[models]]")
    log(f"config {config_path} from ConfigMap/{cm_name} key {key}; models {models}")

    # Where the settings live: the chart passes these as variables; the test replaces them.
    for var in ("FAIRGATE_DATABASE", "FAIRGATE_CLUSTER__REDIS_URL", "FAIRGATE_ADMIN_TOKEN"):
        if var not in env:
            raise Failure(f"the container sets no {var} (two replicas need it)")
    admin_token = env["FAIRGATE_ADMIN_TOKEN"]
    check_env_names(env)
    if not env["FAIRGATE_DATABASE"].startswith(("postgres://", "postgresql://")):
        raise Failure(f"FAIRGATE_DATABASE is not a PostgreSQL URL: {env['FAIRGATE_DATABASE']}")
    if "redis_url" in (cfg.get("cluster") or {}):
        raise Failure("the config file itself names cluster.redis_url "
                      "(it should come from the Secret)")

    # Simulators, one per backend entry (backend names default to host:port, unique per model).
    sim_ports = {}

    def sim_for(model, i):
        port = free_port()
        sim_ports[(model, i)] = port
        return port

    toml_run = replace_backends(toml_text, sim_for)
    for (model, i), port in sim_ports.items():
        p = procs.start(f"sim-{model}-{i}", [args.bin, "sim", "--listen", f"127.0.0.1:{port}",
                                            "--model", model, "--instant"])
        sim_ports[(model, i)] = (port, p)

    # Redis: private, no persistence.
    rport = free_port()
    rdir = os.path.join(tmp, "redis")
    os.mkdir(rdir)
    rp = procs.start("redis", [args.redis_server, "--port", str(rport), "--bind", "127.0.0.1",
                               "--save", "", "--appendonly", "no", "--dir", rdir])
    wait_for("redis-server answers PING", lambda: redis_ping(rport), 10, rp, procs)
    redis_url = urllib.parse.urlsplit(env["FAIRGATE_CLUSTER__REDIS_URL"])
    redis_url = urllib.parse.urlunsplit(redis_url._replace(netloc=f"127.0.0.1:{rport}"))

    # PostgreSQL: a fresh schema on the test server.
    schema = f"fg_deploy_{os.getpid()}_{int(time.time())}"
    psql(args.postgres, f"CREATE SCHEMA {schema}")
    cleanups.append(lambda: psql(args.postgres, f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
    db_url = pg_url_with_schema(args.postgres, schema)

    for (model, i), (port, p) in sim_ports.items():
        wait_for(f"simulator for {model} listens", lambda: (
            request(port, "GET", "/v1/models")[0] == 200, None), 10, p, procs)

    # The two gateways.
    gws = []
    for n in (1, 2):
        root = os.path.join(tmp, f"gateway-{n}")
        os.mkdir(root)
        # Stand-ins for the mounted volumes, keyed by mount path.
        subst = {}
        for mpath, v, _ in mounts:
            d = os.path.join(root, "mnt" + mpath)
            os.makedirs(d, exist_ok=True)
            if "configMap" in v:
                cm = pick(objs, "ConfigMap", v["configMap"]["name"])
                data = cm[0].get("data") if cm else {}
                for k, val in (data or {}).items():
                    if v["configMap"].get("items"):
                        continue
                    with open(os.path.join(d, k), "w", encoding="utf-8") as f:
                        f.write(val)
                for it in v["configMap"].get("items") or []:
                    with open(os.path.join(d, it["path"]), "w", encoding="utf-8") as f:
                        f.write(data[it["key"]])
            subst[mpath] = d
        cfg_file = os.path.join(subst[mp], rel)
        with open(cfg_file, "w", encoding="utf-8") as f:
            f.write(toml_run)

        def local(path):
            mm = mount_of(path)
            return subst[mm[0]] + path[len(mm[0]):] if mm else path

        port = free_port()
        genv = dict(env)
        genv["FAIRGATE_LISTEN"] = f"127.0.0.1:{port}"
        genv["FAIRGATE_DATABASE"] = db_url
        genv["FAIRGATE_CLUSTER__REDIS_URL"] = redis_url
        if "FAIRGATE_DATA_DIR" in genv:
            genv["FAIRGATE_DATA_DIR"] = local(genv["FAIRGATE_DATA_DIR"])
        # The container's environment only (no host FAIRGATE_* leaking in), plus what a process
        # needs to run here.
        genv["PATH"] = os.environ.get("PATH", "/usr/bin:/bin")
        genv["HOME"] = root
        gargv = [args.bin] + [local(a) if a.startswith("/") else a for a in argv]
        # The image's WORKDIR is the data directory.
        cwd = local("/var/lib/fairgate") if mount_of("/var/lib/fairgate") else root
        p = procs.start(f"gateway-{n}", gargv, env=genv, cwd=cwd)
        gws.append((n, port, p))
        log(f"gateway-{n}: {' '.join(gargv[1:])} on 127.0.0.1:{port}")

    # Ready as the kubelet sees it: the readinessProbe's path (else /readyz) answers 200.
    probe = (container.get("readinessProbe") or {}).get("httpGet") or {}
    ready_path = probe.get("path", "/readyz")
    for n, port, p in gws:
        def ready(port=port):
            st, body = request(port, "GET", ready_path)
            return st == 200, f"HTTP {st}: {body[:300]}"
        wait_for(f"gateway-{n} {ready_path} answers 200", ready, args.ready_timeout, p, procs)
        log(f"gateway-{n} ready ({ready_path})")

    # The substituted database and Redis are the ones in use: the gateways migrated into the
    # fresh schema, and each sees both as members of one cluster.
    tables = int(psql(args.postgres, "SELECT count(*) FROM information_schema.tables "
                      f"WHERE table_schema = '{schema}'").strip())
    if tables == 0:
        raise Failure(f"no tables in schema {schema}: the gateways did not use the test database")
    member_ids = set()
    for n, port, p in gws:
        def both_members(port=port):
            st, body = request(port, "GET", "/admin/v1/cluster", token=admin_token)
            v = json.loads(body) if st == 200 else {}
            return (v.get("enabled") and v.get("redis_up") and len(v.get("members") or []) >= 2,
                    f"HTTP {st}: {body[:300]}")
        wait_for(f"gateway-{n} sees both gateways in /admin/v1/cluster", both_members, 10, p, procs)
        member_ids.add(json.loads(request(port, "GET", "/admin/v1/cluster", token=admin_token)[1])
                       ["member"])
    if len(member_ids) != 2:
        raise Failure(f"the two gateways report the same member id: {member_ids}")
    log(f"{tables} tables in schema {schema}; both gateways members of one cluster in Redis")

    # The probes the Deployment declares answer 200; /metrics wants the metrics token when the
    # container sets one (the ServiceMonitor sends it).
    for n, port, p in gws:
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            hg = (container.get(probe) or {}).get("httpGet")
            if hg:
                st, body = request(port, "GET", hg["path"])
                if st != 200:
                    raise Failure(f"gateway-{n}: {probe} GET {hg['path']}: HTTP {st}: {body[:300]}")
        mtoken = env.get("FAIRGATE_METRICS_TOKEN")
        if mtoken:
            st, _ = request(port, "GET", "/metrics")
            if st != 401:
                raise Failure(f"gateway-{n}: /metrics without the metrics token: "
                              f"HTTP {st}, not 401")
            st, body = request(port, "GET", "/metrics", token=mtoken)
            if st != 200 or "fairgate_" not in body:
                raise Failure(f"gateway-{n}: /metrics with the metrics token: HTTP {st}")
    # The tenants the config file declares exist (the ConfigMap's content was applied).
    st, body = request(gws[0][1], "GET", "/admin/v1/tenants", token=admin_token)
    if st != 200:
        raise Failure(f"GET /admin/v1/tenants: HTTP {st}: {body[:300]}")
    have = {t["name"] for t in json.loads(body)["data"]}
    missing = {t["name"] for t in cfg.get("tenants", [])} - have
    if missing:
        raise Failure(f"tenants of the config file missing from the admin API: {sorted(missing)}")
    log("probes answer 200, /metrics takes the metrics token, the config's tenants exist")

    # A tenant and a key, through the first gateway's admin API.
    _, port1, p1 = gws[0]
    tenant = f"deploy-check-{os.getpid()}"
    st, body = request(port1, "POST", "/admin/v1/tenants", {"name": tenant, "weight": 1},
                       token=admin_token)
    if st not in (200, 201):
        raise Failure(f"POST /admin/v1/tenants on gateway-1: HTTP {st}: {body[:500]}")
    st, body = request(port1, "POST", "/admin/v1/keys",
                       {"tenant": tenant, "name": "deploy-check", "user": "deploy-check"},
                       token=admin_token)
    if st not in (200, 201):
        raise Failure(f"POST /admin/v1/keys on gateway-1: HTTP {st}: {body[:500]}")
    key = json.loads(body).get("key")
    if not key:
        raise Failure(f"POST /admin/v1/keys answered no key: {body[:500]}")
    log(f"tenant {tenant} and a key created through gateway-1")

    model = models[0]
    for n, port, p in gws:
        # The second gateway learns the key through the shared database and Redis.
        deadline = time.monotonic() + args.key_timeout
        while True:
            procs.check_alive(p)
            try:
                text = stream_chat(port, key, model)
                break
            except (Failure, OSError, http.client.HTTPException, ValueError) as e:
                if time.monotonic() >= deadline:
                    raise Failure(f"streamed chat completion through gateway-{n}: {e}")
                time.sleep(0.2)
        log(f"gateway-{n}: streamed answer from {model}: {text!r}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("rendered", help="helm template output (the cluster values)")
    ap.add_argument("--bin", default=os.environ.get("FAIRGATE_BIN", "target/debug/fairgate"))
    pg = (os.environ.get("FAIRGATE_TEST_POSTGRES_URL") or "").strip() or DEFAULT_PG
    ap.add_argument("--postgres", default=pg)
    ap.add_argument("--redis-server", default=shutil.which("redis-server") or "redis-server")
    ap.add_argument("--container", default="gateway")
    ap.add_argument("--ready-timeout", type=float, default=30)
    ap.add_argument("--key-timeout", type=float, default=10)
    ap.add_argument("--show-logs", action="store_true", help="print the processes' logs")
    args = ap.parse_args()
    args.bin = os.path.abspath(args.bin)

    args.json_logs = False
    # SIGTERM (a killed test run) unwinds through the cleanup below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    tmp = tempfile.mkdtemp(prefix="fairgate-rendered-")
    procs = Procs(tmp)
    cleanups = []
    ok = False
    try:
        run(args, tmp, procs, cleanups)
        ok = True
    except Failure as e:
        print(f"\nrun_rendered: FAILED: {e}", file=sys.stderr)
        print(procs.logs(), file=sys.stderr)
    except Exception:
        import traceback

        traceback.print_exc()
        print(procs.logs(), file=sys.stderr)
    finally:
        stop0 = time.monotonic()
        procs.stop_all()
        for c in cleanups:
            try:
                c()
            except Exception as e:  # noqa: BLE001 - report and go on cleaning
                print(f"run_rendered: cleanup: {e}", file=sys.stderr)
                ok = False
        if ok:
            try:
                check_gateway_exits(procs, json_logs=args.json_logs)
            except Failure as e:
                print(f"\nrun_rendered: FAILED: {e}", file=sys.stderr)
                print(procs.logs(), file=sys.stderr)
                ok = False
        if args.show_logs and ok:
            print(procs.logs())
        shutil.rmtree(tmp, ignore_errors=True)
        log(f"stopped everything in {time.monotonic() - stop0:.1f} s")
    if not ok:
        sys.exit(1)
    log(f"ok: two gateways from the rendered chart answered, in {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
