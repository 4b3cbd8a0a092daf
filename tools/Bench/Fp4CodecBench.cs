using Converter.Numerics;

namespace Converter.Tools.Bench;

/// <summary>
/// Throughput of DeepSeek-V4's official-layout codecs on one 2048x4096 expert weight (V4-Flash w1/w3): FP4 e2m1
/// with 1x32 E8M0 scales (routed experts) and FP8 e4m3 with 128x128 E8M0 scales, bf16 -> codes + scales and
/// back, next to a plain Span copy of the bf16 bytes.
/// Usage: Fp4CodecBench [repetitions]
/// </summary>
public static class Fp4CodecBench
{
    public static int Run(string[] args)
    {
        int reps = args.Length > 0 && int.TryParse(args[0], out int n) && n > 0 ? n : 10;
        const int rows = 2048, cols = 4096;
        int count = rows * cols;

        var rng = new Random(42);
        var w = new ushort[count];
        for (int i = 0; i < count; i++)
        {
            double g = Math.Sqrt(-2 * Math.Log(1 - rng.NextDouble())) * Math.Cos(2 * Math.PI * rng.NextDouble());
            w[i] = Bf16.FromSingle((float)(g * 0.02));
        }
        var packed = new byte[count / 2];
        var fp4Scales = new byte[count / Fp4BlockQuantizer.GroupSize];
        var fp8 = new byte[count];
        var (sr, sc) = Fp8Pow2BlockQuantizer.ScaleShape(rows, cols);
        var fp8Scales = new byte[sr * sc];
        var bf16Out = new ushort[count];
        var f32Out = new float[count];
        var copyDst = new ushort[count];
        var fp8Bf16Out = new ushort[count];

        double bf16Mb = count * 2 / 1e6, fp4Mb = (packed.Length + fp4Scales.Length) / 1e6, fp8Mb = (count + fp8Scales.Length) / 1e6;
        var lines = new List<string>
        {
            $"DeepSeek-V4 codecs, weight [{rows}, {cols}], best of {reps}, {Environment.ProcessorCount} logical cores",
            "",
            "| operation | threads | ms | input MB/s | output MB/s |",
            "|---|---:|---:|---:|---:|",
        };
        void Row(string op, int threads, double ms, double inMb, double outMb)
            => lines.Add($"| {op} | {threads} | {ms:F2} | {inMb / ms * 1e3:F0} | {outMb / ms * 1e3:F0} |");

        Row("Span copy (bf16 bytes)", 1, BenchTiming.Best(reps, () => w.AsSpan().CopyTo(copyDst)).Wall * 1e3, bf16Mb, bf16Mb);
        foreach (int threads in new[] { 1, 2 })
        {
            Row("bf16 -> fp4 + e8m0 (1x32) quantize", threads,
                BenchTiming.Best(reps, () => Fp4BlockQuantizer.Quantize(w, rows, cols, packed, fp4Scales, threads)).Wall * 1e3, bf16Mb, fp4Mb);
            Row("fp4 -> bf16 dequantize", threads,
                BenchTiming.Best(reps, () => Fp4BlockQuantizer.DequantizeToBf16(packed, fp4Scales, rows, cols, bf16Out, threads)).Wall * 1e3, fp4Mb, bf16Mb);
            Row("fp4 -> f32 dequantize", threads,
                BenchTiming.Best(reps, () => Fp4BlockQuantizer.Dequantize(packed, fp4Scales, rows, cols, f32Out, threads)).Wall * 1e3, fp4Mb, 2 * bf16Mb);
            Row("bf16 -> fp4 with stored scales (+ exactness count)", threads,
                BenchTiming.Best(reps, () => Fp4BlockQuantizer.QuantizeWithScales(bf16Out, fp4Scales, rows, cols, packed, threads)).Wall * 1e3, bf16Mb, fp4Mb);
            Row("bf16 -> fp8 + e8m0 (128x128) quantize", threads,
                BenchTiming.Best(reps, () => Fp8Pow2BlockQuantizer.Quantize(w, rows, cols, fp8, fp8Scales, threads)).Wall * 1e3, bf16Mb, fp8Mb);
            Row("fp8 + e8m0 -> bf16 dequantize", threads,
                BenchTiming.Best(reps, () => Fp8Pow2BlockQuantizer.DequantizeToBf16(fp8, fp8Scales, rows, cols, fp8Bf16Out, threads)).Wall * 1e3, fp8Mb, bf16Mb);
        }
        foreach (var l in lines) Console.WriteLine(l);
        return 0;
    }
}
