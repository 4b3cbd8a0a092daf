#!/usr/bin/env bash
# Fuzzes one parser target with AFL++ through SharpFuzz, then copies what it found into the regression folder.
#   tools/fuzz.sh <target> <seconds>     e.g. tools/fuzz.sh gguf 3600
#   tools/fuzz.sh --list                 the targets (tests/Converter.Fuzz/FuzzTargets.cs)
# Installs what it needs when missing: afl++ (apt-get) and the SharpFuzz.CommandLine 2.3.0 dotnet tool.
# Runs at nice 19 on one core. Work files go to ${FUZZ_OUT:-/tmp/converter-fuzz}/<target>; crashes and hangs are
# copied to tests/Converter.Fuzz/regressions/<target>/, which the test suite replays (FuzzReplayTests).
set -euo pipefail
cd "$(dirname "$0")/.."
targets="safetensors index config compressed-tensors gguf golden onnx placement"
if [ "${1:-}" = "--list" ]; then echo "$targets"; exit 0; fi
if [ $# -ne 2 ] || ! [[ " $targets " == *" $1 "* ]] || ! [[ "$2" =~ ^[0-9]+$ ]]; then
  echo "usage: tools/fuzz.sh <target> <seconds>   (targets: $targets)" >&2
  exit 2
fi
target=$1 seconds=$2
out=${FUZZ_OUT:-/tmp/converter-fuzz}/$target
bin=${FUZZ_OUT:-/tmp/converter-fuzz}/bin

if ! command -v afl-fuzz >/dev/null; then
  echo "installing afl++ (apt-get)"
  apt-get update -qq && apt-get install -y -qq afl++ >/dev/null
fi
export PATH="$PATH:$HOME/.dotnet/tools"
if ! command -v sharpfuzz >/dev/null; then
  echo "installing SharpFuzz.CommandLine 2.3.0 (dotnet tool)"
  dotnet tool install --global SharpFuzz.CommandLine --version 2.3.0 >/dev/null
fi

# Publish a snapshot of the sources (a build in the checkout can go on meanwhile) and instrument the assemblies that
# hold the parsers (SharpFuzz rewrites them in place).
snap=${FUZZ_OUT:-/tmp/converter-fuzz}/src
rm -rf "$bin" "$snap"
mkdir -p "$snap/tests"
tar --exclude=bin --exclude=obj -cf - Directory.Build.props schemas src tests/Converter.Fuzz | tar -xf - -C "$snap"
dotnet publish "$snap/tests/Converter.Fuzz" -c Release -o "$bin" --nologo -v q
rm -rf "$snap"
for dll in Converter.Core.dll Converter.Runtime.dll; do sharpfuzz "$bin/$dll"; done

rm -rf "$out/findings" "$out/work"
mkdir -p "$out/work"
# AFL_SKIP_BIN_CHECK: the instrumentation is in the .NET assemblies, not in the dotnet host AFL++ inspects.
CONVERTER_FUZZ_WORK=$out/work AFL_SKIP_BIN_CHECK=1 AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_NO_AFFINITY=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 \
  nice -n 19 afl-fuzz -V "$seconds" -t 10000 -m none -i "tests/Converter.Fuzz/corpus/$target" -o "$out/findings" \
  -- dotnet "$bin/converter-fuzz.dll" "$target" > "$out/afl.log" 2>&1 || { tail -30 "$out/afl.log" >&2; exit 3; }

rm -rf "$out/work"
stats=$out/findings/default/fuzzer_stats
get() { awk -F' *: *' -v k="$1" '$1 == k { print $2 }' "$stats"; }
echo "target $target: $(get run_time) s, $(get execs_done) executions ($(get execs_per_sec)/s), $(get corpus_count) paths, $(get saved_crashes) crashes, $(get saved_hangs) hangs"

reg=tests/Converter.Fuzz/regressions/$target
n=0
for kind in crashes hangs; do
  for f in "$out/findings/default/$kind"/id:*; do
    [ -e "$f" ] || continue
    mkdir -p "$reg"
    cp "$f" "$reg/${kind%es}-$(sha1sum "$f" | cut -c1-12)"
    n=$((n + 1))
  done
done
[ "$n" -eq 0 ] || echo "copied $n input(s) to $reg: fix each in the parser; FuzzReplayTests replays them"
