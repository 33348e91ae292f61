// Chat completions through the SDK: plain, streamed (with and without include_usage), and the
// SDK's own streaming helper (chat.completions.stream() / finalChatCompletion()).

import assert from 'node:assert/strict';

import { DEMO_MODELS, LLAMA, QWEN, collect, useDemo } from './support.mjs';

const demo = useDemo();
const MESSAGES = [{ role: 'user', content: 'Say something short.' }];

function assertUsage(usage, completionTokens, where) {
  assert.ok(usage, `${where}: no usage`);
  assert.equal(usage.completion_tokens, completionTokens, `${where}: ${JSON.stringify(usage)}`);
  assert.ok(Number.isInteger(usage.prompt_tokens) && usage.prompt_tokens > 0, `${where}: ${JSON.stringify(usage)}`);
  assert.equal(usage.total_tokens, usage.prompt_tokens + usage.completion_tokens, `${where}: ${JSON.stringify(usage)}`);
}

for (const model of DEMO_MODELS) {
  demo.test(`chat.completions.create plain (${model})`, async () => {
    const { data: resp, response, request_id } = await demo.client.chat.completions
      .create({ model, messages: MESSAGES, max_tokens: 5 })
      .withResponse();
    assert.equal(response.status, 200);
    assert.match(response.headers.get('content-type') ?? '', /^application\/json/);
    assert.ok(request_id, 'the SDK exposes x-request-id as request_id');
    assert.equal(resp._request_id, request_id);
    assert.equal(typeof resp.id, 'string');
    assert.ok(resp.id.length > 0, JSON.stringify(resp));
    assert.equal(resp.object, 'chat.completion');
    assert.equal(resp.model, model);
    assert.equal(typeof resp.created, 'number');
    assert.equal(resp.choices.length, 1, JSON.stringify(resp));
    const [choice] = resp.choices;
    assert.equal(choice.index, 0);
    assert.equal(choice.message.role, 'assistant');
    assert.equal(typeof choice.message.content, 'string');
    assert.ok(choice.message.content.trim().length > 0, JSON.stringify(resp));
    assert.equal(choice.finish_reason, 'length', 'max_tokens=5 cut the answer');
    assertUsage(resp.usage, 5, 'chat usage');
  });
}

demo.test('chat stream with include_usage: chunks, text, and a final usage chunk', async () => {
  const maxTokens = 4;
  const stream = await demo.client.chat.completions.create({
    model: QWEN,
    messages: MESSAGES,
    max_tokens: maxTokens,
    stream: true,
    stream_options: { include_usage: true },
  });
  const chunks = await collect(stream);
  assert.ok(chunks.length >= 2, `only ${chunks.length} chunks`);
  const last = chunks.at(-1);
  assert.deepEqual(last.choices, [], `the usage chunk has no choices: ${JSON.stringify(last)}`);
  assertUsage(last.usage, maxTokens, 'final usage chunk');
  const ids = new Set(chunks.map((c) => c.id));
  assert.equal(ids.size, 1, `one id for the whole stream: ${[...ids]}`);
  for (const c of chunks) {
    assert.equal(c.object, 'chat.completion.chunk', JSON.stringify(c));
    assert.equal(c.model, QWEN, JSON.stringify(c));
  }
  for (const c of chunks.slice(0, -1)) {
    assert.ok(c.usage === undefined || c.usage === null, `usage before the last chunk: ${JSON.stringify(c)}`);
    assert.equal(c.choices.length, 1, JSON.stringify(c));
  }
  const content = chunks.slice(0, -1).filter((c) => c.choices[0].delta.content);
  assert.equal(content.length, maxTokens, 'one content chunk per token');
  const text = content.map((c) => c.choices[0].delta.content).join('');
  assert.ok(text.trim().length > 0, 'streamed text is empty');
  assert.equal(chunks.at(-2).choices[0].finish_reason, 'length', JSON.stringify(chunks.at(-2)));
});

demo.test('chat stream without include_usage shows no usage (the injected one is stripped)', async () => {
  const maxTokens = 6;
  const chunks = await collect(await demo.client.chat.completions.create({
    model: LLAMA, messages: MESSAGES, max_tokens: maxTokens, stream: true,
  }));
  assert.ok(chunks.length > 0, 'no chunks');
  for (const c of chunks) {
    assert.equal(c.object, 'chat.completion.chunk');
    assert.ok(c.usage === undefined || c.usage === null, `usage leaked to a client that did not ask: ${JSON.stringify(c)}`);
    assert.ok(c.choices.length > 0, `a chunk with empty choices (the injected usage chunk) leaked: ${JSON.stringify(c)}`);
  }
  const content = chunks.filter((c) => c.choices[0].delta.content);
  assert.equal(content.length, maxTokens);
  assert.ok(content.map((c) => c.choices[0].delta.content).join('').trim().length > 0);
  assert.ok(chunks.at(-1).choices[0].finish_reason, 'the last chunk carries finish_reason');
});

demo.test('SDK helper chat.completions.stream(): events, finalChatCompletion(), totalUsage()', async () => {
  const maxTokens = 5;
  const runner = demo.client.chat.completions.stream({
    model: LLAMA,
    messages: MESSAGES,
    max_tokens: maxTokens,
    stream_options: { include_usage: true },
  });
  const deltas = [];
  let contentDone = null;
  runner.on('content', (delta) => deltas.push(delta));
  runner.on('content.done', (ev) => { contentDone = ev.content; });
  let chunkCount = 0;
  const chunkIds = new Set();
  for await (const chunk of runner) {
    assert.equal(chunk.object, 'chat.completion.chunk');
    chunkIds.add(chunk.id);
    chunkCount += 1;
  }
  // The helper validates what it accumulates (id, role, finish_reason per choice, no unknown
  // delta fields) and throws if the stream lacks any of it.
  const final = await runner.finalChatCompletion();
  assert.ok(chunkCount >= maxTokens + 1, `only ${chunkCount} chunks`);
  assert.equal(final.object, 'chat.completion');
  assert.equal(final.model, LLAMA);
  assert.equal(chunkIds.size, 1, `one id for the whole stream: ${[...chunkIds]}`);
  assert.equal(final.id, [...chunkIds][0]);
  assert.equal(final.choices.length, 1);
  assert.equal(final.choices[0].message.role, 'assistant');
  assert.equal(final.choices[0].finish_reason, 'length');
  const text = final.choices[0].message.content;
  assert.ok(typeof text === 'string' && text.trim().length > 0, JSON.stringify(final));
  assert.equal(deltas.length, maxTokens, `content events: ${JSON.stringify(deltas)}`);
  assert.equal(deltas.join(''), text, 'the content events add up to the final message');
  assert.equal(contentDone, text);
  assert.equal(await runner.finalContent(), text);
  assertUsage(final.usage, maxTokens, 'finalChatCompletion().usage');
  assert.deepEqual(await runner.totalUsage(), {
    prompt_tokens: final.usage.prompt_tokens,
    completion_tokens: final.usage.completion_tokens,
    total_tokens: final.usage.total_tokens,
  });
});

demo.test('stream abandoned early: break ends the request cleanly and the client stays usable', async () => {
  const stream = await demo.client.chat.completions.create({
    model: LLAMA, messages: MESSAGES, max_tokens: 400, stream: true,
  });
  let seen = 0;
  for await (const c of stream) {
    if (c.choices[0]?.delta.content) seen += 1;
    if (seen === 3) break;
  }
  assert.equal(seen, 3);
  const again = await demo.client.chat.completions.create({ model: LLAMA, messages: MESSAGES, max_tokens: 1 });
  assertUsage(again.usage, 1, 'request after an abandoned stream');
});
