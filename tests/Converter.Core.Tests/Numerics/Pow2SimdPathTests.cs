using Converter.Numerics;

namespace Converter.Tests.Numerics;

/// <summary>
/// The E8M0/FP4/power-of-two FP8 codec tests again with the kernels limited to narrower vectors (or none), so that
/// every path is held against the scalar references and the golden on a machine whose widest path would otherwise
/// hide the others (as <see cref="SimdPathTests"/> does for the older codecs).
/// </summary>
public class Pow2SimdPathTests
{
    private sealed class Width : IDisposable
    {
        private readonly int _saved = SimdPaths.MaxBits;
        public Width(int bits) => SimdPaths.MaxBits = bits;
        public void Dispose() => SimdPaths.MaxBits = _saved;
    }

    public static TheoryData<int> Widths => new() { 512, 256, 128, 1 };

    [Theory, MemberData(nameof(Widths))]
    public void Fp4MatchesReferenceAndGolden(int bits)
    {
        using var _ = new Width(bits);
        var t = new Fp4BlockQuantizerTests();
        t.MatchesScalarReference(5, 96);   // an odd number of groups: the 512-bit pairs leave one to the next path
        t.MatchesScalarReference(129, 160);
        t.RuleDetails();
        t.WithScalesCountsWhatDoesNotFit();
        var g = new DeepseekV4LayoutGoldenTests();
        g.QuantizingBf16ReproducesEveryFp4ExpertAndScale();
        g.DequantizingGivesBf16OfCodeTimesScale();
        g.ReencodingDequantizedWeightsWithStoredScalesIsLossless();
    }

    [Theory, MemberData(nameof(Widths))]
    public void Fp8Pow2MatchesReferenceAndGolden(int bits)
    {
        using var _ = new Width(bits);
        var t = new Fp8Pow2BlockQuantizerTests();
        t.MatchesScalarReference(200, 300);
        t.MatchesScalarReference(129, 257);
        t.WithScalesClampsAndCounts();
        new DeepseekV4LayoutGoldenTests().QuantizingBf16ReproducesEveryFp8WeightAndScale();
    }
}
