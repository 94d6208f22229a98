// A stored multi-turn conversation with the OpenAI Node SDK: turn one stores, turns two and three send only
// the new input with `previous_response_id` (streamed, then not), then `retrieve`, `inputItems.list`, a
// background answer streamed again with `retrieve(id, {stream: true, starting_after})`, and `delete`.
// Input on stdin: {"baseURL", "apiKey", "model"}; output on stdout: {"turns", "retrieved", "items",
// "resumed", "deletedThen"} or {"error"}.
const OpenAI = require('openai');

async function main() {
  const input = JSON.parse(require('fs').readFileSync(0, 'utf8'));
  const client = new OpenAI({ baseURL: input.baseURL, apiKey: input.apiKey, maxRetries: 0, timeout: 30000 });
  const model = input.model;
  const first = await client.responses.create({ model, input: 'My name is Ada.', store: true });
  const stream = client.responses.stream({ model, input: 'What is my name?', previous_response_id: first.id });
  for await (const _ of stream) { /* accumulated by the helper */ }
  const second = await stream.finalResponse();
  const third = await client.responses.create({ model, input: 'Thanks.', previous_response_id: second.id });
  const retrieved = await client.responses.retrieve(third.id);
  const items = [];
  for await (const item of client.responses.inputItems.list(third.id, { order: 'asc' })) items.push(item);
  const background = await client.responses.create({ model, input: 'Once more.', background: true });
  const resumed = [];
  const again = await client.responses.retrieve(background.id, { stream: true, starting_after: 2 });
  for await (const event of again) resumed.push(event);
  await client.responses.delete(third.id);
  let deletedThen = null;
  try { await client.responses.retrieve(third.id); } catch (error) { deletedThen = error.status; }
  process.stdout.write(JSON.stringify({
    turns: [first, second, third].map((r) => ({ id: r.id, previous: r.previous_response_id, text: r.output_text })),
    retrieved: { id: retrieved.id, text: retrieved.output_text }, items, queued: background.status,
    resumed: resumed.map((e) => ({ type: e.type, seq: e.sequence_number })), deletedThen,
  }));
}

main().catch((error) => {
  process.stdout.write(JSON.stringify({ error: String(error && error.message || error) }));
  process.exit(1);
});
