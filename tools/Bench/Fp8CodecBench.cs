using Converter.Numerics;

namespace Converter.Tools.Bench;

/// <summary>
/// Throughput of DeepSeek-layout FP8 block quantization (bf16 -> e4m3 + scales) and dequantization
/// (e4m3 + scales -> bf16) on one 7168x2048 weight, next to a plain Span copy of the same bytes.
/// Usage: Fp8CodecBench [repetitions]
/// </summary>
public static class Fp8CodecBench
{
    public static int Run(string[] args)
    {
        int reps = args.Length > 0 && int.TryParse(args[0], out int n) && n > 0 ? n : 10;
        const int rows = 7168, cols = 2048;
        int count = rows * cols;
        var (sr, sc) = Fp8BlockQuantizer.ScaleShape(rows, cols);

        var rng = new Random(42);
        var w = new ushort[count];
        for (int i = 0; i < count; i++)
        {
            double g = Math.Sqrt(-2 * Math.Log(1 - rng.NextDouble())) * Math.Cos(2 * Math.PI * rng.NextDouble());
            w[i] = Bf16.FromSingle((float)(g * 0.02));
        }
        var fp8 = new byte[count];
        var scales = new float[sr * sc];
        var bf16Out = new ushort[count];
        var copyDst16 = new ushort[count];
        var copyDst8 = new byte[count];

        double bf16Mb = count * 2 / 1e6, fp8Mb = (count + scales.Length * 4) / 1e6;
        var lines = new List<string>
        {
            $"FP8 block codec, weight [{rows}, {cols}], best of {reps}, {Environment.ProcessorCount} logical cores",
            "",
            "| operation | threads | ms | input MB/s | output MB/s |",
            "|---|---:|---:|---:|---:|",
        };
        void Row(string op, int threads, double ms, double inMb, double outMb)
            => lines.Add($"| {op} | {threads} | {ms:F2} | {inMb / ms * 1e3:F0} | {outMb / ms * 1e3:F0} |");

        Row("Span copy (bf16 bytes)", 1, BenchTiming.Best(reps, () => w.AsSpan().CopyTo(copyDst16)).Wall * 1e3, bf16Mb, bf16Mb);
        Row("Span copy (fp8 bytes)", 1, BenchTiming.Best(reps, () => fp8.AsSpan().CopyTo(copyDst8)).Wall * 1e3, fp8Mb, fp8Mb);
        foreach (int threads in new[] { 1, 2 })
        {
            Row("bf16 -> fp8 block quantize", threads,
                BenchTiming.Best(reps, () => Fp8BlockQuantizer.Quantize(w, rows, cols, fp8, scales, threads)).Wall * 1e3, bf16Mb, fp8Mb);
            Row("fp8 -> bf16 dequantize", threads,
                BenchTiming.Best(reps, () => Fp8BlockQuantizer.DequantizeToBf16(fp8, scales, rows, cols, bf16Out, threads)).Wall * 1e3, fp8Mb, bf16Mb);
        }
        foreach (var l in lines) Console.WriteLine(l);
        return 0;
    }
}
