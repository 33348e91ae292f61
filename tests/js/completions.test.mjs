// Legacy completions (plain and streamed) through the SDK.

import assert from 'node:assert/strict';

import { LLAMA, QWEN, collect, useDemo } from './support.mjs';

const demo = useDemo();
const PROMPT = 'Once upon a time';

function assertUsage(usage, completionTokens, where) {
  assert.ok(usage, `${where}: no usage`);
  assert.equal(usage.completion_tokens, completionTokens, `${where}: ${JSON.stringify(usage)}`);
  assert.ok(Number.isInteger(usage.prompt_tokens) && usage.prompt_tokens > 0, `${where}: ${JSON.stringify(usage)}`);
  assert.equal(usage.total_tokens, usage.prompt_tokens + usage.completion_tokens, `${where}: ${JSON.stringify(usage)}`);
}

demo.test('completions.create plain', async () => {
  const resp = await demo.client.completions.create({ model: QWEN, prompt: PROMPT, max_tokens: 3 });
  assert.equal(resp.object, 'text_completion');
  assert.equal(resp.model, QWEN);
  assert.ok(typeof resp.id === 'string' && resp.id.length > 0, JSON.stringify(resp));
  assert.equal(resp.choices.length, 1);
  assert.equal(resp.choices[0].index, 0);
  assert.ok(typeof resp.choices[0].text === 'string' && resp.choices[0].text.trim().length > 0, JSON.stringify(resp));
  assert.equal(resp.choices[0].finish_reason, 'length');
  assertUsage(resp.usage, 3, 'completions usage');
});

demo.test('completions.create streamed, without usage', async () => {
  const maxTokens = 5;
  const chunks = await collect(await demo.client.completions.create({
    model: LLAMA, prompt: PROMPT, max_tokens: maxTokens, stream: true,
  }));
  assert.ok(chunks.length > 0, 'no chunks');
  for (const c of chunks) {
    assert.equal(c.object, 'text_completion', JSON.stringify(c));
    assert.equal(c.model, LLAMA);
    assert.ok(c.usage === undefined || c.usage === null, `usage leaked: ${JSON.stringify(c)}`);
    assert.ok(c.choices.length > 0, `empty choices leaked: ${JSON.stringify(c)}`);
  }
  const text = chunks.filter((c) => c.choices[0].text);
  assert.equal(text.length, maxTokens, 'one text chunk per token');
  assert.ok(text.map((c) => c.choices[0].text).join('').trim().length > 0);
  assert.equal(chunks.at(-1).choices[0].finish_reason, 'length');
});

demo.test('completions.create streamed with include_usage: final usage chunk', async () => {
  const maxTokens = 3;
  const chunks = await collect(await demo.client.completions.create({
    model: LLAMA, prompt: PROMPT, max_tokens: maxTokens, stream: true, stream_options: { include_usage: true },
  }));
  assert.ok(chunks.length >= 2, `only ${chunks.length} chunks`);
  const last = chunks.at(-1);
  assert.deepEqual(last.choices, [], JSON.stringify(last));
  assertUsage(last.usage, maxTokens, 'final usage chunk');
  const text = chunks.slice(0, -1).filter((c) => c.choices[0].text);
  assert.equal(text.length, maxTokens);
  assert.ok(text.map((c) => c.choices[0].text).join('').trim().length > 0);
});
