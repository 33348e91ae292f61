// GET /v1/models through the SDK, with full and model-scoped keys.

import assert from 'node:assert/strict';
import OpenAI from 'openai';

import { DEMO_MODELS, QWEN, LLAMA, useDemo, uniqueName } from './support.mjs';

const demo = useDemo();

demo.test('models.list() lists exactly the models of the demo ready line', async () => {
  assert.deepEqual([...demo.info.models].sort(), [...DEMO_MODELS].sort(), 'the demo serves sim-llama and sim-qwen');
  const page = await demo.client.models.list();
  const ids = page.data.map((m) => m.id);
  assert.deepEqual([...ids].sort(), [...demo.info.models].sort());
  for (const m of page.data) {
    assert.equal(m.object, 'model', JSON.stringify(m));
    assert.equal(typeof m.created, 'number', JSON.stringify(m));
    assert.equal(typeof m.owned_by, 'string', JSON.stringify(m));
  }
  // The SDK's async iteration over the page yields the same models.
  const iterated = [];
  for await (const m of demo.client.models.list()) iterated.push(m.id);
  assert.deepEqual(iterated, ids);
});

demo.test('a model-scoped key lists only its models', async () => {
  const tenant = await demo.admin.createTenant(uniqueName());
  const scoped = await demo.admin.createKey(tenant.name, { models: [QWEN], name: 'scoped' });
  const ids = (await demo.makeClient(scoped.key).models.list()).data.map((m) => m.id);
  assert.deepEqual(ids, [QWEN]);
  const all = await demo.admin.createKey(tenant.name, { name: 'all' });
  const allIds = (await demo.makeClient(all.key).models.list()).data.map((m) => m.id);
  assert.deepEqual([...allIds].sort(), [...DEMO_MODELS].sort());
});

demo.test('models.retrieve() returns a served model, and 404 for others', async () => {
  const m = await demo.client.models.retrieve(LLAMA);
  assert.equal(m.id, LLAMA);
  assert.equal(m.object, 'model');
  await assert.rejects(() => demo.client.models.retrieve('no-such-model'), (e) => {
    assert.ok(e instanceof OpenAI.NotFoundError, `${e.constructor.name}: ${e.message}`);
    assert.equal(e.code, 'model_not_found');
    return true;
  });
});
