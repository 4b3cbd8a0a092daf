namespace Converter.Verification;

/// <summary>
/// Compares an artifact's outputs with a golden set and judges them against tolerances, in the manner of a
/// tolerant image comparer: every metric is computed and reported, limits only decide <c>passed</c>.
/// Positions whose routing is a near-tie are reported separately, never dropped.
/// </summary>
public static class GoldenComparer
{
    /// <summary>How many unstable positions the report lists (worst max-abs-diff first).</summary>
    public const int WorstUnstableListed = 10;

    public static VerificationReport Compare(GoldenSet golden, ArtifactOutputs outputs, VerificationTolerances tolerances,
        string? artifact = null)
    {
        golden.CheckOutputs(outputs, artifact ?? "artifact");
        int b = golden.Batch, s = golden.Seq, v = golden.Vocab, n = golden.Positions;
        var stable = golden.StableMask(tolerances.StableMarginThreshold, tolerances.SelectionMarginThreshold);

        // Per-position results, filled in parallel; the reductions below are sequential and cheap (n << n*v).
        var results = new PositionResult[n];
        var gl = golden.Logits ?? [];
        var al = outputs.Logits;
        var tokens = golden.Tokens;
        var c = golden.Compact;
        Parallel.For(0, n, p =>
        {
            int pos = p % s;
            int target = pos < s - 1 ? tokens[p + 1] : -1;
            results[p] = c == null
                ? PositionMetrics.Compute(gl.AsSpan(p * v, v), al.AsSpan(p * v, v), target)
                : PositionMetrics.ComputeCompact(al.AsSpan(p * v, v), c.TopIdx.AsSpan(p * c.K, c.K), c.TopLogProbs.AsSpan(p * c.K, c.K),
                    c.TailIdx.AsSpan(p * c.M, c.M), c.TailLogProbs.AsSpan(p * c.M, c.M), c.TailLogMass[p], c.LogSumExp[p], target);
        });

        int stableCount = 0, top1 = 0, top1Stable = 0, unstableTop1 = 0;
        double maxD = 0, maxDStable = 0, sumD = 0, klSum = 0, klMax = 0;
        double uMaxD = 0, uSumD = 0, uKlMax = 0;
        long nonFinite = 0;
        double nllSum = 0, goldenNllSum = 0, klTailSum = 0, klTailVar = 0;
        long entries = 0, uEntries = 0;
        var kls = new double[n];
        for (int p = 0; p < n; p++)
        {
            ref readonly var r = ref results[p];
            nonFinite += r.NonFinite;
            bool agree = r.ArtifactTop1 == r.GoldenTop1;
            maxD = NanMax(maxD, r.MaxAbsDiff);
            sumD += r.SumAbsDiff;
            entries += r.Entries;
            klSum += r.Kl;
            klTailSum += r.KlTail;
            klTailVar += r.KlTailVariance;
            klMax = NanMax(klMax, r.Kl);
            kls[p] = r.Kl;
            if (agree) top1++;
            if (stable[p])
            {
                stableCount++;
                maxDStable = NanMax(maxDStable, r.MaxAbsDiff);
                if (agree) top1Stable++;
            }
            else
            {
                uMaxD = NanMax(uMaxD, r.MaxAbsDiff);
                uSumD += r.SumAbsDiff;
                uEntries += r.Entries;
                uKlMax = NanMax(uKlMax, r.Kl);
                if (agree) unstableTop1++;
            }
            int pos = p % s;
            if (pos < s - 1)
            {
                nllSum += r.Nll;
                goldenNllSum += golden.Nll[p / s * (s - 1) + pos];
            }
        }

        int nllCount = b * (s - 1), unstableCount = n - stableCount;
        double nllMean = nllSum / nllCount, goldenNllMean = goldenNllSum / nllCount;
        var (routing, routingUnstable) = RoutingAgreement(golden, outputs.RoutingTopK, stable);
        var (selection, selectionUnstable) = SelectionAgreement(golden, outputs.Selections, stable);

        var report = new VerificationReport
        {
            Positions = n,
            StablePositions = stableCount,
            MaxAbsLogitDiff = maxD,
            MaxAbsLogitDiffStable = stableCount > 0 ? maxDStable : double.NaN,
            MeanAbsLogitDiff = sumD / Math.Max(entries, 1),
            Top1Agreement = (double)top1 / n,
            Top1AgreementStable = stableCount > 0 ? (double)top1Stable / stableCount : double.NaN,
            KlMean = klSum / n,
            KlP99 = Percentile(kls, 0.99),
            KlMax = klMax,
            NllMean = nllMean,
            GoldenNllMean = goldenNllMean,
            PplRatio = Math.Exp(nllMean - goldenNllMean),
            RoutingAgreement = routing,
            SelectionAgreement = selection,
            GoldenHasSelections = golden.HasSelections,
            Passed = false,
            Unstable = new UnstableSummary(unstableCount,
                unstableCount > 0 ? uMaxD : double.NaN,
                unstableCount > 0 ? uSumD / Math.Max(uEntries, 1) : double.NaN,
                unstableCount > 0 ? (double)unstableTop1 / unstableCount : double.NaN,
                unstableCount > 0 ? uKlMax : double.NaN,
                routingUnstable,
                WorstUnstable(golden, results, stable)) { SelectionAgreement = selectionUnstable },
            Checks = [],
            NonFiniteLogits = nonFinite,
            Preset = tolerances.Preset,
            Golden = golden.Path,
            Artifact = artifact,
            Compact = c == null ? null : new CompactSummary(c.K, c.M, MeanTailMass(c), (klSum - klTailSum) / n, Math.Sqrt(klTailVar) / n),
        };
        if (outputs.HiddenStates != null && golden.HiddenStates != null)
            report = report with { Layers = LayerDiagnostics.Compare(golden, outputs.HiddenStates, stable, tolerances.LayerRelativeErrorThreshold) };
        else if (outputs.ResidualStates != null && golden.ResidualStates != null)
            report = report with
            {
                // the final norm's output is the last hidden state the artifact lists
                Layers = LayerDiagnostics.CompareStreams(golden, outputs.ResidualStates, outputs.HiddenStates is { Length: > 0 } hs ? hs[^1] : null,
                    stable, tolerances.LayerRelativeErrorThreshold),
            };
        var checks = Judge(report, tolerances);
        bool passed = nonFinite == 0;
        foreach (var chk in checks) passed &= chk.Passed;
        return report with { Checks = checks, Passed = passed, ReportOnly = tolerances.SetsNoLimit && nonFinite == 0 };
    }

    private static double MeanTailMass(CompactLogits c)
    {
        double sum = 0;
        foreach (var lm in c.TailLogMass) sum += Math.Exp(lm);
        return sum / c.Positions;
    }

    /// <summary>Evaluates every set limit of <paramref name="t"/> on <paramref name="r"/>, in report-key order.</summary>
    public static IReadOnlyList<LimitCheck> Judge(VerificationReport r, VerificationTolerances t)
    {
        var checks = new List<LimitCheck>();
        AtMost(checks, "max_abs_logit_diff", r.MaxAbsLogitDiff, t.MaxAbsLogitDiff);
        AtMost(checks, "max_abs_logit_diff_stable", r.MaxAbsLogitDiffStable, t.MaxAbsLogitDiffStable,
            r.StablePositions == 0 ? "no stable positions" : null);
        AtMost(checks, "mean_abs_logit_diff", r.MeanAbsLogitDiff, t.MeanAbsLogitDiff);
        AtLeast(checks, "top1_agreement", r.Top1Agreement, t.Top1Agreement);
        AtLeast(checks, "top1_agreement_stable", r.Top1AgreementStable, t.Top1AgreementStable,
            r.StablePositions == 0 ? "no stable positions" : null);
        AtMost(checks, "kl_mean", r.KlMean, t.KlMean);
        AtMost(checks, "kl_p99", r.KlP99, t.KlP99);
        AtMost(checks, "kl_max", r.KlMax, t.KlMax);
        AtMost(checks, "ppl_ratio", r.PplRatio, t.PplRatio);
        if (t.RoutingAgreement is double ra)
        {
            if (r.RoutingAgreement is double actual)
                AtLeast(checks, "routing_agreement", actual, ra);
            else
                checks.Add(new LimitCheck("routing_agreement", ">=", ra, null, true, 0,
                    "not checked: the artifact or the golden has no routing data"));
        }
        // Only where the golden selects (DeepSeek-V4's indexer): other families' reports keep their checks.
        if (t.SelectionAgreement is double sa && r.GoldenHasSelections)
        {
            if (r.SelectionAgreement is double actual)
                AtLeast(checks, "selection_agreement", actual, sa);
            else
                checks.Add(new LimitCheck("selection_agreement", ">=", sa, null, true, 0,
                    "not checked: the artifact returns no sparse-attention selections"));
        }
        return checks;
    }

    private static void AtMost(List<LimitCheck> checks, string metric, double actual, double? limit, string? note = null)
    {
        if (limit is not double l) return;
        bool ok = actual <= l; // NaN fails
        checks.Add(new LimitCheck(metric, "<=", l, actual, ok, ok ? 0 : actual - l, note ?? (double.IsNaN(actual) ? "value is NaN" : null)));
    }

    private static void AtLeast(List<LimitCheck> checks, string metric, double actual, double? limit, string? note = null)
    {
        if (limit is not double l) return;
        bool ok = actual >= l;
        checks.Add(new LimitCheck(metric, ">=", l, actual, ok, ok ? 0 : l - actual, note ?? (double.IsNaN(actual) ? "value is NaN" : null)));
    }

    /// <summary>
    /// Share of (MoE layer, position) pairs whose expert set equals the golden's, over stable and over unstable
    /// positions; nulls when either side has no routing.
    /// </summary>
    public static (double? Stable, double? Unstable) RoutingAgreement(GoldenSet golden, int[][]? artifact, bool[] stable)
    {
        if (artifact == null || golden.RouteTopK == null) return (null, null);
        int n = golden.Positions, k = golden.TopK;
        long agreeS = 0, totalS = 0, agreeU = 0, totalU = 0;
        for (int m = 0; m < golden.MoeLayers; m++)
        {
            var gl = golden.RouteTopK.AsSpan(m * n * k, n * k);
            var al = artifact[m];
            for (int p = 0; p < n; p++)
            {
                bool same = SameSet(gl.Slice(p * k, k), al.AsSpan(p * k, k));
                if (stable[p]) { totalS++; if (same) agreeS++; }
                else { totalU++; if (same) agreeU++; }
            }
        }
        return (totalS > 0 ? (double)agreeS / totalS : double.NaN, totalU > 0 ? (double)agreeU / totalU : null);
    }

    /// <summary>
    /// Share of (selecting layer, position) pairs whose attendable selected entries (ids &gt;= 0, as a set) equal the
    /// golden's, over stable and over unstable positions; nulls when either side has no selections. The artifact may
    /// return more picks a position than the golden (its k counts a padding entry): only the attendable ones compare.
    /// </summary>
    public static (double? Stable, double? Unstable) SelectionAgreement(GoldenSet golden, int[][]? artifact, bool[] stable)
    {
        if (artifact == null || golden.SelectionTopK == null) return (null, null);
        int n = golden.Positions, k = golden.SelectionK;
        long agreeS = 0, totalS = 0, agreeU = 0, totalU = 0;
        var want = new List<int>();
        var have = new List<int>();
        for (int m = 0; m < golden.SelectionLayers; m++)
        {
            var gl = golden.SelectionTopK.AsSpan(m * n * k, n * k);
            var al = artifact[m];
            int ak = al.Length / n;
            for (int p = 0; p < n; p++)
            {
                want.Clear();
                have.Clear();
                foreach (var x in gl.Slice(p * k, k)) if (x >= 0) want.Add(x);
                foreach (var x in al.AsSpan(p * ak, ak)) if (x >= 0) have.Add(x);
                want.Sort();
                have.Sort();
                bool same = want.SequenceEqual(have);
                if (stable[p]) { totalS++; if (same) agreeS++; }
                else { totalU++; if (same) agreeU++; }
            }
        }
        return (totalS > 0 ? (double)agreeS / totalS : double.NaN, totalU > 0 ? (double)agreeU / totalU : null);
    }

    /// <summary>True when both hold the same ids regardless of order (k is small; duplicates compared by count).</summary>
    public static bool SameSet(ReadOnlySpan<int> a, ReadOnlySpan<int> b)
    {
        for (int i = 0; i < a.Length; i++)
        {
            int x = a[i], ca = 0, cb = 0;
            for (int j = 0; j < a.Length; j++)
            {
                if (a[j] == x) ca++;
                if (b[j] == x) cb++;
            }
            if (ca != cb) return false;
        }
        return true;
    }

    /// <summary>Percentile with linear interpolation between order statistics (numpy's default); NaN if any is NaN.</summary>
    public static double Percentile(double[] values, double q)
    {
        if (values.Length == 0) return double.NaN;
        var sorted = (double[])values.Clone();
        foreach (var x in sorted)
            if (double.IsNaN(x)) return double.NaN;
        Array.Sort(sorted);
        double idx = q * (sorted.Length - 1);
        int lo = (int)Math.Floor(idx), hi = Math.Min(lo + 1, sorted.Length - 1);
        return sorted[lo] + (idx - lo) * (sorted[hi] - sorted[lo]);
    }

    private static IReadOnlyList<PositionDiff> WorstUnstable(GoldenSet golden, PositionResult[] results, bool[] stable)
    {
        var list = new List<PositionDiff>();
        for (int p = 0; p < results.Length; p++)
        {
            if (stable[p]) continue;
            var r = results[p];
            list.Add(new PositionDiff(p / golden.Seq, p % golden.Seq, golden.MinMargin(p), r.MaxAbsDiff, r.Kl,
                r.ArtifactTop1 == r.GoldenTop1, r.GoldenTop1, r.ArtifactTop1) { MinSelectionMargin = golden.MinSelectionMargin(p) });
        }
        // NaN rows first: they are the worst.
        list.Sort((x, y) => double.IsNaN(x.MaxAbsLogitDiff) ? (double.IsNaN(y.MaxAbsLogitDiff) ? 0 : -1)
            : double.IsNaN(y.MaxAbsLogitDiff) ? 1 : y.MaxAbsLogitDiff.CompareTo(x.MaxAbsLogitDiff));
        if (list.Count > WorstUnstableListed) list.RemoveRange(WorstUnstableListed, list.Count - WorstUnstableListed);
        return list;
    }

    private static double NanMax(double acc, double x) => double.IsNaN(acc) || double.IsNaN(x) ? double.NaN : Math.Max(acc, x);
}
