// A three-turn chat with the Vercel AI SDK's OpenAI provider (`ai` + `@ai-sdk/openai`: the Responses API,
// `store` on by default, earlier output sent back as `item_reference` items from turn two), the third turn
// streamed. Input on stdin: {"baseURL", "apiKey", "model"}; output on stdout: {"texts", "sent"} (the input
// item types of each request the SDK sent) or {"error"}.
const { generateText, streamText } = require('ai');
const { createOpenAI } = require('@ai-sdk/openai');

async function main() {
  const input = JSON.parse(require('fs').readFileSync(0, 'utf8'));
  const sent = [];
  const recording = async (url, init) => {
    if (init && typeof init.body === 'string') {
      const body = JSON.parse(init.body);
      sent.push((body.input || []).map((item) => item.type || item.role));
    }
    return fetch(url, init);
  };
  const provider = createOpenAI({ baseURL: input.baseURL, apiKey: input.apiKey, fetch: recording });
  const model = provider(input.model);
  const messages = [{ role: 'user', content: 'Hello' }];
  const texts = [];
  for (const question of ['Again', 'Once more']) {
    const turn = await generateText({ model, messages, maxRetries: 0 });
    texts.push(turn.text);
    messages.push(...turn.response.messages, { role: 'user', content: question });
  }
  const last = streamText({ model, messages, maxRetries: 0 });
  let streamed = '';
  for await (const piece of last.textStream) streamed += piece;
  texts.push(streamed);
  process.stdout.write(JSON.stringify({ texts, sent }));
}

main().catch((error) => {
  process.stdout.write(JSON.stringify({ error: String(error && error.stack || error) }));
  process.exit(1);
});
