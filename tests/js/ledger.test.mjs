// The ledger (admin `/requests` and `/usage`) saw every SDK call of a test, with the usage the
// SDK reported, exactly, streams included. Each test uses a fresh tenant and key, so it sees only
// its own traffic; rows are matched to calls by `x-request-id` (the SDK's `request_id` on
// successes, `err.requestID` on errors).

import assert from 'node:assert/strict';

import OpenAI from 'openai';

import { LLAMA, QWEN, collect, uniqueName, useDemo } from './support.mjs';

const demo = useDemo();
const MESSAGES = [{ role: 'user', content: 'Count to three.' }];
const ROW_FIELDS = [
  'id', 'ts', 'tenant', 'user', 'key_id', 'model', 'backend', 'endpoint', 'stream', 'prompt_tokens',
  'completion_tokens', 'cached_tokens', 'reserved_tokens', 'usage_source', 'status', 'outcome',
  'error_class', 'queue_ms', 'ttft_ms', 'duration_ms',
];

async function freshTenant() {
  const tenant = await demo.admin.createTenant(uniqueName());
  const key = await demo.admin.createKey(tenant.name);
  // Records the x-request-id of every response this client gets, in order.
  const seen = [];
  const fetchRecording = async (url, init) => {
    const resp = await fetch(url, init);
    seen.push(resp.headers.get('x-request-id'));
    return resp;
  };
  return { name: tenant.name, key, client: demo.makeClient(key.key, { fetch: fetchRecording }), seen };
}

async function expectError(cls, fn) {
  try {
    await fn();
  } catch (e) {
    assert.ok(e instanceof cls, `expected ${cls.name}, got ${e?.constructor?.name}: ${e?.message}`);
    assert.ok(e.requestID, `${cls.name} without x-request-id`);
    return e;
  }
  assert.fail(`expected ${cls.name}, the call succeeded`);
}

demo.test('the ledger has one exact row per SDK call (plain, streamed, helper, embeddings, errors)', async () => {
  const t = await freshTenant();
  const c = t.client;
  const ok = new Map(); // request id -> expectation
  const expectOk = (rid, model, endpoint, stream, usage) => {
    assert.ok(rid, `no request id for ${endpoint}`);
    assert.ok(usage, `no usage reported to the SDK for ${endpoint} (${rid})`);
    ok.set(rid, {
      model, endpoint, stream,
      prompt: usage.prompt_tokens,
      completion: usage.completion_tokens ?? 0,
      cached: usage.prompt_tokens_details?.cached_tokens ?? 0,
    });
  };

  // Chat, plain.
  const first = await c.chat.completions.create({ model: LLAMA, messages: MESSAGES, max_tokens: 3 }).withResponse();
  expectOk(first.request_id, LLAMA, '/v1/chat/completions', false, first.data.usage);

  // Chat, streamed with include_usage.
  let r = await c.chat.completions.create({
    model: QWEN, messages: MESSAGES, max_tokens: 4, stream: true, stream_options: { include_usage: true },
  }).withResponse();
  let chunks = await collect(r.data);
  expectOk(r.request_id, QWEN, '/v1/chat/completions', true, chunks.at(-1).usage);

  // Chat, streamed without include_usage: the SDK sees no usage, the ledger still has it exactly.
  r = await c.chat.completions.create({ model: LLAMA, messages: MESSAGES, max_tokens: 2, stream: true }).withResponse();
  const hiddenRid = r.request_id;
  chunks = await collect(r.data);
  assert.equal(chunks.filter((x) => x.choices[0]?.delta.content).length, 2);
  assert.ok(chunks.every((x) => !x.usage), 'no usage was asked for');

  // The SDK's streaming helper.
  const runner = c.chat.completions.stream({
    model: QWEN, messages: MESSAGES, max_tokens: 5, stream_options: { include_usage: true },
  });
  const final = await runner.finalChatCompletion();
  expectOk(t.seen.at(-1), QWEN, '/v1/chat/completions', true, final.usage);

  // Legacy completions, plain and streamed.
  r = await c.completions.create({ model: QWEN, prompt: 'Hello there', max_tokens: 2 }).withResponse();
  expectOk(r.request_id, QWEN, '/v1/completions', false, r.data.usage);
  r = await c.completions.create({
    model: LLAMA, prompt: 'Hello there', max_tokens: 3, stream: true, stream_options: { include_usage: true },
  }).withResponse();
  chunks = await collect(r.data);
  expectOk(r.request_id, LLAMA, '/v1/completions', true, chunks.at(-1).usage);

  // Embeddings: SDK default (base64) and float with an array.
  r = await c.embeddings.create({ model: LLAMA, input: 'embed me' }).withResponse();
  expectOk(r.request_id, LLAMA, '/v1/embeddings', false, r.data.usage);
  r = await c.embeddings.create({ model: QWEN, input: ['one', 'two three'], encoding_format: 'float' }).withResponse();
  expectOk(r.request_id, QWEN, '/v1/embeddings', false, r.data.usage);

  // Refused requests: matched by the request id the SDK puts on the error.
  const failed = new Map();
  let e = await expectError(OpenAI.AuthenticationError, () =>
    demo.makeClient(`fgk_${t.key.id}_${'C'.repeat(40)}`).chat.completions.create({ model: QWEN, messages: MESSAGES, max_tokens: 1 }));
  failed.set(e.requestID, { status: 401, outcome: 'auth_failed', error_class: 'invalid_api_key' });
  e = await expectError(OpenAI.NotFoundError, () =>
    c.chat.completions.create({ model: 'no-such-model', messages: MESSAGES, max_tokens: 1 }));
  failed.set(e.requestID, { status: 404, outcome: 'rejected', error_class: 'model_not_found' });
  e = await expectError(OpenAI.BadRequestError, () =>
    c.chat.completions.create({ model: LLAMA, messages: MESSAGES, max_tokens: -1 }));
  failed.set(e.requestID, { status: 400, outcome: 'rejected', error_class: null });
  e = await expectError(OpenAI.InternalServerError, () =>
    c.chat.completions.create({ model: LLAMA, messages: MESSAGES, max_tokens: 1 }, { headers: { 'x-sim-fault': 'error' } }));
  failed.set(e.requestID, { status: 502, outcome: 'upstream_error', error_class: 'upstream_status' });

  // --- /admin/v1/requests ------------------------------------------------------------------
  // The admin API flushes pending ledger writes before reading: no polling.
  const rows = await demo.admin.requests(t.name, 200);
  const byId = new Map(rows.map((row) => [row.id, row]));
  assert.equal(byId.size, rows.length, 'duplicate ledger rows');
  for (const row of rows) {
    const missing = ROW_FIELDS.filter((f) => !(f in row));
    assert.deepEqual(missing, [], `ledger row lacks fields: ${JSON.stringify(row)}`);
    assert.equal(row.tenant, t.name);
  }
  const ts = rows.map((row) => row.ts);
  assert.deepEqual(ts, [...ts].sort((a, b) => b - a), 'requests are listed newest first');

  for (const [rid, want] of ok) {
    const row = byId.get(rid);
    assert.ok(row, `no ledger row for ok request ${rid} ${JSON.stringify(want)}`);
    assert.deepEqual({
      outcome: row.outcome, status: row.status, model: row.model, endpoint: row.endpoint, stream: row.stream,
      prompt: row.prompt_tokens, completion: row.completion_tokens, cached: row.cached_tokens,
      key_id: row.key_id, usage_source: row.usage_source, error_class: row.error_class,
    }, {
      outcome: 'ok', status: 200, model: want.model, endpoint: want.endpoint, stream: want.stream,
      prompt: want.prompt, completion: want.completion, cached: want.cached,
      key_id: t.key.id, usage_source: 'upstream', error_class: null,
    }, `row ${rid}`);
    assert.ok(row.backend, JSON.stringify(row));
    assert.ok(row.duration_ms >= 0 && row.queue_ms >= 0, JSON.stringify(row));
  }

  const hidden = byId.get(hiddenRid);
  assert.ok(hidden, 'no ledger row for the stream without include_usage');
  assert.deepEqual(
    [hidden.outcome, hidden.stream, hidden.completion_tokens, hidden.usage_source, hidden.endpoint],
    ['ok', true, 2, 'upstream', '/v1/chat/completions'], JSON.stringify(hidden));
  assert.equal(hidden.prompt_tokens, first.data.usage.prompt_tokens, 'same messages, same prompt tokens');

  for (const [rid, want] of failed) {
    const row = byId.get(rid);
    assert.ok(row, `no ledger row for refused request ${rid} ${JSON.stringify(want)}`);
    assert.equal(row.status, want.status, JSON.stringify(row));
    assert.equal(row.outcome, want.outcome, JSON.stringify(row));
    if (want.error_class === null) assert.ok(row.error_class, JSON.stringify(row));
    else assert.equal(row.error_class, want.error_class, JSON.stringify(row));
    assert.equal(row.key_id, t.key.id, JSON.stringify(row));
    assert.deepEqual([row.prompt_tokens, row.completion_tokens], [0, 0], JSON.stringify(row));
  }
  assert.equal(rows.length, ok.size + 1 + failed.size, 'exactly one row per request');

  // --- /admin/v1/usage: per-model sums equal what the SDK reported ---------------------------
  const want = new Map();
  const add = (model, prompt, completion) => {
    const s = want.get(model) ?? { prompt: 0, completion: 0 };
    want.set(model, { prompt: s.prompt + prompt, completion: s.completion + completion });
  };
  for (const w of ok.values()) add(w.model, w.prompt, w.completion);
  add(LLAMA, first.data.usage.prompt_tokens, 2); // the hidden-usage stream
  const usage = await demo.admin.usage(t.name);
  const got = new Map(usage.map((u) => [u.model, u]));
  assert.equal(got.size, usage.length, 'one usage row per model');
  for (const [model, w] of want) {
    const u = got.get(model);
    assert.ok(u, `no usage row for ${model}: ${JSON.stringify(usage)}`);
    assert.deepEqual([u.prompt_tokens, u.completion_tokens], [w.prompt, w.completion], `${model}: ${JSON.stringify(u)}`);
    assert.equal(u.total_tokens, u.prompt_tokens + u.completion_tokens, JSON.stringify(u));
  }
});

demo.test('a stream the SDK abandons is recorded as cancelled with the tokens it got', async () => {
  const t = await freshTenant();
  // The demo decodes at a visible pace (~12 ms/token): 400 tokens outlast the client.
  const maxTokens = 400;
  const { data: stream, request_id: rid } = await t.client.chat.completions.create({
    model: LLAMA, messages: MESSAGES, max_tokens: maxTokens, stream: true,
  }).withResponse();
  let seen = 0;
  for await (const chunk of stream) {
    if (chunk.choices[0]?.delta.content) seen += 1;
    if (seen === 3) break; // the SDK aborts the request
  }
  assert.equal(seen, 3);
  // The gateway notices the closed connection asynchronously: poll briefly for the row.
  let row;
  for (const deadline = Date.now() + 10_000; Date.now() < deadline;) {
    row = (await demo.admin.requests(t.name)).find((x) => x.id === rid);
    if (row) break;
    await new Promise((res) => setTimeout(res, 100));
  }
  assert.ok(row, `no ledger row for ${rid} within 10 s`);
  assert.equal(row.outcome, 'cancelled', JSON.stringify(row));
  assert.equal(row.error_class, 'client_closed', JSON.stringify(row));
  assert.equal(row.stream, true);
  assert.equal(row.model, LLAMA);
  assert.equal(row.key_id, t.key.id);
  assert.ok(row.completion_tokens >= 3 && row.completion_tokens < maxTokens, JSON.stringify(row));
});
