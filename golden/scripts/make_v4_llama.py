"""tiny-dsv4-hc4i64: the 4-stream V4 twin with a 64-wide lightning indexer (index_head_dim 64), the smallest V4
that llama.cpp v0.5.0's deepseek4 graph runs (its indexer Hadamard rotation needs a 64-wide head). Same recipe,
corpus and seeds scheme as make_v4_refs.py; writes tiny-dsv4-hc4i64(.txz.part-*) into $OUT."""
import os, time, traceback
import make_v4_refs as V
import make_reference as R

TAG = "tiny-dsv4-hc4i64"
t0 = time.time()
try:
    fdir = V.make(TAG, dict(V.PUBLIC, hc_mult=4, index_head_dim=64), 57, float(os.environ.get("TRAIN_V4", 90)))
    V.llama_convert(fdir, TAG + "-fp8")
except Exception:
    V.log(traceback.format_exc())
V.log("elapsed", time.time() - t0)
W = R.WORK
os.system(f"cd {W} && ls -laR > {R.OUT}/listing.txt; tar cf - {TAG} {TAG}-fp8 golden/{TAG} golden/{TAG}-fp8 "
          f"peer/{TAG}-fp8.llama-cpp-convert.gguf | xz -T0 -9 | split -b 15m - {R.OUT}/{TAG}.txz.part-; ls -la {R.OUT}")
V.log("done")
