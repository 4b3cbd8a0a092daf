using Converter.Verification;
using Xunit.Abstractions;

namespace Converter.Tests.Onnx;

/// <summary>The variation tests' one check: an ONNX run against a float64 reference forward on the positions whose
/// routing margin is at least 1e-4 (logits within 1e-3, same top-1, same selected experts), over more than half the positions.</summary>
public static class ReferenceAgreement
{
    public static void Check(ArtifactOutputs outs, float[] refLogits, int[][] refRouting, double[] margin, int vocab, int k,
        ITestOutputHelper log, string variant)
    {
        int positions = margin.Length;
        var stable = margin.Select(m => m >= 1e-4).ToArray();
        var stats = LogitStats.Compare(outs.Logits, refLogits, vocab, stable);
        log.WriteLine($"{variant}: ONNX vs float64 reference on stable positions: {stats}");
        int differ = 0, compared = 0;
        for (int l = 0; l < refRouting.Length; l++)
            for (int p = 0; p < positions; p++)
            {
                if (!stable[p]) continue;
                compared++;
                if (!refRouting[l].AsSpan(p * k, k).ToArray().Order().SequenceEqual(outs.RoutingTopK![l].AsSpan(p * k, k).ToArray().Order())) differ++;
            }
        log.WriteLine($"{variant}: routing {compared} choices, {differ} differ");
        stats.Positions.Should().BeGreaterThan(positions / 2);
        stats.MaxAbs.Should().BeLessThanOrEqualTo(1e-3);
        stats.Top1.Should().Be(1.0);
        differ.Should().Be(0);
    }
}
