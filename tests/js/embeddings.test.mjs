// Embeddings through the SDK. Without `encoding_format` the JS SDK asks for base64 and decodes it
// into floats itself; with `encoding_format: 'float'` it passes the JSON arrays through.

import assert from 'node:assert/strict';

import { LLAMA, QWEN, useDemo } from './support.mjs';

const demo = useDemo();

function assertVector(v, where) {
  assert.ok(Array.isArray(v), `${where}: not an array: ${typeof v}`);
  assert.ok(v.length > 0, `${where}: empty vector`);
  for (const x of v) assert.ok(typeof x === 'number' && Number.isFinite(x), `${where}: not a finite number: ${x}`);
  assert.ok(v.some((x) => x !== 0), `${where}: all zeros`);
}

/** A fetch for the SDK that records each request body and response body. */
function recordingFetch(log) {
  return async (url, init) => {
    const resp = await fetch(url, init);
    log.push({ request: JSON.parse(init.body), response: await resp.clone().json() });
    return resp;
  };
}

demo.test('embeddings.create with a string input (SDK default: base64 on the wire)', async () => {
  const wire = [];
  const client = demo.makeClient(demo.info.key, { fetch: recordingFetch(wire) });
  const resp = await client.embeddings.create({ model: LLAMA, input: 'hello world' });
  assert.equal(wire.length, 1);
  assert.equal(wire[0].request.encoding_format, 'base64', 'the SDK asks for base64 when the caller does not say');
  assert.equal(typeof wire[0].response.data[0].embedding, 'string', 'the gateway answered base64');
  assert.equal(resp.object, 'list');
  assert.equal(resp.model, LLAMA);
  assert.equal(resp.data.length, 1);
  assert.equal(resp.data[0].index, 0);
  assert.equal(resp.data[0].object, 'embedding');
  assertVector(resp.data[0].embedding, 'data[0]');
  assert.ok(Number.isInteger(resp.usage.prompt_tokens) && resp.usage.prompt_tokens > 0, JSON.stringify(resp.usage));
  assert.equal(resp.usage.total_tokens, resp.usage.prompt_tokens, JSON.stringify(resp.usage));
});

demo.test('embeddings.create: base64 (decoded by the SDK) and float give the same vector', async () => {
  const viaBase64 = await demo.client.embeddings.create({ model: QWEN, input: 'same text' });
  const viaFloat = await demo.client.embeddings.create({ model: QWEN, input: 'same text', encoding_format: 'float' });
  assertVector(viaFloat.data[0].embedding, 'float');
  assert.equal(viaBase64.data[0].embedding.length, viaFloat.data[0].embedding.length);
  // base64 carries float32; the JSON floats are the same float32 values printed in decimal.
  viaBase64.data[0].embedding.forEach((x, i) => {
    assert.ok(Math.abs(x - viaFloat.data[0].embedding[i]) <= 1e-6 * Math.max(1, Math.abs(x)),
      `component ${i}: base64 ${x} vs float ${viaFloat.data[0].embedding[i]}`);
  });
  assert.deepEqual(viaBase64.usage, viaFloat.usage);
});

for (const encoding of ['float', undefined]) {
  demo.test(`embeddings.create with an array input (encoding_format ${encoding ?? 'unset'})`, async () => {
    const inputs = ['a', 'b c', 'd e f'];
    const body = { model: QWEN, input: inputs };
    if (encoding) body.encoding_format = encoding;
    const resp = await demo.client.embeddings.create(body);
    assert.deepEqual(resp.data.map((d) => d.index), [0, 1, 2]);
    resp.data.forEach((d, i) => assertVector(d.embedding, `data[${i}]`));
    const dims = new Set(resp.data.map((d) => d.embedding.length));
    assert.equal(dims.size, 1, `vectors of different lengths: ${[...dims]}`);
    assert.notDeepEqual(resp.data[0].embedding, resp.data[1].embedding, 'different inputs, same vector');
    assert.ok(resp.usage.prompt_tokens >= inputs.length, JSON.stringify(resp.usage));
    assert.equal(resp.usage.total_tokens, resp.usage.prompt_tokens, JSON.stringify(resp.usage));
    // The single-string call for the first input yields the same vector as its batch entry.
    const single = await demo.client.embeddings.create({ ...body, input: inputs[0] });
    assert.equal(single.data[0].embedding.length, resp.data[0].embedding.length);
    assert.deepEqual(single.data[0].embedding, resp.data[0].embedding);
  });
}
