// Loads a GGUF file in llama.cpp (node-llama-cpp's bundled build, CPU only) and writes the raw logits of every
// position of the given token sequences as JSON: { vocab, logits: [seq][pos][vocab] }.
// Usage: node eval.mjs <model.gguf> <tokens.json: [[id, ...], ...]> <out.json> [threads]
// F32 KV cache and no flash attention: with the default F16 cache near-tie expert routing flips (notes).
import fs from "node:fs";
import { getLlama } from "node-llama-cpp";

const [modelPath, tokensPath, outPath, threadsArg] = process.argv.slice(2);
if (!modelPath || !tokensPath || !outPath) {
  console.error("usage: node eval.mjs <model.gguf> <tokens.json> <out.json> [threads]");
  process.exit(2);
}
const sequences = JSON.parse(fs.readFileSync(tokensPath, "utf8"));
const threads = Number(threadsArg ?? 2);

const llama = await getLlama({ gpu: false, build: "never", logLevel: "error" });
const model = await llama.loadModel({ modelPath });
const vocab = model.tokens.count ?? model.fileInfo?.metadata?.tokenizer?.ggml?.tokens?.length;
const longest = Math.max(...sequences.map((s) => s.length));
const result = { vocab, logits: [] };
for (const seq of sequences) {
  // a fresh context per sequence: no state carried between sequences
  const context = await model.createContext({
    contextSize: Math.max(longest, 32), batchSize: Math.max(longest, 32), threads, flashAttention: false,
    experimentalKvCacheKeyType: "F32", experimentalKvCacheValueType: "F32",
  });
  const sequence = context.getSequence();
  const outputs = await sequence.controlledEvaluate(seq.map((t) => [t, { generateNext: { logits: true } }]));
  const rows = [];
  for (const out of outputs) {
    const row = new Array(vocab).fill(0);
    for (const [id, logit] of out.next.logits) row[id] = logit;
    rows.push(row);
  }
  result.logits.push(rows);
  await context.dispose();
}
fs.writeFileSync(outPath, JSON.stringify(result));
await model.dispose();
await llama.dispose();
