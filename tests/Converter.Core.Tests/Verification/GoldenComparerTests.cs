using System.Text.Json;
using Converter.Formats.Safetensors;
using Converter.Verification;

namespace Converter.Tests.Verification;

public class GoldenComparerTests
{
    private static readonly Lazy<GoldenSet> Dsv3 = new(() => GoldenSet.Load(GoldenSetTests.Eval("tiny-dsv3")));
    private static readonly Lazy<GoldenSet> Fp8 = new(() => GoldenSet.Load(GoldenSetTests.Eval("tiny-dsv3-fp8")));

    private static int[][] GoldenRouting(GoldenSet g)
    {
        int per = g.Positions * g.TopK;
        var r = new int[g.MoeLayers][];
        for (int m = 0; m < g.MoeLayers; m++) r[m] = g.RouteTopK!.AsSpan(m * per, per).ToArray();
        return r;
    }

    private static float[][] GoldenHidden(GoldenSet g)
    {
        int per = g.Seq * g.HiddenSize;
        var r = new float[g.HiddenStateCount][];
        for (int l = 0; l < r.Length; l++) r[l] = g.HiddenStates!.AsSpan(l * per, per).ToArray();
        return r;
    }

    /// <summary>Softmax of a row in float64, written out plainly for the tests' own expectations.</summary>
    private static double[] Softmax(ReadOnlySpan<float> x)
    {
        double m = double.NegativeInfinity;
        foreach (var v in x) m = Math.Max(m, v);
        var p = new double[x.Length];
        double s = 0;
        for (int i = 0; i < x.Length; i++) s += p[i] = Math.Exp(x[i] - m);
        for (int i = 0; i < x.Length; i++) p[i] /= s;
        return p;
    }

    /// <summary>Positions whose smallest route_margin over MoE layers is below 1e-4, read straight from the file.</summary>
    private static bool[] UnstableFromFile(string path, out int positions)
    {
        using var f = SafetensorsFile.Open(path);
        using var t = f.Read("route_margin");
        var m = t.As<float>();
        int layers = (int)t.Info.Shape[0];
        positions = (int)(t.Info.Shape[1] * t.Info.Shape[2]);
        var unstable = new bool[positions];
        for (int l = 0; l < layers; l++)
            for (int p = 0; p < positions; p++)
                if (m[l * positions + p] < 1e-4f) unstable[p] = true;
        return unstable;
    }

    [Fact]
    public void GoldenAgainstItselfIsExact()
    {
        var g = Dsv3.Value;
        var r = GoldenComparer.Compare(g, new ArtifactOutputs((float[])g.Logits.Clone(), GoldenHidden(g), GoldenRouting(g)),
            VerificationTolerances.ForPreset("fp32"));
        r.Positions.Should().Be(8 * 128);
        r.MaxAbsLogitDiff.Should().Be(0);
        r.MaxAbsLogitDiffStable.Should().Be(0);
        r.MeanAbsLogitDiff.Should().Be(0);
        r.Top1Agreement.Should().Be(1);
        r.Top1AgreementStable.Should().Be(1);
        r.KlMean.Should().Be(0);
        r.KlP99.Should().Be(0);
        r.KlMax.Should().Be(0);
        r.RoutingAgreement.Should().Be(1);
        // nll recomputed from float32 logits vs transformers' float64 nll: equal to float32 precision.
        r.PplRatio.Should().BeApproximately(1, 1e-6);
        r.NllMean.Should().BeApproximately(r.GoldenNllMean, 1e-6);
        r.Layers!.FirstDivergentIndex.Should().BeNull();
        r.Layers.Layers.Should().HaveCount(5).And.AllSatisfy(l => l.MaxAbsDiff.Should().Be(0));
        r.Checks.Select(c => c.Metric).Should().Equal("max_abs_logit_diff_stable", "top1_agreement_stable", "kl_mean", "routing_agreement");
        r.Passed.Should().BeTrue();
    }

    [Theory]
    [InlineData(0.5f)]
    [InlineData(-0.5f)]
    public void ConstantShiftLeavesKlAndTop1Unchanged(float shift)
    {
        var g = Dsv3.Value;
        var a = new float[g.Logits.Length];
        for (int i = 0; i < a.Length; i++) a[i] = g.Logits[i] + shift;
        var r = GoldenComparer.Compare(g, new ArtifactOutputs(a, null, null), VerificationTolerances.ReportOnly);
        r.KlMax.Should().BeLessThan(1e-12);     // softmax is shift-invariant; only float32 rounding of the shift remains
        r.Top1Agreement.Should().Be(1);
        r.MaxAbsLogitDiff.Should().BeApproximately(0.5, 1e-5);
        r.MeanAbsLogitDiff.Should().BeApproximately(0.5, 1e-5);
        r.PplRatio.Should().BeApproximately(1, 1e-6);
        r.RoutingAgreement.Should().BeNull();
        r.Passed.Should().BeTrue();           // report-only: nothing judged
    }

    [Fact]
    public void SwappingTheTopTwoLogitsChangesTop1AtExactlyThosePositions()
    {
        var g = Fp8.Value;
        int v = g.Vocab, n = g.Positions;
        var a = (float[])g.Logits.Clone();
        int swapped = 0;
        double expectedKlSum = 0;
        for (int p = 3; p < n; p += 7)
        {
            var row = a.AsSpan(p * v, v);
            int i1 = 0;
            for (int i = 1; i < v; i++) if (row[i] > row[i1]) i1 = i;
            int i2 = i1 == 0 ? 1 : 0;
            for (int i = 0; i < v; i++) if (i != i1 && row[i] > row[i2]) i2 = i;
            if (row[i1] == row[i2]) continue; // a tie would not change the argmax
            // KL(p || p') where p' swaps two probabilities: (p1 - p2) * (log p1 - log p2) = (p1 - p2)(x1 - x2).
            var prob = Softmax(g.Logits.AsSpan(p * v, v));
            expectedKlSum += (prob[i1] - prob[i2]) * ((double)row[i1] - row[i2]);
            (row[i1], row[i2]) = (row[i2], row[i1]);
            swapped++;
        }
        swapped.Should().BeGreaterThan(100);
        var r = GoldenComparer.Compare(g, new ArtifactOutputs(a, null, null), VerificationTolerances.ForPreset("fp8-exact"));
        r.Top1Agreement.Should().Be((double)(n - swapped) / n);
        r.Top1AgreementStable.Should().Be(r.Top1Agreement); // no routing: all positions stable
        r.StablePositions.Should().Be(n);
        r.KlMean.Should().BeApproximately(expectedKlSum / n, 1e-9 * expectedKlSum / n + 1e-15);
        r.Passed.Should().BeFalse();
        r.Failures.Select(c => c.Metric).Should().Contain(["top1_agreement", "kl_mean", "mean_abs_logit_diff"]);
        var top1 = r.Failures.Single(c => c.Metric == "top1_agreement");
        top1.Excess.Should().BeApproximately(0.998 - r.Top1Agreement, 1e-12);
    }

    [Fact]
    public void VectorisedKernelMatchesScalarReference()
    {
        var g = Fp8.Value;
        var rng = new Random(7);
        foreach (int len in new[] { 256, 251, 7, 8, 17 })
            for (int p = 0; p < 64; p++)
            {
                var gr = g.Logits.AsSpan(p * g.Vocab, len);
                var ar = new float[len];
                for (int i = 0; i < len; i++) ar[i] = gr[i] + (float)(rng.NextDouble() - 0.5) * (p % 4);
                int target = p % len;
                var fast = PositionMetrics.Compute(gr, ar, target);
                var slow = PositionMetrics.ComputeScalar(gr, ar, target);
                fast.GoldenTop1.Should().Be(slow.GoldenTop1);
                fast.ArtifactTop1.Should().Be(slow.ArtifactTop1);
                fast.MaxAbsDiff.Should().BeApproximately(slow.MaxAbsDiff, 1e-6);
                fast.SumAbsDiff.Should().BeApproximately(slow.SumAbsDiff, 1e-5);
                fast.Kl.Should().BeApproximately(slow.Kl, 1e-12 + 1e-9 * slow.Kl);
                fast.Nll.Should().BeApproximately(slow.Nll, 1e-9);
            }
    }

    [Fact]
    public void NonFiniteArtifactLogitsFailEvenWhenNothingIsJudged()
    {
        var g = Fp8.Value;
        var a = (float[])g.Logits.Clone();
        a[5 * g.Vocab + 3] = float.NaN;
        a[9 * g.Vocab + 100] = float.PositiveInfinity;
        var r = GoldenComparer.Compare(g, new ArtifactOutputs(a, null, null), VerificationTolerances.ReportOnly);
        r.NonFiniteLogits.Should().Be(2);
        r.Passed.Should().BeFalse();
        double.IsNaN(r.KlMean).Should().BeTrue();
        r.Top1Agreement.Should().Be((double)(g.Positions - 2) / g.Positions);
        using var doc = JsonDocument.Parse(VerificationReportWriter.ToJson(r));
        doc.RootElement.GetProperty("kl_mean").ValueKind.Should().Be(JsonValueKind.Null);
        doc.RootElement.GetProperty("passed").GetBoolean().Should().BeFalse();
        doc.RootElement.GetProperty("failures")[0].GetString().Should().Be("nonfinite_logits");
    }

    [Fact]
    public void RoutingAgreementCountsChangedExpertSetsAtStablePositions()
    {
        var g = Dsv3.Value;
        var unstable = UnstableFromFile(GoldenSetTests.Eval("tiny-dsv3"), out int n);
        var routing = GoldenRouting(g);
        int k = g.TopK, changed = 0;
        for (int p = 0; p < n; p++)
        {
            // Reordering within a position is not a change.
            Array.Reverse(routing[0], p * k, k);
            if (unstable[p] || p % 5 != 0) continue;
            // Replace one expert of layer 1 with one not in the set (ids are < 16).
            var set = routing[1].AsSpan(p * k, k);
            int fresh = 0;
            while (set.Contains(fresh)) fresh++;
            set[p % k] = fresh;
            changed++;
        }
        int stable = n - unstable.Count(x => x);
        var r = GoldenComparer.Compare(g, new ArtifactOutputs((float[])g.Logits.Clone(), null, routing), VerificationTolerances.ForPreset("fp32"));
        r.RoutingAgreement.Should().Be(1 - (double)changed / (stable * g.MoeLayers));
        r.Unstable.RoutingAgreement.Should().Be(1);
        r.Passed.Should().BeFalse();
        var fail = r.Failures.Should().ContainSingle().Subject;
        fail.Metric.Should().Be("routing_agreement");
        fail.Excess.Should().BeApproximately((double)changed / (stable * g.MoeLayers), 1e-12);
    }

    [Fact]
    public void ChangedRoutingAtUnstablePositionsOnlyIsReportedButPasses()
    {
        var g = Dsv3.Value;
        var unstable = UnstableFromFile(GoldenSetTests.Eval("tiny-dsv3"), out int n);
        var routing = GoldenRouting(g);
        var a = (float[])g.Logits.Clone();
        int k = g.TopK, v = g.Vocab;
        for (int p = 0; p < n; p++)
        {
            if (!unstable[p]) continue;
            routing[2][p * k] = routing[2][p * k] == 15 ? 14 : 15;       // a near-tie resolved the other way
            if (routing[2].AsSpan(p * k + 1, k - 1).Contains(routing[2][p * k])) routing[2][p * k] = -1;
            for (int i = 0; i < v; i++) a[p * v + i] += 3f;               // big diff, same distribution
        }
        int unstableCount = unstable.Count(x => x);
        unstableCount.Should().BeGreaterThan(0);

        var r = GoldenComparer.Compare(g, new ArtifactOutputs(a, null, routing), VerificationTolerances.ForPreset("fp32"));
        r.StablePositions.Should().Be(n - unstableCount);
        r.Unstable.Count.Should().Be(unstableCount);
        r.Unstable.Worst.Should().HaveCount(Math.Min(unstableCount, GoldenComparer.WorstUnstableListed));
        r.Unstable.Worst.Should().AllSatisfy(w =>
        {
            unstable[w.Batch * g.Seq + w.Position].Should().BeTrue();
            w.MinRoutingMargin.Should().BeLessThan(1e-4);
            w.MaxAbsLogitDiff.Should().BeApproximately(3, 1e-5);
        });
        r.Unstable.MaxAbsLogitDiff.Should().BeApproximately(3, 1e-5);
        r.Unstable.RoutingAgreement.Should().BeApproximately(1 - 1.0 / g.MoeLayers, 1e-12);
        r.MaxAbsLogitDiff.Should().BeApproximately(3, 1e-5);   // reported, not hidden
        r.MaxAbsLogitDiffStable.Should().Be(0);
        r.RoutingAgreement.Should().Be(1);
        r.Passed.Should().BeTrue();
        VerificationReportWriter.ToText(r).Should().Contain($"unstable positions (near-tie routing): {unstableCount}");
    }

    [Fact]
    public void FailedLimitIsNamedWithItsExcess()
    {
        var g = Fp8.Value;
        var a = (float[])g.Logits.Clone();
        a[0] += 0.01f;
        var tol = VerificationTolerances.ForPreset("gguf-f32") with { KlMax = 1 };
        var r = GoldenComparer.Compare(g, new ArtifactOutputs(a, null, null), tol);
        r.MaxAbsLogitDiff.Should().BeApproximately(0.01, 1e-6);
        r.Passed.Should().BeFalse();
        var f = r.Failures.Should().ContainSingle().Subject;
        (f.Metric, f.Comparison, f.Limit).Should().Be(("max_abs_logit_diff", "<=", 1e-3));
        f.Excess.Should().BeApproximately(0.009, 1e-6);
        r.Checks.Should().Contain(c => c.Metric == "kl_max" && c.Passed);
        VerificationReportWriter.ToText(r).Should().Contain("FAIL: max_abs_logit_diff = 0.01").And.Contain("FAILED");

        var loose = GoldenComparer.Compare(g, new ArtifactOutputs(a, null, null), tol with { MaxAbsLogitDiff = 0.02 });
        loose.Passed.Should().BeTrue();
    }

    [Fact]
    public void RoutingLimitIsSkippedWithoutRoutingData()
    {
        var g = Fp8.Value;
        var r = GoldenComparer.Compare(g, new ArtifactOutputs((float[])g.Logits.Clone(), null, null), VerificationTolerances.ForPreset("fp32"));
        r.RoutingAgreement.Should().BeNull();
        var c = r.Checks.Single(c => c.Metric == "routing_agreement");
        c.Skipped.Should().BeTrue();
        c.Note.Should().Contain("no routing data");
        r.Passed.Should().BeTrue();
    }

    [Fact]
    public void LayerDiagnosticsNameTheFirstDivergentLayer()
    {
        var g = Dsv3.Value;
        var hidden = GoldenHidden(g);
        for (int i = 0; i < hidden[2].Length; i++) hidden[2][i] *= 1.01f;        // layer 1 output off by 1%
        for (int i = 0; i < hidden[3].Length; i += 2) hidden[3][i] += 1f;
        var r = GoldenComparer.Compare(g, new ArtifactOutputs((float[])g.Logits.Clone(), hidden, null), VerificationTolerances.ReportOnly);
        var lr = r.Layers!;
        lr.FirstDivergentIndex.Should().Be(2);
        lr.FirstDivergentName.Should().Be("layer 1");
        lr.Layers[0].RelativeError.Should().Be(0);
        lr.Layers[1].RelativeError.Should().Be(0);
        lr.Layers[2].RelativeError.Should().BeApproximately(0.01, 1e-6);
        lr.Layers[4].Name.Should().Be("layer 3 + final norm");
        VerificationReportWriter.ToText(r).Should().Contain("first divergent: layer 1");
    }

    [Fact]
    public void PercentileInterpolatesLikeNumpy()
    {
        // numpy.percentile([1, 2, 3, 4], 99) = 3.97
        GoldenComparer.Percentile([4, 1, 3, 2], 0.99).Should().BeApproximately(3.97, 1e-12);
        GoldenComparer.Percentile([5], 0.99).Should().Be(5);
    }

    [Fact]
    public void UnknownPresetIsRejected()
    {
        var act = () => VerificationTolerances.ForPreset("fp64");
        act.Should().Throw<ArgumentException>().WithMessage("*unknown format preset 'fp64'*fp32*");
        // Every preset but 'report' sets limits; 'report' sets none (and is REPORTED, never PASSED).
        foreach (var name in VerificationTolerances.PresetNames)
            VerificationTolerances.ForPreset(name).SetsNoLimit.Should().Be(name == "report", name);
        VerificationTolerances.ForPreset("q4_k_m").KlMean.Should().Be(1.5e-2);
    }
}
