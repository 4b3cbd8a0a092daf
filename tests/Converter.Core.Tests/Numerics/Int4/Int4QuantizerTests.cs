using Converter.Numerics;
using Converter.Numerics.Int4;
using Xunit.Abstractions;

namespace Converter.Tests.Numerics.Int4;

public class Int4QuantizerTests(ITestOutputHelper output)
{
    internal static float[] RandomWeight(int rows, int cols, int seed)
    {
        var rng = new Random(seed);
        var w = new float[rows * cols];
        for (int i = 0; i < w.Length; i++)
        {
            // Heavy-ish tails like trained weights: mostly gaussian, a few outliers.
            double u1 = 1 - rng.NextDouble(), u2 = rng.NextDouble();
            double g = Math.Sqrt(-2 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2);
            if (rng.Next(64) == 0) g *= 4;
            w[i] = Bf16.ToSingle(Bf16.FromSingle((float)(0.02 * g)));
        }
        return w;
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void RangeFollowsCompressedTensorsConventions(bool symmetric)
    {
        // Hand-derived from compressed-tensors' calculate_qparams: sym scale = absmax / ((7 - -8) / 2);
        // asym scale = (max - min) / 15, zp = -8 - min / scale; range always includes 0.
        var (s, z) = Int4Scheme.FromRange(-3f, 7.5f, symmetric);
        if (symmetric)
        {
            Bf16.ToSingle(s).Should().Be(1f);
            z.Should().Be(0);
            Int4Scheme.Quantize(7.5f, 1f, 0).Should().Be(7, "+absmax maps to 7.5, rounds to 8 and clamps to 7");
            Int4Scheme.Quantize(-7.5f, 1f, 0).Should().Be(-8);
        }
        else
        {
            Bf16.ToSingle(s).Should().Be(Bf16.ToSingle(Bf16.FromSingle(10.5f / 15)));
            z.Should().Be((sbyte)Math.Round(-8 + 3 / Bf16.ToSingle(s)));
        }
        Int4Scheme.FromRange(0.2f, 0.5f, false).Zero.Should().Be(-8, "min is raised to 0 so zero stays representable");
        Int4Scheme.FromRange(0f, 0f, true).Scale.Should().Be(Bf16.FromSingle(Int4Scheme.ZeroScale));
        Int4Scheme.Quantize(2.5f, 1f, 0).Should().Be(2, "ties round to even as torch.round does");
        Int4Scheme.Quantize(3.5f, 1f, 0).Should().Be(4);
    }

    [Theory]
    [InlineData(32, true)]
    [InlineData(64, false)]
    [InlineData(128, true)]
    [InlineData(128, false)]
    public void VectorPathMatchesScalarReferenceBitForBit(int group, bool symmetric)
    {
        int rows = 37, cols = 512;
        var w = RandomWeight(rows, cols, group + (symmetric ? 1 : 0));
        var scheme = new Int4Scheme(group, symmetric);
        var fast = Int4GroupQuantizer.Quantize(w, rows, cols, scheme, Int4ClipSearch.Default);
        var q = new sbyte[cols];
        int groups = cols / group;
        for (int r = 0; r < rows; r++)
            for (int g = 0; g < groups; g++)
            {
                var (s, z) = Int4GroupQuantizer.QuantizeGroupScalar(w.AsSpan(r * cols + g * group, group), symmetric, Int4ClipSearch.Default, q);
                fast.Scales[r * groups + g].Should().Be(s);
                fast.Zeros[r * groups + g].Should().Be(z);
                fast.Q.AsSpan(r * cols + g * group, group).SequenceEqual(q.AsSpan(0, group)).Should().BeTrue();
            }
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void ClipSearchKeepsTheMinimumErrorCandidate(bool symmetric)
    {
        int rows = 64, cols = 256, group = 32;
        var w = RandomWeight(rows, cols, 7);
        var clip = Int4ClipSearch.Default;
        var got = Int4GroupQuantizer.Quantize(w, rows, cols, new Int4Scheme(group, symmetric), clip);
        var plain = Int4GroupQuantizer.Quantize(w, rows, cols, new Int4Scheme(group, symmetric), Int4ClipSearch.None);
        double errClip = 0, errPlain = 0;
        var deq = got.Dequantize();
        var deqPlain = plain.Dequantize();
        for (int i = 0; i < w.Length; i++)
        {
            errClip += Math.Pow(deq[i] - w[i], 2);
            errPlain += Math.Pow(deqPlain[i] - w[i], 2);
        }
        // Brute force: every candidate of the grid evaluated in double; the chosen one is within float rounding of the best.
        for (int r = 0; r < rows; r++)
            for (int g = 0; g < cols / group; g++)
            {
                var x = w.AsSpan(r * cols + g * group, group).ToArray();
                float lo = x.Min(), hi = x.Max();
                double best = double.MaxValue;
                for (int i = 0; i < clip.Steps; i++)
                {
                    var (s, z) = Int4Scheme.FromRange(lo * clip.Shrink(i), hi * clip.Shrink(i), symmetric);
                    best = Math.Min(best, GroupError(x, Bf16.ToSingle(s), z));
                }
                double chosen = GroupError(x, Bf16.ToSingle(got.Scales[r * (cols / group) + g]), got.Zeros[r * (cols / group) + g]);
                chosen.Should().BeLessThanOrEqualTo(best * (1 + 1e-5) + 1e-12);
            }
        output.WriteLine($"{(symmetric ? "sym" : "asym")} g32: squared error with clip search {errClip:E4}, min-max only {errPlain:E4} ({100 * (1 - errClip / errPlain):F1}% lower)");
        errClip.Should().BeLessThan(errPlain);
    }

    private static double GroupError(float[] x, float s, int z)
    {
        double e = 0;
        foreach (var v in x) e += Math.Pow(Int4Scheme.Dequantize(Int4Scheme.Quantize(v, s, z), s, z) - (double)v, 2);
        return e;
    }

    [Fact]
    public void GroupSizeThatDoesNotDivideKNamesTheTensor()
    {
        var act = () => Int4GroupQuantizer.Quantize(new float[8 * 96], 8, 96, new Int4Scheme(64, true), Int4ClipSearch.Default, tensor: "layers.1.mlp.experts.3.down_proj.weight");
        act.Should().Throw<InvalidDataException>().WithMessage("*layers.1.mlp.experts.3.down_proj.weight*64*96*");
    }
}
