// The two-turn tool loop by hand with the OpenAI Node SDK, streaming: ask, run the `write_to_file`
// tool the model calls (write the file), send the result back, print the final answer.
// Input on stdin: {"baseURL", "apiKey", "model", "api": "chat" | "responses", "prompt", "extra"};
// output on stdout: {"final": text, "calls": n} or {"error": message}.
const fs = require('fs');
const OpenAI = require('openai');

const PARAMETERS = {
  type: 'object',
  properties: { path: { type: 'string' }, content: { type: 'string' } },
  required: ['path', 'content'],
};

function writeToFile(name, args) {
  if (name !== 'write_to_file') throw new Error(`unexpected tool ${name}`);
  const { path, content } = JSON.parse(args);
  fs.writeFileSync(path, content);
  return `Wrote ${content.length} characters to ${path}.`;
}

async function chat(client, input) {
  const tools = [{ type: 'function', function: { name: 'write_to_file', description: 'Write a file', parameters: PARAMETERS } }];
  const messages = [{ role: 'user', content: input.prompt }];
  let calls = 0;
  for (let turn = 0; turn < 4; turn++) {
    const stream = await client.chat.completions.create({
      model: input.model, messages, tools, stream: true, stream_options: { include_usage: true }, ...input.extra,
    });
    let content = '';
    const toolCalls = [];
    for await (const chunk of stream) {
      for (const choice of chunk.choices || []) {
        content += choice.delta.content || '';
        for (const piece of choice.delta.tool_calls || []) {
          const call = (toolCalls[piece.index] ||= { id: '', name: '', arguments: '' });
          if (piece.id) call.id = piece.id;
          if (piece.function && piece.function.name) call.name = piece.function.name;
          if (piece.function && piece.function.arguments) call.arguments += piece.function.arguments;
        }
      }
    }
    if (toolCalls.length === 0) return { final: content, calls };
    messages.push({
      role: 'assistant', content: content || null,
      tool_calls: toolCalls.map((c) => ({ id: c.id, type: 'function', function: { name: c.name, arguments: c.arguments } })),
    });
    for (const call of toolCalls) {
      calls += 1;
      messages.push({ role: 'tool', tool_call_id: call.id, content: writeToFile(call.name, call.arguments) });
    }
  }
  throw new Error('no final answer after 4 turns');
}

async function responses(client, input) {
  const tools = [{ type: 'function', name: 'write_to_file', description: 'Write a file', parameters: PARAMETERS, strict: false }];
  const items = [{ role: 'user', content: input.prompt }];
  let calls = 0;
  for (let turn = 0; turn < 4; turn++) {
    const stream = client.responses.stream({ model: input.model, input: items, tools, ...input.extra });
    const response = await stream.finalResponse();
    const toolCalls = response.output.filter((item) => item.type === 'function_call');
    if (toolCalls.length === 0) return { final: response.output_text, calls };
    items.push(...response.output);
    for (const call of toolCalls) {
      calls += 1;
      items.push({ type: 'function_call_output', call_id: call.call_id, output: writeToFile(call.name, call.arguments) });
    }
  }
  throw new Error('no final answer after 4 turns');
}

async function main() {
  const input = JSON.parse(fs.readFileSync(0, 'utf8'));
  const client = new OpenAI({ baseURL: input.baseURL, apiKey: input.apiKey, maxRetries: 0, timeout: 60000 });
  const result = await (input.api === 'responses' ? responses : chat)(client, input);
  process.stdout.write(JSON.stringify(result));
}

main().catch((error) => {
  process.stdout.write(JSON.stringify({ error: String((error && error.message) || error) }));
  process.exit(1);
});
