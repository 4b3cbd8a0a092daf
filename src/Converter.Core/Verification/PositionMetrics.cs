using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace Converter.Verification;

/// <summary>What one position's logits give against the golden's.</summary>
/// <param name="Kl">KL(golden || artifact) of the softmaxes, in float64.</param>
/// <param name="Nll">The artifact's -log softmax at the target token, or NaN without a target.</param>
public struct PositionResult
{
    public double MaxAbsDiff;
    public double SumAbsDiff;
    public double Kl;
    public double Nll;
    public int GoldenTop1;
    public int ArtifactTop1;
    public int NonFinite;
    /// <summary>Logits the differences were taken over: the vocabulary, or a compact golden's stored entries.</summary>
    public int Entries;
    /// <summary>Compact golden only: the tail's part of <see cref="Kl"/> (estimated from samples) and its estimated variance.</summary>
    public double KlTail, KlTailVariance;
}

/// <summary>
/// Per-position logit metrics. <see cref="Compute"/> is the vectorised kernel (no allocation; softmax sums in
/// float64); <see cref="ComputeScalar"/> is the plain reference it is tested against.
/// </summary>
public static class PositionMetrics
{
    /// <summary>Compares one row of logits. <paramref name="target"/> is the next token for the NLL, or -1.</summary>
    // AggressiveOptimization: verify compares once per process, so tier-0 code (with Vector256 calls not inlined)
    // would be what runs; this JITs the kernel fully optimised at first call.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static PositionResult Compute(ReadOnlySpan<float> golden, ReadOnlySpan<float> artifact, int target)
    {
        if (golden.Length != artifact.Length || golden.Length == 0)
            throw new ArgumentException($"rows of {golden.Length} and {artifact.Length} logits");
        int n = golden.Length;
        ref float g = ref MemoryMarshal.GetReference(golden);
        ref float a = ref MemoryMarshal.GetReference(artifact);

        // Pass 1 (float): maxima, abs diffs, non-finite count.
        var r = new PositionResult();
        float maxG = float.NegativeInfinity, maxA = float.NegativeInfinity, maxD = 0;
        double sumD = 0;
        int i = 0, nonFinite = 0;
        if (Vector256.IsHardwareAccelerated && n >= 8)
        {
            var vmaxG = Vector256.Create(float.NegativeInfinity);
            var vmaxA = vmaxG;
            var vmaxD = Vector256<float>.Zero;
            var vbad = Vector256<int>.Zero;
            var vinf = Vector256.Create(float.PositiveInfinity);
            var vsumD = Vector256<double>.Zero;
            for (; i <= n - 8; i += 8)
            {
                var vg = Vector256.LoadUnsafe(ref g, (nuint)i);
                var va = Vector256.LoadUnsafe(ref a, (nuint)i);
                vmaxG = Vector256.Max(vmaxG, vg);
                // Non-finite lanes (|x| == inf or NaN) are counted and masked out of the maxima.
                var finite = Vector256.LessThan(Vector256.Abs(va), vinf);
                vbad += Vector256.ConditionalSelect(finite.AsInt32(), Vector256<int>.Zero, Vector256.Create(1));
                var vaF = Vector256.ConditionalSelect(finite, va, Vector256.Create(float.NegativeInfinity));
                vmaxA = Vector256.Max(vmaxA, vaF);
                var d = Vector256.ConditionalSelect(finite, Vector256.Abs(va - vg), Vector256<float>.Zero);
                vmaxD = Vector256.Max(vmaxD, d);
                var (dLo, dHi) = Vector256.Widen(d);
                vsumD += dLo + dHi;
            }
            for (int k = 0; k < 8; k++)
            {
                maxG = MathF.Max(maxG, vmaxG.GetElement(k));
                maxA = MathF.Max(maxA, vmaxA.GetElement(k));
                maxD = MathF.Max(maxD, vmaxD.GetElement(k));
            }
            nonFinite = Vector256.Sum(vbad);
            sumD = Vector256.Sum(vsumD);
        }
        for (; i < n; i++)
        {
            float gi = Unsafe.Add(ref g, i), ai = Unsafe.Add(ref a, i);
            maxG = MathF.Max(maxG, gi);
            if (!float.IsFinite(ai)) { nonFinite++; continue; }
            maxA = MathF.Max(maxA, ai);
            float d = MathF.Abs(ai - gi);
            maxD = MathF.Max(maxD, d);
            sumD += d;
        }
        r.GoldenTop1 = FirstIndexOf(golden, maxG);
        r.NonFinite = nonFinite;
        if (nonFinite > 0)
        {
            // A broken row: every metric that depends on it is NaN, and top-1 cannot agree.
            r.MaxAbsDiff = r.SumAbsDiff = r.Kl = r.Nll = double.NaN;
            r.ArtifactTop1 = -1;
            return r;
        }
        r.ArtifactTop1 = FirstIndexOf(artifact, maxA);
        r.MaxAbsDiff = maxD;
        r.SumAbsDiff = sumD;
        r.Entries = n;

        // Pass 2 (double): sG = sum e^(g-maxG), sGD = sum e^(g-maxG) (g-a), sA = sum e^(a-maxA).
        // KL = sum p_g (log p_g - log p_a) = sGD/sG - (lseG - lseA), using (g - lseG) - (a - lseA).
        double sG = 0, sGD = 0, sA = 0;
        i = 0;
        if (Vector256.IsHardwareAccelerated && n >= 8)
        {
            Vector256<double> vsG = default, vsGD = default, vsA = default;
            var vmG = Vector256.Create((double)maxG);
            var vmA = Vector256.Create((double)maxA);
            for (; i <= n - 8; i += 8)
            {
                var vg = Vector256.LoadUnsafe(ref g, (nuint)i);
                var va = Vector256.LoadUnsafe(ref a, (nuint)i);
                var (gLo, gHi) = Vector256.Widen(vg);
                var (aLo, aHi) = Vector256.Widen(va);
                var eLo = Vector256.Exp(gLo - vmG);
                var eHi = Vector256.Exp(gHi - vmG);
                vsG += eLo + eHi;
                vsGD += eLo * (gLo - aLo) + eHi * (gHi - aHi);
                vsA += Vector256.Exp(aLo - vmA) + Vector256.Exp(aHi - vmA);
            }
            sG = Vector256.Sum(vsG);
            sGD = Vector256.Sum(vsGD);
            sA = Vector256.Sum(vsA);
        }
        for (; i < n; i++)
        {
            double gi = Unsafe.Add(ref g, i), ai = Unsafe.Add(ref a, i);
            double e = Math.Exp(gi - maxG);
            sG += e;
            sGD += e * (gi - ai);
            sA += Math.Exp(ai - maxA);
        }
        double lseG = maxG + Math.Log(sG), lseA = maxA + Math.Log(sA);
        r.Kl = Math.Max(0, sGD / sG - (lseG - lseA)); // KL >= 0; rounding can give -1e-17
        r.Nll = target >= 0 ? lseA - artifact[target] : double.NaN;
        return r;
    }

    /// <summary>
    /// One position against a compact golden (<see cref="CompactLogits"/>): KL = sum over the stored top-k of
    /// p_i f(u_i) plus tail mass / M times the sum over the tail samples of f(u_j), with u = log p - log q and
    /// f(u) = u + e^-u - 1; logit differences over the stored entries (golden logit = log-prob + log-sum-exp).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static PositionResult ComputeCompact(ReadOnlySpan<float> artifact, ReadOnlySpan<int> topIdx, ReadOnlySpan<float> topLp,
        ReadOnlySpan<int> tailIdx, ReadOnlySpan<float> tailLp, float tailLogMass, float lse, int target)
    {
        var r = new PositionResult { GoldenTop1 = topIdx[0] };
        int n = artifact.Length, nonFinite = 0;
        float maxA = float.NegativeInfinity;
        for (int i = 0; i < n; i++)
        {
            float a = artifact[i];
            if (!float.IsFinite(a)) { nonFinite++; continue; }
            if (a > maxA) maxA = a;
        }
        r.NonFinite = nonFinite;
        if (nonFinite > 0)
        {
            r.MaxAbsDiff = r.SumAbsDiff = r.Kl = r.Nll = double.NaN;
            r.ArtifactTop1 = -1;
            return r;
        }
        r.ArtifactTop1 = FirstIndexOf(artifact, maxA);
        double sA = 0;
        for (int i = 0; i < n; i++) sA += Math.Exp(artifact[i] - (double)maxA);
        double lseA = maxA + Math.Log(sA);
        double kl = 0, maxD = 0, sumD = 0;
        for (int j = 0; j < topIdx.Length; j++)
        {
            double lp = topLp[j], lq = artifact[topIdx[j]] - lseA;
            kl += Math.Exp(lp) * F(lp - lq);
            double d = Math.Abs(artifact[topIdx[j]] - ((double)topLp[j] + lse));
            maxD = Math.Max(maxD, d);
            sumD += d;
        }
        if (tailIdx.Length > 0 && !float.IsNegativeInfinity(tailLogMass))
        {
            double tail = 0, tail2 = 0;
            for (int j = 0; j < tailIdx.Length; j++)
            {
                double lp = tailLp[j], lq = artifact[tailIdx[j]] - lseA, fj = F(lp - lq);
                tail += fj;
                tail2 += fj * fj;
                double d = Math.Abs(artifact[tailIdx[j]] - ((double)tailLp[j] + lse));
                maxD = Math.Max(maxD, d);
                sumD += d;
            }
            int m = tailIdx.Length;
            double mass = Math.Exp(tailLogMass), mean = tail / m;
            r.KlTail = mass * mean;
            // variance of the mean of m draws (i.i.d. bound; systematic sampling is not worse for smooth f)
            r.KlTailVariance = m > 1 ? mass * mass * Math.Max(0, tail2 / m - mean * mean) / (m - 1) : 0;
            kl += r.KlTail;
        }
        r.Kl = kl;
        r.MaxAbsDiff = maxD;
        r.SumAbsDiff = sumD;
        r.Entries = topIdx.Length + tailIdx.Length;
        r.Nll = target >= 0 ? lseA - artifact[target] : double.NaN;
        return r;
    }

    /// <summary>f(u) = u + e^-u - 1 (>= 0, ~u^2/2 near 0), without cancellation for small u.</summary>
    public static double F(double u)
    {
        if (Math.Abs(u) < 1e-3) return u * u * (0.5 - u * (1.0 / 6 - u / 24));
        return u + (Math.Exp(-u) - 1);
    }

    /// <summary>Reference: explicit log-softmaxes and the textbook KL sum, one element at a time.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static PositionResult ComputeScalar(ReadOnlySpan<float> golden, ReadOnlySpan<float> artifact, int target)
    {
        int n = golden.Length;
        var r = new PositionResult();
        for (int i = 0; i < n; i++)
            if (!float.IsFinite(artifact[i])) r.NonFinite++;
        r.GoldenTop1 = ArgMax(golden);
        if (r.NonFinite > 0)
        {
            r.MaxAbsDiff = r.SumAbsDiff = r.Kl = r.Nll = double.NaN;
            r.ArtifactTop1 = -1;
            return r;
        }
        r.ArtifactTop1 = ArgMax(artifact);
        for (int i = 0; i < n; i++)
        {
            double d = Math.Abs((double)artifact[i] - golden[i]);
            r.MaxAbsDiff = Math.Max(r.MaxAbsDiff, d);
            r.SumAbsDiff += d;
        }
        double lseG = LogSumExp(golden), lseA = LogSumExp(artifact);
        double kl = 0;
        for (int i = 0; i < n; i++)
        {
            double lpG = golden[i] - lseG, lpA = artifact[i] - lseA;
            kl += Math.Exp(lpG) * (lpG - lpA);
        }
        r.Kl = kl;
        r.Nll = target >= 0 ? lseA - artifact[target] : double.NaN;
        return r;
    }

    private static double LogSumExp(ReadOnlySpan<float> x)
    {
        double m = double.NegativeInfinity;
        foreach (var v in x) m = Math.Max(m, v);
        double s = 0;
        foreach (var v in x) s += Math.Exp(v - m);
        return m + Math.Log(s);
    }

    private static int ArgMax(ReadOnlySpan<float> x)
    {
        int best = 0;
        for (int i = 1; i < x.Length; i++)
            if (x[i] > x[best]) best = i;
        return best;
    }

    private static int FirstIndexOf(ReadOnlySpan<float> x, float value)
    {
        for (int i = 0; i < x.Length; i++)
            if (x[i] == value) return i;
        return 0;
    }
}
