// Loads a GGUF file in llama.cpp (node-llama-cpp's bundled CPU build) without creating a context: the loader's checks
// (architecture, keys, every tensor's name, type and shape) run, the graph does not. Prints one JSON line on stdout:
// { architecture, bytes } (bytes: llama.cpp's size of the loaded tensors).
// Usage: node load.mjs <model.gguf>
import { getLlama } from "node-llama-cpp";

const [modelPath] = process.argv.slice(2);
if (!modelPath) {
  console.error("usage: node load.mjs <model.gguf>");
  process.exit(2);
}
const llama = await getLlama({ gpu: false, build: "never", logLevel: "error" });
const model = await llama.loadModel({ modelPath });
console.log(JSON.stringify({ architecture: model.fileInfo.metadata.general.architecture, bytes: model.size }));
await model.dispose();
await llama.dispose();
