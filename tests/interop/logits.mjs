// Helper process of `converter verify` for GGUF files (src/Converter.Runtime/GgufArtifactRunner.cs): loads the
// file in llama.cpp (node-llama-cpp's bundled CPU build) and writes the raw logits of every position of every
// sequence as little-endian float32 [batch, seq, vocab] to <out.f32>. Prints one JSON line on stdout:
// { vocab, llamaCpp, kvCache, flashAttention }.
// Usage: node logits.mjs <model.gguf> <tokens.i32> <batch> <seq> <out.f32> <threads> <f32|f16>
//   tokens.i32: little-endian int32 [batch, seq]. threads 0: node-llama-cpp's choice.
//   f32 (default of verify): F32 KV cache, flash attention off (the F16 cache flips near-tie expert routing).
//   f16: llama.cpp's defaults (F16 KV cache, flash attention "auto"), what users get.
import fs from "node:fs";
import { getLlama } from "node-llama-cpp";

const [modelPath, tokensPath, batchArg, seqArg, outPath, threadsArg, kvArg] = process.argv.slice(2);
if (!modelPath || !tokensPath || !batchArg || !seqArg || !outPath) {
  console.error("usage: node logits.mjs <model.gguf> <tokens.i32> <batch> <seq> <out.f32> [threads] [f32|f16]");
  process.exit(2);
}
const batch = Number(batchArg), seqLen = Number(seqArg), threads = Number(threadsArg ?? 0);
const kvCache = (kvArg ?? "f32").toLowerCase();
if (kvCache !== "f32" && kvCache !== "f16") {
  console.error(`kv cache '${kvCache}' is not f32 or f16`);
  process.exit(2);
}
const raw = fs.readFileSync(tokensPath);
if (raw.length !== batch * seqLen * 4) {
  console.error(`${tokensPath}: ${raw.length} bytes, expected ${batch * seqLen * 4} for ${batch} x ${seqLen} int32 tokens`);
  process.exit(2);
}
const tokens = new Int32Array(raw.buffer, raw.byteOffset, batch * seqLen);

const llama = await getLlama({ gpu: false, build: "never", logLevel: "error" });
const model = await llama.loadModel({ modelPath });
const vocab = model.tokens?.count ?? model.fileInfo?.metadata?.tokenizer?.ggml?.tokens?.length;
const contextOptions = { contextSize: Math.max(seqLen, 32), batchSize: Math.max(seqLen, 32) };
if (threads > 0) contextOptions.threads = threads;
if (kvCache === "f32") {
  contextOptions.flashAttention = false;
  contextOptions.experimentalKvCacheKeyType = "F32";
  contextOptions.experimentalKvCacheValueType = "F32";
}

const fd = fs.openSync(outPath, "w");
const row = new Float32Array(vocab);
let missing = 0;
for (let s = 0; s < batch; s++) {
  // a fresh context per sequence: no state carried between sequences
  const context = await model.createContext(contextOptions);
  const sequence = context.getSequence();
  const ids = Array.from(tokens.subarray(s * seqLen, (s + 1) * seqLen));
  const outputs = await sequence.controlledEvaluate(ids.map((t) => [t, { generateNext: { logits: true } }]));
  for (const out of outputs) {
    row.fill(0);
    const logits = out?.next?.logits;
    if (!logits) throw new Error(`sequence ${s}: llama.cpp returned no logits`);
    if (logits.size !== vocab) missing++;
    for (const [id, logit] of logits) row[id] = logit;
    fs.writeSync(fd, new Uint8Array(row.buffer, row.byteOffset, row.byteLength));
  }
  await context.dispose();
}
fs.closeSync(fd);
if (missing > 0) console.error(`warning: ${missing} positions returned fewer than ${vocab} logits (missing ones written as 0)`);
const release = llama.llamaCppRelease;
console.log(JSON.stringify({
  vocab, llamaCpp: `${release?.repo ?? "llama.cpp"} ${release?.release ?? "?"}`,
  kvCache, flashAttention: kvCache === "f32" ? false : "auto",
}));
await model.dispose();
await llama.dispose();
