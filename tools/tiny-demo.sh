#!/usr/bin/env bash
# The main job on the bundled tiny DeepSeek-V3 model: inspect, quantize to FP8 and back, export ONNX (fp32 and
# fp8) and GGUF, and verify every artifact against the golden logits. Needs the .NET 10 SDK; the GGUF steps
# also need Node.js 20+ (llama.cpp runs through node-llama-cpp, installed here with `npm ci`).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-out/tiny-demo}
mkdir -p "$out"

echo "== build"
dotnet build src/Converter.Cli -c Release -v quiet -nologo
converter() { dotnet src/Converter.Cli/bin/Release/net10.0/converter.dll "$@"; }

echo "== inspect"
converter inspect golden/models/tiny-dsv3

echo "== quantize: BF16 -> DeepSeek FP8 block layout, and back"
converter quantize golden/models/tiny-dsv3 -o "$out/fp8" --scheme fp8-block --overwrite -q
converter quantize "$out/fp8" -o "$out/bf16" --scheme bf16 --overwrite -q

echo "== export ONNX fp32 and verify against the BF16 golden"
converter export onnx golden/models/tiny-dsv3 -o "$out/onnx-fp32" --overwrite -q
converter verify "$out/onnx-fp32" --golden golden/tiny-dsv3/eval.safetensors

echo "== export ONNX fp8 (from our FP8 checkpoint) and verify against the FP8 golden"
converter export onnx "$out/fp8" -o "$out/onnx-fp8" --weights fp8 --overwrite -q
converter verify "$out/onnx-fp8" --golden golden/tiny-dsv3-fp8/eval.safetensors --format-preset fp8-exact

echo "== a golden of our own from the checkpoint (fp32 ONNX, layer by layer), and the fp32 export against it"
converter golden golden/models/tiny-dsv3 --tokens golden/tiny-dsv3/eval.safetensors -o "$out/golden.safetensors" --overwrite -q
converter verify "$out/onnx-fp32" --golden "$out/golden.safetensors"

echo "== export GGUF (F32 and Q8_0) and verify through llama.cpp"
if command -v node >/dev/null 2>&1; then
  [ -d tests/interop/node_modules/node-llama-cpp ] || (cd tests/interop && npm ci --no-audit --no-fund --loglevel=error)
  converter export gguf golden/models/tiny-dsv3 -o "$out/tiny-f32.gguf" --type f32 --overwrite -q
  converter verify "$out/tiny-f32.gguf" --golden golden/tiny-dsv3/eval.safetensors
  converter export gguf "$out/fp8" -o "$out/tiny-q8_0.gguf" --type q8_0 --overwrite -q
  converter verify "$out/tiny-q8_0.gguf" --golden golden/tiny-dsv3-fp8/eval.safetensors
else
  echo "skipped: GGUF verification runs llama.cpp through Node.js; install Node.js 20+ and rerun"
fi

echo "demo: all artifacts in $out verified"
