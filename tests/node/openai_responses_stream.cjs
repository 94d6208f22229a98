// One streamed Responses call with the OpenAI Node SDK's `responses.stream()` helper, which accumulates
// the events into a Response (and throws on a stream it cannot follow). Input on stdin:
// {"baseURL", "apiKey", "request"}; output on stdout: {"events": [...], "final": Response} or {"error"}.
const OpenAI = require('openai');

async function main() {
  const input = JSON.parse(require('fs').readFileSync(0, 'utf8'));
  const client = new OpenAI({ baseURL: input.baseURL, apiKey: input.apiKey, maxRetries: 0, timeout: 30000 });
  const events = [];
  const stream = client.responses.stream(input.request);
  for await (const event of stream) events.push(event);
  const final = await stream.finalResponse();
  process.stdout.write(JSON.stringify({ events, final }));
}

main().catch((error) => {
  process.stdout.write(JSON.stringify({ error: String(error && error.message || error) }));
  process.exit(1);
});
