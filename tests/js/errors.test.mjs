// Gateway errors reach the SDK as the right error classes, with OpenAI-shaped bodies
// (`{"error": {"message", "type", "param", "code"}}`, which the SDK hands over as `err.error`).
// Every client has maxRetries: 0, so a retryable status is seen once, as is.

import assert from 'node:assert/strict';

import OpenAI from 'openai';

import { LLAMA, QWEN, rawPost, uniqueName, useDemo } from './support.mjs';

const demo = useDemo();
const MESSAGES = [{ role: 'user', content: 'hi' }];

/** Runs `fn`, which must reject with an instance of `cls`; returns the error. */
async function expectError(cls, fn) {
  let err;
  try {
    const got = await fn();
    assert.fail(`expected ${cls.name}, got a result: ${JSON.stringify(got).slice(0, 300)}`);
  } catch (e) {
    if (e instanceof assert.AssertionError) throw e;
    err = e;
  }
  assert.ok(err instanceof cls, `expected ${cls.name}, got ${err?.constructor?.name}: ${err?.message}`);
  return err;
}

/** Status, the OpenAI error shape, and what the SDK parsed out of it. */
function assertOpenAIError(err, status, type, code) {
  assert.equal(err.status, status, `status ${err.status}, want ${status}: ${err.message}`);
  const body = err.error;
  assert.ok(body && typeof body === 'object', `no OpenAI-shaped {"error": {...}} body: ${err.message}`);
  for (const field of ['message', 'type', 'param', 'code']) {
    assert.ok(field in body, `error body lacks \`${field}\`: ${JSON.stringify(body)}`);
  }
  assert.ok(typeof body.message === 'string' && body.message.length > 0, JSON.stringify(body));
  assert.equal(body.type, type, JSON.stringify(body));
  if (code !== undefined) assert.equal(body.code, code, JSON.stringify(body));
  assert.ok(body.code === null || typeof body.code === 'string', `code must be a string or null: ${JSON.stringify(body)}`);
  assert.ok(body.param === null || typeof body.param === 'string', `param must be a string or null: ${JSON.stringify(body)}`);
  // The SDK copies the fields onto the error and builds its message from the body's message.
  assert.equal(err.type, body.type);
  assert.equal(err.code, body.code);
  assert.equal(err.param, body.param);
  assert.equal(err.message, `${status} ${body.message}`);
  assert.ok(err.requestID, 'the error carries the x-request-id of its ledger row');
  return body;
}

for (const key of ['sk-not-a-fairgate-key', `fgk_aaaaaaaaaaaa_${'A'.repeat(40)}`, 'fgk_']) {
  demo.test(`bad key ${JSON.stringify(key.slice(0, 16))} -> AuthenticationError 401`, async () => {
    const err = await expectError(OpenAI.AuthenticationError, () =>
      demo.makeClient(key).chat.completions.create({ model: LLAMA, messages: MESSAGES, max_tokens: 1 }));
    assertOpenAIError(err, 401, 'authentication_error', 'invalid_api_key');
    assert.match(err.headers.get('www-authenticate') ?? '', /^bearer/i);
  });
}

demo.test('wrong secret for an existing key id -> AuthenticationError 401 (models.list)', async () => {
  const tenant = await demo.admin.createTenant(uniqueName());
  const key = await demo.admin.createKey(tenant.name);
  assert.ok(key.key.startsWith(`fgk_${key.id}_`), 'key format is fgk_<id>_<secret>');
  const err = await expectError(OpenAI.AuthenticationError, () =>
    demo.makeClient(`fgk_${key.id}_${'B'.repeat(40)}`).models.list());
  assertOpenAIError(err, 401, 'authentication_error', 'invalid_api_key');
});

demo.test('unknown model -> NotFoundError 404 model_not_found', async () => {
  const err = await expectError(OpenAI.NotFoundError, () =>
    demo.client.chat.completions.create({ model: 'no-such-model', messages: MESSAGES, max_tokens: 1 }));
  const body = assertOpenAIError(err, 404, 'invalid_request_error', 'model_not_found');
  assert.equal(body.param, 'model');
  assert.ok(body.message.includes('no-such-model'), body.message);
});

demo.test('unknown model on embeddings and completions -> NotFoundError 404', async () => {
  for (const call of [
    () => demo.client.embeddings.create({ model: 'no-such-model', input: 'x' }),
    () => demo.client.completions.create({ model: 'no-such-model', prompt: 'x', max_tokens: 1 }),
  ]) {
    const err = await expectError(OpenAI.NotFoundError, call);
    assertOpenAIError(err, 404, 'invalid_request_error', 'model_not_found');
  }
});

demo.test('model outside the key scope -> PermissionDeniedError 403', async () => {
  const tenant = await demo.admin.createTenant(uniqueName());
  const key = await demo.admin.createKey(tenant.name, { models: [QWEN], name: 'qwen-only' });
  const c = demo.makeClient(key.key);
  assert.equal((await c.chat.completions.create({ model: QWEN, messages: MESSAGES, max_tokens: 1 })).usage.completion_tokens, 1);
  const err = await expectError(OpenAI.PermissionDeniedError, () =>
    c.chat.completions.create({ model: LLAMA, messages: MESSAGES, max_tokens: 1 }));
  const body = assertOpenAIError(err, 403, 'permission_error', 'model_not_allowed');
  assert.equal(body.param, 'model');
});

// Requests the gateway itself refuses as malformed: [what, body overrides, param named].
const BAD_REQUESTS = [
  ['max_tokens: -1', { max_tokens: -1 }, 'max_tokens'],
  ['max_tokens: "five"', { max_tokens: 'five' }, 'max_tokens'],
  ['messages: a string', { messages: 'hi' }, 'messages'],
  ['messages: []', { messages: [] }, 'messages'],
  ['a message without role', { messages: [{ content: 'hi' }] }, 'messages[0].role'],
];
for (const [what, override, param] of BAD_REQUESTS) {
  demo.test(`malformed request (${what}) -> BadRequestError 400`, async () => {
    const err = await expectError(OpenAI.BadRequestError, () =>
      demo.client.chat.completions.create({ model: LLAMA, messages: MESSAGES, max_tokens: 2, ...override }));
    const body = assertOpenAIError(err, 400, 'invalid_request_error');
    assert.ok(`${body.param ?? ''} ${body.message}`.includes(param), `error does not name ${param}: ${JSON.stringify(body)}`);
  });
}

// Requests that pass the gateway's own checks but that the backend (vLLM, here the simulator)
// refuses: vLLM's error object ({"type":"BadRequestError","code":400}) reaches the SDK in
// OpenAI's shape.
for (const [what, call] of [
  ['chat max_tokens: 0', (c) => c.chat.completions.create({ model: LLAMA, messages: MESSAGES, max_tokens: 0 })],
  ['embeddings encoding_format "weird"', (c) => c.embeddings.create({ model: QWEN, input: 'x', encoding_format: 'weird' })],
]) {
  demo.test(`backend-refused request (${what}) -> BadRequestError with an OpenAI-shaped body`, async () => {
    const err = await expectError(OpenAI.BadRequestError, () => call(demo.client));
    assertOpenAIError(err, 400, 'invalid_request_error');
  });
}

demo.test('malformed JSON (raw request, not the SDK) -> 400 OpenAI-shaped', async () => {
  const r = await rawPost(`${demo.info.base_url}/chat/completions`, demo.info.key, '{"model": "sim-llama", "messages": [');
  assert.equal(r.status, 400, r.text);
  assert.match(r.headers.get('content-type') ?? '', /^application\/json/);
  assert.equal(r.json?.error?.type, 'invalid_request_error', r.text);
  assert.ok(r.json.error.message, r.text);
});

demo.test('upstream failure -> InternalServerError 502 (plain and stream request)', async () => {
  for (const stream of [false, true]) {
    const err = await expectError(OpenAI.InternalServerError, () => demo.client.chat.completions.create(
      { model: LLAMA, messages: MESSAGES, max_tokens: 2, stream },
      { headers: { 'x-sim-fault': 'error' } },
    ));
    assertOpenAIError(err, 502, 'server_error', 'upstream_status');
  }
});

demo.test('a stream that breaks after it started raises APIError with the error event', async () => {
  const stream = await demo.client.chat.completions.create(
    { model: LLAMA, messages: MESSAGES, max_tokens: 20, stream: true },
    { headers: { 'x-sim-fault': 'abort-after=3' } },
  );
  const got = [];
  const err = await expectError(OpenAI.APIError, async () => {
    for await (const c of stream) if (c.choices[0]?.delta.content) got.push(c.choices[0].delta.content);
  });
  assert.equal(got.length, 3, `content chunks before the break: ${JSON.stringify(got)}`);
  assert.equal(err.status, undefined, 'headers were already sent: no status on the error');
  assert.ok(!(err instanceof OpenAI.InternalServerError));
  assert.equal(err.error?.type, 'server_error', JSON.stringify(err.error));
  assert.equal(err.type, 'server_error');
  assert.ok(typeof err.error.message === 'string' && err.error.message.length > 0);
});

// A body over the limit gets its 413 every time: the gateway reads (and drops) the rest of the
// body before answering, so a client still sending does not get a broken pipe instead. Ten tries
// make a regression near certain to show.
demo.test('body over the limit -> APIError 413 body_too_large, every time', async () => {
  const c = demo.makeClient(demo.info.key);
  const big = 'x'.repeat(9 * 1024 * 1024); // default limit: 8 MiB
  const outcomes = [];
  for (let i = 0; i < 10; i++) {
    try {
      await c.chat.completions.create({ model: LLAMA, messages: [{ role: 'user', content: big }], max_tokens: 1 });
      outcomes.push('200');
    } catch (e) {
      outcomes.push(e instanceof OpenAI.APIConnectionError
        ? `APIConnectionError(${e.cause?.cause?.code ?? e.cause?.code ?? e.cause?.message})`
        : `${e.constructor.name} ${e.status} ${e.code}`);
    }
  }
  const other = outcomes.filter((o) => o !== 'APIError 413 body_too_large');
  assert.equal(other.length, 0, `${other.length} of 10 tries did not get the 413: ${outcomes.join(', ')}`);
});

demo.test('body over the limit: the client keeps working afterwards', async () => {
  const c = demo.makeClient(demo.info.key);
  const big = 'x'.repeat(9 * 1024 * 1024);
  const err = await expectError(OpenAI.APIError, () =>
    c.chat.completions.create({ model: LLAMA, messages: [{ role: 'user', content: big }], max_tokens: 1 }));
  assert.equal(err.status, 413, `${err.constructor.name}: ${err.message}`);
  const ok = await c.chat.completions.create({ model: LLAMA, messages: MESSAGES, max_tokens: 1 });
  assert.equal(ok.usage.completion_tokens, 1);
});
