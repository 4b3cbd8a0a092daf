using Converter.Numerics;
using Converter.Numerics.Int4;
using Xunit.Abstractions;

namespace Converter.Tests.Numerics.Int4;

public class GptqTests(ITestOutputHelper output)
{
    /// <summary>Correlated inputs: gaussian latents mixed by a random matrix, channels of very different energy.</summary>
    internal static float[] CorrelatedInputs(int tokens, int k, int seed)
    {
        var rng = new Random(seed);
        double Gauss() => Math.Sqrt(-2 * Math.Log(1 - rng.NextDouble())) * Math.Cos(2 * Math.PI * rng.NextDouble());
        int latent = k / 4;
        var mix = new double[latent * k];
        for (int i = 0; i < mix.Length; i++) mix[i] = Gauss();
        var chan = new double[k];
        for (int j = 0; j < k; j++) chan[j] = Math.Exp(Gauss());
        var x = new float[tokens * k];
        var z = new double[latent];
        for (int t = 0; t < tokens; t++)
        {
            for (int i = 0; i < latent; i++) z[i] = Gauss();
            for (int j = 0; j < k; j++)
            {
                double v = 0.3 * Gauss();
                for (int i = 0; i < latent; i++) v += z[i] * mix[i * k + j] / Math.Sqrt(latent);
                x[t * k + j] = (float)(v * chan[j]);
            }
        }
        return x;
    }

    internal static double[] Hessian(float[] x, int tokens, int k)
    {
        var h = new double[k * k];
        for (int t = 0; t < tokens; t++)
            for (int i = 0; i < k; i++)
            {
                double a = x[t * k + i];
                for (int j = 0; j < k; j++) h[i * k + j] += a * x[t * k + j];
            }
        for (int i = 0; i < h.Length; i++) h[i] /= tokens;
        return h;
    }

    internal static double OutputError(float[] x, int tokens, int k, float[] w, float[] wq, int n)
    {
        double e = 0;
        for (int t = 0; t < tokens; t++)
            for (int r = 0; r < n; r++)
            {
                double d = 0;
                for (int c = 0; c < k; c++) d += x[t * k + c] * ((double)w[r * k + c] - wq[r * k + c]);
                e += d * d;
            }
        return Math.Sqrt(e);
    }

    private static double[] Inverse(double[] a, int n)
    {
        var m = (double[])a.Clone();
        var inv = new double[n * n];
        for (int i = 0; i < n; i++) inv[i * n + i] = 1;
        for (int c = 0; c < n; c++)
        {
            int p = c;
            for (int r = c + 1; r < n; r++) if (Math.Abs(m[r * n + c]) > Math.Abs(m[p * n + c])) p = r;
            for (int j = 0; j < n; j++) { (m[c * n + j], m[p * n + j]) = (m[p * n + j], m[c * n + j]); (inv[c * n + j], inv[p * n + j]) = (inv[p * n + j], inv[c * n + j]); }
            double d = m[c * n + c];
            for (int j = 0; j < n; j++) { m[c * n + j] /= d; inv[c * n + j] /= d; }
            for (int r = 0; r < n; r++)
            {
                if (r == c) continue;
                double f = m[r * n + c];
                for (int j = 0; j < n; j++) { m[r * n + j] -= f * m[c * n + j]; inv[r * n + j] -= f * inv[c * n + j]; }
            }
        }
        return inv;
    }

    /// <summary>Reference: dampened H, explicit inverse, textbook Cholesky of the inverse, U = L^T.</summary>
    private static double[] ReferenceU(double[] h, int k, double percDamp)
    {
        var a = (double[])h.Clone();
        double mean = 0;
        for (int i = 0; i < k; i++) { if (a[i * k + i] == 0) a[i * k + i] = 1; mean += a[i * k + i]; }
        for (int i = 0; i < k; i++) a[i * k + i] += percDamp * mean / k;
        var inv = Inverse(a, k);
        var l = new double[k * k];
        for (int i = 0; i < k; i++)
            for (int j = 0; j <= i; j++)
            {
                double s = inv[i * k + j];
                for (int t = 0; t < j; t++) s -= l[i * k + t] * l[j * k + t];
                l[i * k + j] = i == j ? Math.Sqrt(s) : s / l[j * k + j];
            }
        var u = new double[k * k];
        for (int i = 0; i < k; i++) for (int j = i; j < k; j++) u[i * k + j] = l[j * k + i];
        return u;
    }

    [Fact]
    public void FactorIsTheUpperCholeskyOfTheDampenedInverse()
    {
        int k = 72, tokens = 300;
        var x = CorrelatedInputs(tokens, k, 1);
        var h = Hessian(x, tokens, k);
        for (int j = 0; j < k; j++) { h[5 * k + j] = 0; h[j * k + 5] = 0; } // a dead input
        var f = GptqFactor.Create(h, k, new GptqOptions(0.01, ActOrder: false));
        f.Dead[5].Should().BeTrue();
        var reference = ReferenceU(h, k, 0.01);
        double maxRel = 0;
        for (int i = 0; i < k; i++)
            for (int j = 0; j < k; j++)
            {
                if (j < i) f.U[i * k + j].Should().Be(0f);
                else maxRel = Math.Max(maxRel, Math.Abs(f.U[i * k + j] - reference[i * k + j]) / Math.Abs(reference[i * k + i]));
            }
        output.WriteLine($"max |U - U_ref| / U_ref[i,i] = {maxRel:E2}");
        maxRel.Should().BeLessThan(1e-5);
    }

    /// <summary>
    /// Textbook GPTQ, one column at a time, double precision, no lazy blocks. With act-order, columns go by decreasing
    /// H_jj (stable) and each contiguous group's scale is chosen when its first column comes up, from the row's current
    /// (error-updated) values; with saliency, the group search weighs column j's squared error by 1 / U_jj^2.
    /// </summary>
    private static sbyte[] ReferenceGptq(float[] w, int n, int k, double[] h, Int4Scheme scheme, double percDamp,
        bool actOrder = false, bool saliency = false)
    {
        var perm = Enumerable.Range(0, k).ToArray();
        if (actOrder) perm = perm.OrderBy(i => -h[i * k + i]).ThenBy(i => i).ToArray();
        var hp = new double[k * k];
        for (int i = 0; i < k; i++) for (int j = 0; j < k; j++) hp[i * k + j] = h[perm[i] * k + perm[j]];
        var u = ReferenceU(hp, k, percDamp);
        var pos = new int[k];
        for (int p = 0; p < k; p++) pos[perm[p]] = p;
        var q = new sbyte[n * k];
        int g = scheme.GroupSize;
        var scratch = new sbyte[g];
        for (int r = 0; r < n; r++)
        {
            var row = new double[k]; // processing order
            for (int p = 0; p < k; p++) row[p] = h[perm[p] * k + perm[p]] == 0 ? 0 : w[r * k + perm[p]];
            var scales = new float[k / g];
            var zeros = new int[k / g];
            var set = new bool[k / g];
            for (int p = 0; p < k; p++)
            {
                int c = perm[p], gi = c / g;
                if (!set[gi])
                {
                    set[gi] = true;
                    var grp = new float[g];
                    var imp = new float[g];
                    for (int i = 0; i < g; i++)
                    {
                        int pj = pos[gi * g + i];
                        grp[i] = (float)row[pj];
                        imp[i] = h[perm[pj] * k + perm[pj]] == 0 ? 0 : (float)(1 / (u[pj * k + pj] * u[pj * k + pj]));
                    }
                    var (sb, zb) = saliency
                        ? Int4GroupQuantizer.ChooseGroupWeighted(grp, imp, scheme.Symmetric, Int4ClipSearch.Default)
                        : Int4GroupQuantizer.QuantizeGroupScalar(grp, scheme.Symmetric, Int4ClipSearch.Default, scratch);
                    scales[gi] = Bf16.ToSingle(sb);
                    zeros[gi] = zb;
                }
                float x = (float)row[p];
                q[r * k + c] = Int4Scheme.Quantize(x, scales[gi], zeros[gi]);
                double e = (row[p] - Int4Scheme.Dequantize(q[r * k + c], scales[gi], zeros[gi])) / u[p * k + p];
                for (int j = p + 1; j < k; j++) row[j] -= e * u[p * k + j];
            }
        }
        return q;
    }

    [Theory]
    [InlineData(32, true, false, false)]
    [InlineData(64, false, false, false)]
    [InlineData(32, true, true, true)]
    [InlineData(64, false, true, true)]
    [InlineData(128, true, true, false)]
    public void MatchesTextbookGptqOnASmallMatrix(int group, bool symmetric, bool actOrder, bool saliency)
    {
        int n = 24, k = 256, tokens = 600;
        var x = CorrelatedInputs(tokens, k, 2);
        var h = Hessian(x, tokens, k);
        var w = Int4QuantizerTests.RandomWeight(n, k, 9);
        var scheme = new Int4Scheme(group, symmetric);
        // Blocks of 64 or 128 < K: with act-order, groups straddle lazy blocks, so their scales need the block's pending updates.
        var o = new GptqOptions(0.01, BlockSize: Math.Max(64, group), ActOrder: actOrder)
        {
            ClipObjective = saliency ? GptqClipObjective.Saliency : GptqClipObjective.Mse,
            GroupScales = GptqGroupScales.Updated,
        };
        var got = Gptq.Quantize(w, n, k, h, scheme, o);
        var reference = ReferenceGptq(w, n, k, h, scheme, 0.01, actOrder, saliency);
        int same = 0;
        for (int i = 0; i < reference.Length; i++) if (got.Q[i] == reference[i]) same++;
        double frac = (double)same / reference.Length;
        output.WriteLine($"g{group} {(symmetric ? "sym" : "asym")}{(actOrder ? " act-order" : "")}{(saliency ? " saliency" : "")}: " +
                         $"{frac:P2} of codes identical to the double-precision textbook GPTQ");
        frac.Should().BeGreaterThan(0.98, "lazy float32 blocks may flip a few near-tie roundings, no more");
    }

    /// <summary>With uniform importance the weighted search picks what the plain MSE search picks (up to near-ties).</summary>
    [Fact]
    public void WeightedClipSearchWithUniformImportanceIsTheMseSearch()
    {
        var w = Int4QuantizerTests.RandomWeight(64, 256, 3);
        var ones = Enumerable.Repeat(1f, 32).ToArray();
        var scratch = new sbyte[32];
        int same = 0, total = 0;
        foreach (bool sym in new[] { true, false })
            for (int i = 0; i < w.Length; i += 32, total++)
            {
                var grp = w.AsSpan(i, 32);
                if (Int4GroupQuantizer.ChooseGroupWeighted(grp, ones, sym, Int4ClipSearch.Default) ==
                    Int4GroupQuantizer.QuantizeGroupScalar(grp, sym, Int4ClipSearch.Default, scratch)) same++;
            }
        output.WriteLine($"{same} of {total} groups choose the same scale and zero point");
        same.Should().BeGreaterThan(total * 99 / 100);
    }

    [Theory]
    [InlineData(32, true, false)]
    [InlineData(128, true, false)]
    [InlineData(128, false, false)]
    [InlineData(128, true, true)]
    public void ReducesOutputErrorAgainstRtnOnCorrelatedInputs(int group, bool symmetric, bool actOrder)
    {
        int n = 64, k = 256, calibTokens = 1024, evalTokens = 512;
        var calib = CorrelatedInputs(calibTokens, k, 5);
        var h = Hessian(calib, calibTokens, k);
        // Held-out inputs from the same distribution (same mixing: same seed for mix, other tokens).
        var all = CorrelatedInputs(calibTokens + evalTokens, k, 5);
        var eval = all.AsSpan(calibTokens * k).ToArray();
        var w = Int4QuantizerTests.RandomWeight(n, k, 11);
        var scheme = new Int4Scheme(group, symmetric);
        var rtn = Int4GroupQuantizer.Quantize(w, n, k, scheme, Int4ClipSearch.Default).Dequantize();
        var gptq = Gptq.Quantize(w, n, k, h, scheme, new GptqOptions(0.01, ActOrder: actOrder)).Dequantize();
        double eRtn = OutputError(eval, evalTokens, k, w, rtn, n), eGptq = OutputError(eval, evalTokens, k, w, gptq, n);
        output.WriteLine($"g{group} {(symmetric ? "sym" : "asym")}{(actOrder ? " act-order" : "")}: ||X(W-Q)^T|| rtn {eRtn:F4}, gptq {eGptq:F4} ({100 * (1 - eGptq / eRtn):F1}% lower), held-out tokens");
        eGptq.Should().BeLessThan(0.8 * eRtn, "GPTQ must cut the output error by at least 20% on correlated inputs");
    }

    [Fact]
    public void DeadInputsGetZeroWeight()
    {
        int n = 8, k = 64;
        var x = CorrelatedInputs(200, k, 3);
        for (int t = 0; t < 200; t++) x[t * k + 10] = 0;
        var h = Hessian(x, 200, k);
        var w = Int4QuantizerTests.RandomWeight(n, k, 4);
        var q = Gptq.Quantize(w, n, k, h, new Int4Scheme(32, true), new GptqOptions()).Dequantize();
        for (int r = 0; r < n; r++) q[r * k + 10].Should().Be(0f);
    }
}
