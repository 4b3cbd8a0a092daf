// Helper process of `converter generate` for GGUF files (src/Converter.Runtime/Generation/LlamaCppTextGenerator.cs):
// loads the file in llama.cpp (node-llama-cpp's bundled CPU build), tokenizes or takes the prompt, and generates,
// printing one JSON line per event on stdout:
//   {"event":"prompt","tokens":[...]}                 (after the chat template, when asked)
//   {"event":"loaded","llamaCpp":"repo release","vocab":N,"contextSize":N,"threads":N}
//   {"event":"token","id":N,"text":"..."}             (text: what this token completes; "" mid-character)
//   {"event":"done","prefillSeconds":s,"decodeSeconds":s,"prefillCpuSeconds":s,"decodeCpuSeconds":s,"stopReason":"eos|max_new_tokens"}
//   (CPU seconds: the whole process's, every llama.cpp thread included)
// Usage: node generate.mjs <model.gguf> <request.json>
//   request.json: { prompt: string|null, tokens: int[]|null, chat: bool, maxNewTokens, temperature (0: greedy),
//                   topP, topK (0: off), seed|null, threads (0: one per logical processor), kvCache: "f32"|"f16",
//                   tokenizeOnly: bool }
//   f32: F32 KV cache with flash attention off (what verify uses); f16: llama.cpp's defaults.
// Exit 2 with one line on stderr for bad input (no chat template, token outside the vocabulary, ...).
import fs from "node:fs";
import os from "node:os";
import { getLlama, JinjaTemplateChatWrapper } from "node-llama-cpp";

const [modelPath, requestPath] = process.argv.slice(2);
if (!modelPath || !requestPath) {
  console.error("usage: node generate.mjs <model.gguf> <request.json>");
  process.exit(2);
}
const req = JSON.parse(fs.readFileSync(requestPath, "utf8"));
const emit = (o) => process.stdout.write(JSON.stringify(o) + "\n");
const bad = (msg) => {
  console.error(msg);
  process.exit(2);
};

const llama = await getLlama({ gpu: false, build: "never", logLevel: "error" });
const model = await llama.loadModel({ modelPath });
const vocab = model.tokens?.count ?? model.fileInfo?.metadata?.tokenizer?.ggml?.tokens?.length;

let prompt;
if (Array.isArray(req.tokens)) {
  prompt = req.tokens;
  for (const t of prompt) if (!Number.isInteger(t) || t < 0 || t >= vocab) bad(`prompt token ${t} is outside the vocabulary (0..${vocab - 1})`);
} else if (req.chat) {
  const template = model.fileInfo?.metadata?.tokenizer?.chat_template;
  if (!template) bad(`${modelPath}: --chat needs a chat template, and the GGUF file has no tokenizer.chat_template`);
  const wrapper = new JinjaTemplateChatWrapper({ template });
  const state = wrapper.generateContextState({ chatHistory: [{ type: "user", text: req.prompt }, { type: "model", response: [] }] });
  prompt = state.contextText.tokenize(model.tokenizer);
} else {
  prompt = model.tokenize(req.prompt ?? "", false);
}
if (prompt.length === 0) bad("the prompt has no tokens");
emit({ event: "prompt", tokens: Array.from(prompt) });
if (req.tokenizeOnly) process.exit(0);

const maxNew = req.maxNewTokens ?? 128;
const trainContext = model.trainContextSize ?? prompt.length + maxNew;
const contextSize = Math.min(Math.max(prompt.length + maxNew, 32), Math.max(trainContext, prompt.length + maxNew));
const contextOptions = { contextSize, batchSize: Math.max(Math.min(prompt.length, 2048), 32) };
contextOptions.threads = req.threads > 0 ? req.threads : os.availableParallelism();
if ((req.kvCache ?? "f16") === "f32") {
  contextOptions.flashAttention = false;
  contextOptions.experimentalKvCacheKeyType = "F32";
  contextOptions.experimentalKvCacheValueType = "F32";
}
const context = await model.createContext(contextOptions);
const release = llama.llamaCppRelease;
emit({ event: "loaded", llamaCpp: `${release?.repo ?? "llama.cpp"} ${release?.release ?? "?"}`, vocab, contextSize: context.contextSize, threads: contextOptions.threads });
const sequence = context.getSequence();

const options = { yieldEogToken: true };
if (req.temperature > 0) {
  options.temperature = req.temperature;
  options.topP = req.topP ?? 1;
  options.topK = req.topK ?? 0;
  if (req.seed != null) options.seed = req.seed;
} else {
  options.temperature = 0;
}

const generated = [];
let shown = "";
let stopReason = "max_new_tokens";
const cpuSeconds = () => { const u = process.cpuUsage(); return (u.user + u.system) / 1e6; };
const cpuStart = cpuSeconds();
let cpuFirst = cpuStart;
const start = process.hrtime.bigint();
let first = start;
for await (const token of sequence.evaluate(prompt, options)) {
  if (generated.length === 0) {
    first = process.hrtime.bigint();
    cpuFirst = cpuSeconds();
  }
  generated.push(token);
  // text so far, less what was shown: a token that ends mid-character waits for the next one
  const all = model.detokenize(generated, false);
  let piece = "";
  if (!all.endsWith("\uFFFD") && all.startsWith(shown)) {
    piece = all.slice(shown.length);
    shown = all;
  }
  emit({ event: "token", id: token, text: piece });
  if (model.isEogToken(token)) {
    stopReason = "eos";
    break;
  }
  if (generated.length >= maxNew) break;
}
const end = process.hrtime.bigint();
const cpuEnd = cpuSeconds();
emit({
  event: "done",
  prefillSeconds: Number(first - start) / 1e9,
  decodeSeconds: generated.length > 1 ? Number(end - first) / 1e9 : 0,
  prefillCpuSeconds: cpuFirst - cpuStart,
  decodeCpuSeconds: cpuEnd - cpuFirst,
  stopReason,
});
await context.dispose();
await model.dispose();
await llama.dispose();
