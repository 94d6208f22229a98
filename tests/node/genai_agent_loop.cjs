// The two-turn tool loop by hand with Google's Node SDK (@google/genai), streaming, through Gemini's API:
// ask, run the `write_to_file` function the model calls (write the file), send the model's content back as it
// came (thought signatures included) with a functionResponse part per call, print the final answer.
// Input on stdin: {"baseUrl", "apiKey", "model", "config"}; output on stdout: {"final": text, "calls": n}
// or {"error": message}.
const fs = require('fs');
const { GoogleGenAI } = require('@google/genai');

const PARAMETERS = {
  type: 'object',
  properties: { path: { type: 'string' }, content: { type: 'string' } },
  required: ['path', 'content'],
};

function writeToFile(call) {
  if (call.name !== 'write_to_file') throw new Error(`unexpected function ${call.name}`);
  fs.writeFileSync(call.args.path, call.args.content);
  return `Wrote ${call.args.content.length} characters to ${call.args.path}.`;
}

async function loop(input) {
  const ai = new GoogleGenAI({ apiKey: input.apiKey, httpOptions: { baseUrl: input.baseUrl } });
  const config = {
    ...input.config,
    tools: [{ functionDeclarations: [{ name: 'write_to_file', description: 'Write a file', parametersJsonSchema: PARAMETERS }] }],
  };
  const contents = [{ role: 'user', parts: [{ text: input.prompt }] }];
  let calls = 0;
  for (let turn = 0; turn < 4; turn++) {
    const parts = [];
    for await (const chunk of await ai.models.generateContentStream({ model: input.model, contents, config })) {
      const content = chunk.candidates && chunk.candidates[0] && chunk.candidates[0].content;
      parts.push(...((content && content.parts) || []));
    }
    const functionCalls = parts.filter((p) => p.functionCall).map((p) => p.functionCall);
    if (functionCalls.length === 0) {
      return { final: parts.filter((p) => !p.thought).map((p) => p.text || '').join(''), calls };
    }
    contents.push({ role: 'model', parts });
    contents.push({
      role: 'user',
      parts: functionCalls.map((call) => {
        calls += 1;
        return { functionResponse: { id: call.id, name: call.name, response: { output: writeToFile(call) } } };
      }),
    });
  }
  throw new Error('no final answer after 4 turns');
}

let raw = '';
process.stdin.on('data', (d) => { raw += d; });
process.stdin.on('end', async () => {
  try {
    process.stdout.write(JSON.stringify(await loop(JSON.parse(raw))));
  } catch (error) {
    process.stdout.write(JSON.stringify({ error: String((error && error.message) || error) }));
  }
});
