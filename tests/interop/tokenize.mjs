// Loads a GGUF file's vocabulary in llama.cpp (node-llama-cpp's bundled build, vocabulary only) and writes how
// llama.cpp tokenizes each text as JSON: { vocab, tokens: [[id, ...], ...] } (no BOS/EOS added, special tokens
// not parsed).
// Usage: node tokenize.mjs <model.gguf> <texts.json: ["text", ...]> <out.json>
import fs from "node:fs";
import { getLlama } from "node-llama-cpp";

const [modelPath, textsPath, outPath] = process.argv.slice(2);
if (!modelPath || !textsPath || !outPath) {
  console.error("usage: node tokenize.mjs <model.gguf> <texts.json> <out.json>");
  process.exit(2);
}
const texts = JSON.parse(fs.readFileSync(textsPath, "utf8"));
const llama = await getLlama({ gpu: false, build: "never", logLevel: "error" });
const model = await llama.loadModel({ modelPath, vocabOnly: true });
const result = { vocab: model.tokens.count ?? null, tokens: texts.map((t) => Array.from(model.tokenize(t, false))) };
fs.writeFileSync(outPath, JSON.stringify(result));
await model.dispose();
await llama.dispose();
