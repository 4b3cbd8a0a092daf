using Converter.Numerics;

namespace Converter.Tests.Numerics;

/// <summary>
/// Runs the codec tests again with the kernels limited to narrower vectors (or none), so that every path is
/// checked on a machine whose widest path would otherwise hide the others. Other test classes may run
/// meanwhile on the lowered width; all widths must give identical bits, so that cannot break them.
/// </summary>
public class SimdPathTests
{
    private sealed class Width : IDisposable
    {
        private readonly int _saved = SimdPaths.MaxBits;
        public Width(int bits) => SimdPaths.MaxBits = bits;
        public void Dispose() => SimdPaths.MaxBits = _saved;
    }

    public static TheoryData<int> Widths => new() { 512, 256, 128, 1 };

    [Theory, MemberData(nameof(Widths))]
    public void Fp8CodecsMatchTorch(int bits)
    {
        using var _ = new Width(bits);
        var t = new Fp8CodecTests();
        foreach (var fmt in new[] { "e4m3fn", "e5m2" })
        {
            t.AllBf16Patterns_VectorFromFloatMatchesTorch(fmt);
            t.AllBf16Patterns_VectorFromBf16MatchesTorch(fmt);
            t.Probes_MatchTorch(fmt);
            t.DecodeTable_MatchesTorchBitForBit(fmt);
        }
    }

    [Theory, MemberData(nameof(Widths))]
    public void Bf16AndF16MatchReferences(int bits)
    {
        using var _ = new Width(bits);
        new Bf16Tests().VectorMatchesScalar();
        new Bf16Tests().RoundTripOfEveryNonNaNPatternIsIdentity();
        new F16Tests().ToSingleMatchesSystemHalfForAllPatterns();
        new F16Tests().FromSingleMatchesSystemHalf();
    }

    [Theory, MemberData(nameof(Widths))]
    public void BlockQuantizerMatchesReferenceAndGolden(int bits)
    {
        using var _ = new Width(bits);
        var t = new Fp8BlockQuantizerTests();
        t.PartialBlocksMatchScalarReference(200, 300);
        t.PartialBlocksMatchScalarReference(129, 257);
        t.QuantizingGoldenBf16ReproducesOfficialFp8CheckpointByteForByte();
        t.DequantizingGoldenFp8GivesBf16OfCodeTimesScale();
    }
}
