#!/usr/bin/env python3
"""The interactive scenario against a backend that is not fairgate's simulator.

A minimal fake vLLM in this process: 16 sequences, a fixed 20 ms to the first token and 5 ms
per token after it, requests beyond 16 wait first come first served (vLLM's default policy);
it has no batch step, so a request that gets a sequence starts at once. One heavy tenant keeps
48 streams of 128 tokens open; each light tenant (`--light-tenants`, default 1) sends one
32-token stream at a time. A light tenant's TTFT is measured alone (5 s), then the light
tenants' beside the flood (from 3 s into the flood to its end). Modes: `auto` (fairgate, default configuration: automatic headroom), `off` (fairgate,
`headroom = 0`), `direct` (the fake itself). fairgate gets `max_in_flight = 16`, the engine's
sequence count.

    python3 -m venv /tmp/fakevenv && /tmp/fakevenv/bin/pip install aiohttp
    cargo build --release
    /tmp/fakevenv/bin/python scripts/bench/fake_vllm_interactive.py --gateway target/release/fairgate
"""
import argparse
import asyncio
import json
import random
import socket
import statistics
import subprocess
import tempfile
import time

from aiohttp import ClientSession, ClientTimeout, TCPConnector, web

SEQS, TTFT_S, ITL_S = 16, 0.020, 0.005
ADMIN = "fake-vllm-bench-admin-token-0123"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeVllm:
    def __init__(self):
        self.sem = asyncio.Semaphore(SEQS)
        self.running = 0
        self.waiting = 0

    async def chat(self, req):
        body = await req.json()
        n = int(body.get("max_tokens") or 16)
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(req)

        def chunk(delta, finish, usage=None):
            c = {"id": "fake", "object": "chat.completion.chunk", "created": 0,
                 "model": body["model"],
                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            if usage:
                c["usage"] = usage
            return b"data: " + json.dumps(c).encode() + b"\n\n"

        self.waiting += 1
        async with self.sem:
            self.waiting -= 1
            self.running += 1
            try:
                due = time.monotonic() + TTFT_S
                for _ in range(n):
                    await asyncio.sleep(max(0.0, due - time.monotonic()))
                    await resp.write(chunk({"content": "tok "}, None))
                    due += ITL_S
                usage = {"prompt_tokens": 12, "completion_tokens": n, "total_tokens": 12 + n}
                await resp.write(chunk({}, "length", usage) + b"data: [DONE]\n\n")
            finally:
                self.running -= 1
        await resp.write_eof()
        return resp

    async def metrics(self, _req):
        return web.Response(
            text=f'vllm:num_requests_running{{model_name="m"}} {self.running}\n'
                 f'vllm:num_requests_waiting{{model_name="m"}} {self.waiting}\n')

    async def health(self, _req):
        return web.Response(text="")


async def stream(sess, url, key, tokens, ttfts):
    t0 = time.monotonic()
    async with sess.post(f"{url}/v1/chat/completions",
                         headers={"authorization": f"Bearer {key}"},
                         json={"model": "m", "max_tokens": tokens, "stream": True,
                               "messages": [{"role": "user", "content": "hello there"}]}) as r:
        if r.status != 200:
            raise RuntimeError(f"{r.status}: {await r.text()}")
        first = None
        async for line in r.content:
            if first is None and b'"content"' in line:
                first = time.monotonic() - t0
        if first is None:
            raise RuntimeError("a stream ended without a content chunk")
        ttfts.append((t0, first * 1e3))


async def closed_loop(sess, url, key, tokens, until, ttfts, think_s=0.0):
    while time.monotonic() < until:
        if think_s:
            await asyncio.sleep(random.uniform(0.0, think_s))
        await stream(sess, url, key, tokens, ttfts)


def p99(v):
    v = sorted(v)
    return v[min(len(v) - 1, int(0.99 * len(v)))]


async def run(mode, args):
    fake = FakeVllm()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", fake.chat)
    app.router.add_get("/metrics", fake.metrics)
    app.router.add_get("/health", fake.health)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    url = f"http://127.0.0.1:{port}"
    sess = ClientSession(connector=TCPConnector(limit=0), timeout=ClientTimeout(total=600))
    lights = [f"light{i}" for i in range(args.light_tenants)]
    keys = {t: "none" for t in lights + ["heavy"]}
    gateway = None
    tmp = tempfile.TemporaryDirectory()
    try:
        if mode != "direct":
            d, gport = tmp.name, free_port()
            extra = "[admission]\nheadroom = 0\n" if mode == "off" else ""
            with open(f"{d}/fairgate.toml", "w") as f:
                f.write(f'listen = "127.0.0.1:{gport}"\ndatabase = "sqlite://{d}/ledger.db"\n'
                        f'data_dir = "{d}"\nadmin_token = "{ADMIN}"\n{extra}'
                        f'[[models]]\nname = "m"\n[[models.backends]]\nurl = "{url}"\n'
                        f'max_in_flight = {SEQS}\n')
            gateway = subprocess.Popen([args.gateway, "serve", "--config", f"{d}/fairgate.toml"],
                                       stdout=subprocess.DEVNULL,
                                       stderr=open(f"{d}/gateway.log", "w"))
            url = f"http://127.0.0.1:{gport}"
            for _ in range(200):
                try:
                    async with sess.get(f"{url}/readyz") as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                await asyncio.sleep(0.1)
            admin = {"authorization": f"Bearer {ADMIN}"}
            for t in keys:
                async with sess.post(f"{url}/admin/v1/tenants", headers=admin,
                                     json={"name": t, "weight": 1}) as r:
                    r.raise_for_status()
                async with sess.post(f"{url}/admin/v1/keys", headers=admin,
                                     json={"tenant": t, "name": "bench"}) as r:
                    r.raise_for_status()
                    keys[t] = (await r.json())["key"]
        think = args.think_ms / 1e3
        alone = []
        await closed_loop(sess, url, keys[lights[0]], 32, time.monotonic() + 5, alone, think)
        end = time.monotonic() + args.seconds
        heavy = []
        flood = [asyncio.create_task(closed_loop(sess, url, keys["heavy"], 128, end, heavy))
                 for _ in range(48)]
        await asyncio.sleep(3)
        light_start = time.monotonic()
        loaded = []
        await asyncio.gather(*[closed_loop(sess, url, keys[t], 32, end, loaded, think)
                               for t in lights])
        await asyncio.gather(*flood)
        alone = [ms for _, ms in alone]
        # Light tenants that join a running flood first wait for slots to free; "settled"
        # leaves out their first 2 s.
        settled = [ms for t, ms in loaded if t >= light_start + 2.0]
        loaded = [ms for _, ms in loaded]
        a50, a99 = statistics.median(alone), p99(alone)
        l50, l99 = statistics.median(loaded), p99(loaded)
        s99 = p99(settled)
        print(f"| {mode} | {a50:.1f} / {a99:.1f} | {l50:.1f} / {l99:.1f} | "
              f"{l50 / a50:.2f}× / {l99 / a99:.2f}× | {s99 / a99:.2f}× | {len(loaded)} "
              f"| {len(heavy)} |", flush=True)
    finally:
        await sess.close()
        if gateway:
            gateway.terminate()
            gateway.wait()
        await runner.cleanup()
        tmp.cleanup()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gateway", default="target/release/fairgate", help="fairgate binary")
    ap.add_argument("--mode", choices=["auto", "off", "direct", "all"], default="all")
    ap.add_argument("--seconds", type=float, default=20.0, help="length of the flood")
    ap.add_argument("--light-tenants", type=int, default=1,
                    help="light tenants beside the flood, each one stream at a time")
    ap.add_argument("--think-ms", type=float, default=0.0,
                    help="light tenant's pause before each request, uniform in 0..N ms")
    args = ap.parse_args()
    print(f"{args.light_tenants} light tenant(s), think 0–{args.think_ms:g} ms, "
          f"flood {args.seconds:g} s")
    print("| path | light TTFT alone p50 / p99 (ms) | beside the flood p50 / p99 (ms) | ratio p50 / p99 "
          "| p99 ratio after the first 2 s | light requests beside the flood | heavy streams done |")
    print("|---|---|---|---|---|---|---|")
    for mode in (["auto", "off", "direct"] if args.mode == "all" else [args.mode]):
        asyncio.run(run(mode, args))


if __name__ == "__main__":
    main()
