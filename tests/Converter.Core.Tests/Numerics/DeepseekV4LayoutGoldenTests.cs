using Converter.Numerics;
using Converter.Tensors;

namespace Converter.Tests.Numerics;

/// <summary>
/// golden/models/tiny-dsv4-fp8 was made from tiny-dsv4 by the rule of the DeepSeek-V4 notes (section 4): FP8 e4m3
/// with E8M0 128x128 block scales for attention and shared-expert linears, FP4 e2m1 (I8, two a byte) with E8M0
/// 1x32 scales for routed experts. The codecs must reproduce every code and scale byte for byte.
/// </summary>
public class DeepseekV4LayoutGoldenTests
{
    private static string ScaleName(string weight) => weight[..^".weight".Length] + ".scale";

    private static List<string> Names(Converter.Formats.Safetensors.SafetensorsCheckpoint ckpt, DType dtype)
        => ckpt.Names.Where(n => ckpt.Info(n).DType == dtype).ToList();

    [Fact]
    public void QuantizingBf16ReproducesEveryFp8WeightAndScale()
    {
        using var bf16 = DeepseekV4GoldenCheckpoints.OpenBf16();
        using var fp8 = DeepseekV4GoldenCheckpoints.OpenFp8();
        var names = Names(fp8, DType.F8_E4M3);
        names.Should().HaveCount(34);
        foreach (var name in names)
        {
            var info = fp8.Info(name);
            var scaleInfo = fp8.Info(ScaleName(name));
            DeepseekV4GoldenCheckpoints.IsScaleDType(scaleInfo.DType).Should().BeTrue(name);
            var (rows, cols) = Fp8Pow2BlockQuantizer.ValidateLayout(info.Shape, scaleInfo.Shape);
            using var src = bf16.Read(name);
            src.Info.DType.Should().Be(DType.BF16, name);
            src.Info.Shape.Should().Equal(info.Shape, name);
            using var wantCodes = fp8.Read(name);
            using var wantScales = fp8.Read(ScaleName(name));

            var codes = new byte[rows * cols];
            var scales = new byte[wantScales.Length];
            Fp8Pow2BlockQuantizer.Quantize(src.As<ushort>(), rows, cols, codes, scales);
            scales.AsSpan().SequenceEqual(wantScales.Bytes).Should().BeTrue($"{name}: scales {Diff(scales, wantScales.Bytes)}");
            codes.AsSpan().SequenceEqual(wantCodes.Bytes).Should().BeTrue($"{name}: codes {Diff(codes, wantCodes.Bytes)}");

            var f = new float[rows * cols];
            Bf16.ToSingle(src.As<ushort>(), f);
            Array.Clear(codes);
            Array.Clear(scales);
            Fp8Pow2BlockQuantizer.Quantize(f, rows, cols, codes, scales);
            codes.AsSpan().SequenceEqual(wantCodes.Bytes).Should().BeTrue($"{name} (float32 source)");
            scales.AsSpan().SequenceEqual(wantScales.Bytes).Should().BeTrue($"{name} (float32 source)");
        }
    }

    [Fact]
    public void QuantizingBf16ReproducesEveryFp4ExpertAndScale()
    {
        using var bf16 = DeepseekV4GoldenCheckpoints.OpenBf16();
        using var fp8 = DeepseekV4GoldenCheckpoints.OpenFp8();
        var names = Names(fp8, DType.I8);
        names.Should().HaveCount(96).And.OnlyContain(n => n.Contains(".ffn.experts."));
        foreach (var name in names)
        {
            var info = fp8.Info(name);
            var scaleInfo = fp8.Info(ScaleName(name));
            DeepseekV4GoldenCheckpoints.IsScaleDType(scaleInfo.DType).Should().BeTrue(name);
            var (rows, cols) = Fp4BlockQuantizer.ValidateLayout(info.Shape, scaleInfo.Shape);
            using var src = bf16.Read(name);
            src.Info.DType.Should().Be(DType.BF16, name);
            src.Info.Shape.Should().Equal(new long[] { rows, cols }, name);
            using var wantPacked = fp8.Read(name);
            using var wantScales = fp8.Read(ScaleName(name));

            var packed = new byte[rows * cols / 2];
            var scales = new byte[rows * cols / 32];
            Fp4BlockQuantizer.Quantize(src.As<ushort>(), rows, cols, packed, scales);
            scales.AsSpan().SequenceEqual(wantScales.Bytes).Should().BeTrue($"{name}: scales {Diff(scales, wantScales.Bytes)}");
            packed.AsSpan().SequenceEqual(wantPacked.Bytes).Should().BeTrue($"{name}: packed codes {Diff(packed, wantPacked.Bytes)}");

            var f = new float[rows * cols];
            Bf16.ToSingle(src.As<ushort>(), f);
            Array.Clear(packed);
            Array.Clear(scales);
            Fp4BlockQuantizer.Quantize(f, rows, cols, packed, scales);
            packed.AsSpan().SequenceEqual(wantPacked.Bytes).Should().BeTrue($"{name} (float32 source)");
            scales.AsSpan().SequenceEqual(wantScales.Bytes).Should().BeTrue($"{name} (float32 source)");
        }
    }

    [Fact]
    public void EveryOtherTensorIsTheBf16CheckpointsUnchanged()
    {
        using var bf16 = DeepseekV4GoldenCheckpoints.OpenBf16();
        using var fp8 = DeepseekV4GoldenCheckpoints.OpenFp8();
        var quantized = Names(fp8, DType.F8_E4M3).Concat(Names(fp8, DType.I8)).ToHashSet();
        var scales = fp8.Names.Where(n => DeepseekV4GoldenCheckpoints.IsScaleDType(fp8.Info(n).DType)).ToHashSet();
        scales.Should().BeEquivalentTo(quantized.Select(ScaleName));
        fp8.Names.Count.Should().Be(bf16.Names.Count + scales.Count);
        foreach (var name in fp8.Names.Where(n => !quantized.Contains(n) && !scales.Contains(n)))
        {
            using var a = fp8.Read(name);
            using var b = bf16.Read(name);
            a.Info.DType.Should().Be(b.Info.DType, name);
            a.Bytes.SequenceEqual(b.Bytes).Should().BeTrue(name);
        }
    }

    [Fact]
    public void DequantizingGivesBf16OfCodeTimesScale()
    {
        using var fp8 = DeepseekV4GoldenCheckpoints.OpenFp8();
        int fp8Count = 0, fp4Count = 0;
        foreach (var name in Names(fp8, DType.F8_E4M3))
        {
            using var codes = fp8.Read(name);
            using var scales = fp8.Read(ScaleName(name));
            var (rows, cols) = Fp8Pow2BlockQuantizer.ValidateLayout(codes.Info.Shape, scales.Info.Shape);
            var got = new ushort[rows * cols];
            var gotF = new float[rows * cols];
            Fp8Pow2BlockQuantizer.DequantizeToBf16(codes.Bytes, scales.Bytes, rows, cols, got);
            Fp8Pow2BlockQuantizer.Dequantize(codes.Bytes, scales.Bytes, rows, cols, gotF);
            for (int r = 0; r < rows; r++)
                for (int c = 0; c < cols; c++)
                {
                    int i = r * cols + c;
                    double want = Pow2Reference.Fp8Value(codes.Bytes, scales.Bytes, cols, r, c);
                    if (got[i] != Pow2Reference.Bf16(want) || (double)gotF[i] != want || Bf16.ToSingle(got[i]) != gotF[i])
                        Assert.Fail($"{name} ({r},{c}): code 0x{codes.Bytes[i]:X2}: bf16 0x{got[i]:X4}, float {gotF[i]:R}, want {want:R}");
                }
            fp8Count++;
        }
        foreach (var name in Names(fp8, DType.I8))
        {
            using var packed = fp8.Read(name);
            using var scales = fp8.Read(ScaleName(name));
            var (rows, cols) = Fp4BlockQuantizer.ValidateLayout(packed.Info.Shape, scales.Info.Shape);
            var got = new ushort[rows * cols];
            var gotF = new float[rows * cols];
            Fp4BlockQuantizer.DequantizeToBf16(packed.Bytes, scales.Bytes, rows, cols, got);
            Fp4BlockQuantizer.Dequantize(packed.Bytes, scales.Bytes, rows, cols, gotF);
            for (int i = 0; i < rows * cols; i++)
            {
                double want = Pow2Reference.Fp4Value(packed.Bytes, scales.Bytes, i);
                if (got[i] != Pow2Reference.Bf16(want) || (double)gotF[i] != want || Bf16.ToSingle(got[i]) != gotF[i])
                    Assert.Fail($"{name} element {i}: bf16 0x{got[i]:X4}, float {gotF[i]:R}, want {want:R}");
            }
            fp4Count++;
        }
        (fp8Count, fp4Count).Should().Be((34, 96));
    }

    /// <summary>Official layout -> BF16 -> official layout with the stored scales gives back the same bytes and
    /// reports no inexact value (what re-quantizing a dequantized official checkpoint relies on).</summary>
    [Fact]
    public void ReencodingDequantizedWeightsWithStoredScalesIsLossless()
    {
        using var fp8 = DeepseekV4GoldenCheckpoints.OpenFp8();
        foreach (var name in Names(fp8, DType.F8_E4M3))
        {
            using var codes = fp8.Read(name);
            using var scales = fp8.Read(ScaleName(name));
            var (rows, cols) = Fp8Pow2BlockQuantizer.ValidateLayout(codes.Info.Shape, scales.Info.Shape);
            var bf = new ushort[rows * cols];
            Fp8Pow2BlockQuantizer.DequantizeToBf16(codes.Bytes, scales.Bytes, rows, cols, bf);
            var again = new byte[rows * cols];
            Fp8Pow2BlockQuantizer.QuantizeWithScales(bf, scales.Bytes, rows, cols, again).Should().Be(0, name);
            again.AsSpan().SequenceEqual(codes.Bytes).Should().BeTrue(name);
        }
        foreach (var name in Names(fp8, DType.I8))
        {
            using var packed = fp8.Read(name);
            using var scales = fp8.Read(ScaleName(name));
            var (rows, cols) = Fp4BlockQuantizer.ValidateLayout(packed.Info.Shape, scales.Info.Shape);
            var bf = new ushort[rows * cols];
            Fp4BlockQuantizer.DequantizeToBf16(packed.Bytes, scales.Bytes, rows, cols, bf);
            var again = new byte[rows * cols / 2];
            Fp4BlockQuantizer.QuantizeWithScales(bf, scales.Bytes, rows, cols, again).Should().Be(0, name);
            again.AsSpan().SequenceEqual(packed.Bytes).Should().BeTrue(name);
        }
    }

    private static string Diff(ReadOnlySpan<byte> got, ReadOnlySpan<byte> want)
    {
        if (got.Length != want.Length) return $"length {got.Length} vs {want.Length}";
        int n = 0, first = -1;
        for (int i = 0; i < got.Length; i++)
            if (got[i] != want[i]) { n++; if (first < 0) first = i; }
        return n == 0 ? "equal" : $"{n} bytes differ, first at {first} (0x{got[first]:X2} vs 0x{want[first]:X2})";
    }
}
