// Shared by the JS SDK tests: one `fairgate demo` process per test file (the JavaScript twin of
// tests/demo_process.py), an admin API client (plain fetch), and SDK clients for the gateway.
//
// The binary comes from FAIRGATE_BIN (default target/debug/fairgate, relative to the repository
// root). The demo prints exactly one JSON line on stdout when it is ready (base_url, key,
// admin_url, admin_token, models, ...) and exits 0 on SIGTERM; both are checked here.

import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';

import OpenAI from 'openai';

export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const READY_TIMEOUT_MS = 60_000;
export const SHUTDOWN_TIMEOUT_MS = 20_000;
export const SDK_TIMEOUT_MS = 30_000;

// Models the demo serves (the contract of `fairgate demo`, as in tests/python/_support.py).
export const LLAMA = 'sim-llama';
export const QWEN = 'sim-qwen';
export const DEMO_MODELS = [LLAMA, QWEN];

// What every caller relies on in the ready line.
const REQUIRED_FIELDS = [
  'base_url', 'key', 'admin_url', 'admin_token', 'models', 'portal_url', 'portal_email', 'portal_password',
];

export function fairgateBinary() {
  let p = process.env.FAIRGATE_BIN || 'target/debug/fairgate';
  if (!isAbsolute(p)) p = join(REPO_ROOT, p);
  let isFile = false;
  try {
    isFile = statSync(p).isFile();
  } catch {
    isFile = false;
  }
  if (!isFile) {
    throw new Error(`fairgate binary not found at ${p}: build it (cargo build --bin fairgate) or set FAIRGATE_BIN`);
  }
  return p;
}

function tail(path, n = 8000) {
  try {
    const text = readFileSync(path, 'utf8');
    return text.length > n ? text.slice(-n) : text;
  } catch (e) {
    return `<could not read ${path}: ${e.message}>`;
  }
}

/** Starts `fairgate demo`; resolves with a handle once its ready line is in. */
export async function startDemo() {
  const binary = fairgateBinary();
  const root = mkdtempSync(join(tmpdir(), 'fairgate-js-'));
  const dataDir = join(root, 'data');
  const stderrLog = join(root, 'fairgate-demo.stderr.log');
  // Harness variable, not gateway configuration (FAIRGATE_* variables are config overrides).
  const env = { ...process.env };
  delete env.FAIRGATE_BIN;
  const args = ['demo', '--listen', '127.0.0.1:0', '--data-dir', dataDir, '--json'];
  const cmd = [binary, ...args].join(' ');
  const stderrFd = openSync(stderrLog, 'w');
  const proc = spawn(binary, args, { cwd: root, env, stdio: ['ignore', 'pipe', stderrFd] });
  closeSync(stderrFd);
  // Should this test process die without running `after`, take the gateway along.
  const killOnExit = () => proc.exitCode === null && proc.signalCode === null && proc.kill('SIGKILL');
  process.on('exit', killOnExit);

  // On exit, let go of stdout too: a grandchild still holding the pipe must not keep this test
  // process alive.
  const stdoutClosed = new Promise((res) => proc.stdout.once('close', res));
  const exited = new Promise((res) => {
    proc.once('exit', (code, signal) => {
      const t = setTimeout(() => proc.stdout.destroy(), 2000);
      stdoutClosed.then(() => {
        clearTimeout(t);
        res({ code, signal });
      });
    });
    // Could not be started at all (not executable, ...): no 'exit' follows.
    proc.once('error', (error) => res({ code: null, signal: null, error }));
  });
  let buf = '';
  let readyLine = null;
  let onLine;
  const gotLine = new Promise((res) => { onLine = res; });
  proc.stdout.setEncoding('utf8');
  proc.stdout.on('data', (chunk) => {
    // Everything after the ready line is kept (and must be empty at the end).
    buf += chunk;
    if (readyLine === null && buf.includes('\n')) {
      const i = buf.indexOf('\n');
      readyLine = buf.slice(0, i);
      buf = buf.slice(i + 1);
      onLine(readyLine);
    }
  });

  const handle = {
    proc, root, dataDir, stderrLog, info: null,
    stderrTail: () => tail(stderrLog),
    /** SIGTERM, then checks; removes the temp dir unless `keep` (a test failed: keep the log). */
    async stop({ keep = false } = {}) {
      process.off('exit', killOnExit);
      let status;
      if (proc.exitCode === null && proc.signalCode === null) {
        proc.kill('SIGTERM');
        let timer;
        const timedOut = new Promise((res) => { timer = setTimeout(() => res(null), SHUTDOWN_TIMEOUT_MS); });
        status = await Promise.race([exited, timedOut]);
        clearTimeout(timer);
        if (status === null) {
          proc.kill('SIGKILL');
          await exited;
          throw new Error(
            `fairgate demo did not exit within ${SHUTDOWN_TIMEOUT_MS / 1000}s of SIGTERM.\n` +
            `--- stderr (${stderrLog}) ---\n${tail(stderrLog)}`,
          );
        }
      } else {
        status = await exited;
      }
      if (status.code !== 0) {
        throw new Error(
          `fairgate demo exited with code ${status.code} signal ${status.signal} after SIGTERM (want 0).\n` +
          `--- stderr (${stderrLog}) ---\n${tail(stderrLog)}`,
        );
      }
      if (buf.trim() !== '') {
        throw new Error(`demo must print exactly one line to stdout (logs go to stderr); also got: ${buf.slice(0, 500)}`);
      }
      if (!keep) rmSync(root, { recursive: true, force: true });
    },
  };

  let timer;
  const outcome = await Promise.race([
    gotLine.then((line) => ({ line })),
    exited.then((s) => ({ exited: s })),
    new Promise((res) => { timer = setTimeout(() => res({ timeout: true }), READY_TIMEOUT_MS); }),
  ]);
  clearTimeout(timer);
  // A line and the exit can race; a line that arrived wins.
  const line = outcome.line ?? readyLine;
  if (line === null || line === undefined) {
    const why = outcome.exited
      ? (outcome.exited.error
        ? `could not be started: ${outcome.exited.error.message}`
        : `exited with code ${outcome.exited.code} (signal ${outcome.exited.signal}) before printing its ready line`)
      : `printed no ready line within ${READY_TIMEOUT_MS / 1000}s`;
    if (!outcome.exited) {
      proc.kill('SIGKILL');
      await exited;
    }
    process.off('exit', killOnExit);
    throw new Error(`\`${cmd}\` ${why}.\n--- stderr (${stderrLog}) ---\n${tail(stderrLog)}`);
  }
  let info;
  try {
    info = JSON.parse(line);
  } catch {
    await handle.stop({ keep: true }).catch(() => {});
    throw new Error(`demo ready line is not JSON: ${line.slice(0, 500)}\n--- stderr ---\n${tail(stderrLog)}`);
  }
  const problems = REQUIRED_FIELDS.filter((f) => !(f in info)).map((f) => `lacks \`${f}\``);
  if (!String(info.base_url).match(/^http:\/\/127\.0\.0\.1:\d+\/v1$/)) problems.push('base_url is not http://127.0.0.1:PORT/v1');
  if (!String(info.admin_url).match(/^http:\/\/127\.0\.0\.1:\d+\/admin\/v1$/)) problems.push('admin_url is not http://127.0.0.1:PORT/admin/v1');
  if (!String(info.key).startsWith('fgk_')) problems.push('key does not start with fgk_');
  if (problems.length) {
    await handle.stop({ keep: true }).catch(() => {});
    throw new Error(`demo ready line: ${problems.join(', ')}: ${line}`);
  }
  handle.info = info;
  return handle;
}

/**
 * Registers a `before` hook that starts the demo and an `after` hook that stops it (SIGTERM,
 * exit code 0, nothing else on stdout) for the calling test file, and returns an object whose
 * properties are filled once the demo is up: info (the ready line), admin (AdminClient),
 * client (an OpenAI client with the demo key), makeClient(key), and test(name, fn) — node:test's
 * `test` that prints the tail of the gateway's stderr when `fn` fails.
 */
export function useDemo() {
  const ctx = {};
  before(async () => {
    ctx.demo = await startDemo();
    ctx.info = ctx.demo.info;
    ctx.admin = new AdminClient(ctx.info.admin_url, ctx.info.admin_token);
    ctx.makeClient = (apiKey, opts = {}) => makeClient(ctx.info.base_url, apiKey, opts);
    ctx.client = ctx.makeClient(ctx.info.key);
  }, { timeout: READY_TIMEOUT_MS + 10_000 });
  after(async () => {
    if (ctx.demo) await ctx.demo.stop({ keep: ctx.failed === true });
  }, { timeout: SHUTDOWN_TIMEOUT_MS + 10_000 });
  ctx.test = (name, opts, fn) => {
    if (typeof opts === 'function') [opts, fn] = [{}, opts];
    return test(name, { timeout: 120_000, ...opts }, async (t) => {
      try {
        await fn(t);
      } catch (e) {
        if (opts.todo) {
          // A known deviation that is still there: report what was seen in a few lines, without
          // the stack (the runner lists todo failures but does not fail the run for them).
          const short = new Error(`still deviates: ${String(e?.message ?? e).slice(0, 1500)}`);
          short.stack = short.message;
          throw short;
        }
        if (ctx.demo) {
          ctx.failed = true; // keeps the temp dir and its log
          process.stderr.write(
            `\n--- ${name} failed; fairgate demo stderr (${ctx.demo.stderrLog}), tail ---\n` +
            `${ctx.demo.stderrTail()}\n--- end of stderr ---\n`,
          );
        }
        throw e;
      }
    });
  };
  return ctx;
}

/** The official SDK, pointed at the gateway: only baseURL and apiKey differ from OpenAI's. */
export function makeClient(baseURL, apiKey, opts = {}) {
  return new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: SDK_TIMEOUT_MS, ...opts });
}

/** Client of `/admin/v1` (bearer admin token), on plain fetch. */
export class AdminClient {
  constructor(url, token) {
    this.url = url;
    this.token = token;
  }

  async call(method, path, body, expect) {
    const headers = { Authorization: `Bearer ${this.token}`, Accept: 'application/json' };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const resp = await fetch(this.url + path, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(SDK_TIMEOUT_MS),
    });
    const text = await resp.text();
    let json = null;
    try {
      json = text ? JSON.parse(text) : null;
    } catch {
      json = null;
    }
    if (expect !== undefined && resp.status !== expect) {
      throw new Error(`${method} ${path} -> HTTP ${resp.status}, wanted ${expect}: ${text.slice(0, 500)}`);
    }
    return { status: resp.status, headers: resp.headers, text, json };
  }

  async createTenant(name = uniqueName()) {
    const r = await this.call('POST', '/tenants', { name, weight: 1 }, 201);
    if (r.json?.name !== name) throw new Error(`created tenant is not ${name}: ${r.text}`);
    return r.json;
  }

  async createKey(tenant, { models, name = 'js-sdk' } = {}) {
    const body = { tenant, name };
    if (models !== undefined) body.models = models;
    const r = await this.call('POST', '/keys', body, 201);
    if (typeof r.json?.id !== 'string' || !String(r.json?.key).startsWith('fgk_')) {
      throw new Error(`POST /keys answered no id/key: ${r.text}`);
    }
    return r.json;
  }

  async requests(tenant, limit = 200) {
    const r = await this.call('GET', `/requests?tenant=${encodeURIComponent(tenant)}&limit=${limit}`, undefined, 200);
    return r.json.data;
  }

  async usage(tenant) {
    const r = await this.call('GET', `/usage?tenant=${encodeURIComponent(tenant)}`, undefined, 200);
    return r.json.data;
  }
}

/** Lowercase alphanumeric, so it passes any reasonable name validation. */
export function uniqueName(prefix = 'js') {
  return prefix + randomUUID().replaceAll('-', '').slice(0, 12);
}

/** A raw request the SDK would not send (e.g. a malformed body); never throws on HTTP errors. */
export async function rawPost(url, token, rawBody) {
  const resp = await fetch(url, {
    method: 'POST',
    headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
    body: rawBody,
    signal: AbortSignal.timeout(SDK_TIMEOUT_MS),
  });
  const text = await resp.text();
  let json = null;
  try {
    json = JSON.parse(text);
  } catch {
    json = null;
  }
  return { status: resp.status, headers: resp.headers, text, json };
}

/** Drains an SDK stream into an array of chunks. */
export async function collect(stream) {
  const out = [];
  for await (const chunk of stream) out.push(chunk);
  return out;
}
