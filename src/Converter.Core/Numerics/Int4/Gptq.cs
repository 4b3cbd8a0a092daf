using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace Converter.Numerics.Int4;

/// <summary>How GPTQ weighs a group's dequantization errors when it searches the group's clipping range.</summary>
public enum GptqClipObjective
{
    /// <summary>Plain squared error, as RTN's search (GPTQModel's / llm-compressor's <c>mse</c> observer).</summary>
    Mse,
    /// <summary>Each column's squared error times its input energy H_jj = mean x_j^2 (llama.cpp's imatrix weighting).</summary>
    InputEnergy,
    /// <summary>Each column's squared error over its GPTQ pivot [H^-1]_jj of the remaining columns: the loss GPTQ itself charges for it.</summary>
    Saliency,
}

/// <summary>Where act-order's static group scales come from.</summary>
public enum GptqGroupScales
{
    /// <summary>From the original weights, every group up front (llm-compressor's <c>actorder: weight</c>, AutoGPTQ's <c>static_groups</c>).</summary>
    Original,
    /// <summary>From the error-updated weights when the algorithm reaches the group's first column in activation order: the
    /// group's columns are all still unquantized then, so the scale sees the compensation already applied to them.</summary>
    Updated,
}

/// <summary>GPTQ settings: dampening as a fraction of the mean Hessian diagonal, lazy-update block width,
/// activation order, and the clipping search used when a group's scale is chosen. The defaults (act-order, scales from
/// the updated weights, saliency-weighted clipping) were chosen on a validation split of tiny-dsv3's calibration text
/// (README, "INT4 accuracy"); <see cref="Textbook"/> is the reference algorithm.</summary>
public sealed record GptqOptions(double PercDamp = 0.01, int BlockSize = 128, bool ActOrder = true)
{
    public Int4ClipSearch Clip { get; init; } = Int4ClipSearch.Default;
    public GptqClipObjective ClipObjective { get; init; } = GptqClipObjective.Saliency;
    /// <summary>With act-order: where the (static, contiguous) group scales come from.</summary>
    public GptqGroupScales GroupScales { get; init; } = GptqGroupScales.Updated;

    /// <summary>The paper's GPTQ: input order, each group's scale by plain MSE on the updated weights.</summary>
    public static GptqOptions Textbook => new(ActOrder: false) { ClipObjective = GptqClipObjective.Mse };
}

/// <summary>A Hessian prepared for GPTQ (shared by every weight that reads the same input, e.g. gate_proj and up_proj).</summary>
public sealed class GptqFactor
{
    public required int K { get; init; }
    /// <summary>Upper Cholesky factor of the (permuted, dampened) inverse Hessian, [K, K] row-major.</summary>
    public required float[] U { get; init; }
    /// <summary>Processing order: column p of the factor is input column Perm[p] (identity without act-order).</summary>
    public required int[] Perm { get; init; }
    public required bool[] Dead { get; init; }
    public required bool ActOrder { get; init; }
    /// <summary>Position of input column c in the processing order.</summary>
    public required int[] InvPerm { get; init; }
    /// <summary>Undampened Hessian diagonal per input column (0 for dead inputs).</summary>
    public required double[] Diagonal { get; init; }

    public static GptqFactor Create(ReadOnlySpan<double> hessian, int k, GptqOptions options, int maxThreads = -1)
    {
        var perm = new int[k];
        for (int i = 0; i < k; i++) perm[i] = i;
        double[] h;
        if (options.ActOrder)
        {
            var diag = new double[k];
            for (int i = 0; i < k; i++) diag[i] = hessian[i * k + i];
            // Descending diagonal, stable: the columns with the largest input energy are quantized first.
            perm = Enumerable.Range(0, k).OrderBy(i => -diag[i]).ThenBy(i => i).ToArray();
            h = new double[(long)k * k];
            for (int i = 0; i < k; i++)
                for (int j = 0; j < k; j++) h[(long)i * k + j] = hessian[perm[i] * k + perm[j]];
        }
        else h = hessian.ToArray();
        var u = HessianFactor.InverseCholeskyUpper(h, k, options.PercDamp, out var deadPermuted, maxThreads);
        var dead = new bool[k];
        var inv = new int[k];
        var hd = new double[k];
        for (int p = 0; p < k; p++)
        {
            dead[perm[p]] = deadPermuted[p];
            inv[perm[p]] = p;
        }
        for (int c = 0; c < k; c++) hd[c] = hessian[c * k + c];
        return new GptqFactor { K = k, U = u, Perm = perm, Dead = dead, ActOrder = options.ActOrder, InvPerm = inv, Diagonal = hd };
    }
}

/// <summary>
/// GPTQ (Frantar et al. 2022) for INT4 groups along K. Columns are quantized in order (or in activation
/// order), each column's error divided by the factor's diagonal is spread over the columns not yet quantized,
/// within a block of <see cref="GptqOptions.BlockSize"/> columns at once and to the rest lazily at block end.
/// Rows are independent given the factor, so tiles of rows run in parallel.
/// Group scales: without act-order a group's scale is chosen from the updated weights when the algorithm
/// reaches its first column; with act-order ("static groups") every group's scale is chosen up front from the
/// original weights, so groups stay contiguous in the stored layout and no g_idx is needed.
/// Dead inputs (zero Hessian diagonal) get weight 0, as the reference implementation does.
/// </summary>
public static class Gptq
{
    private const int RowTile = 16;

    public static Int4Weight Quantize(ReadOnlySpan<float> weight, int rows, int cols, ReadOnlySpan<double> hessian, Int4Scheme scheme,
        GptqOptions options, int maxThreads = -1, string tensor = "weight")
    {
        scheme.CheckShape(rows, cols, tensor);
        if (hessian.Length != (long)cols * cols)
            throw new InvalidDataException($"tensor '{tensor}': Hessian has {hessian.Length} values, expected [{cols}, {cols}]");
        return Quantize(weight, rows, cols, GptqFactor.Create(hessian, cols, options, maxThreads), scheme, options, maxThreads, tensor);
    }

    public static Int4Weight Quantize(ReadOnlySpan<float> weight, int rows, int cols, GptqFactor factor, Int4Scheme scheme,
        GptqOptions options, int maxThreads = -1, string tensor = "weight")
    {
        scheme.CheckShape(rows, cols, tensor);
        if (factor.K != cols) throw new InvalidDataException($"tensor '{tensor}': Hessian is [{factor.K}, {factor.K}], weight has {cols} inputs");
        if (options.BlockSize % scheme.GroupSize != 0)
            throw new ArgumentException($"GPTQ block size {options.BlockSize} must be a multiple of the group size {scheme.GroupSize}");
        var result = Int4Weight.Allocate(rows, cols, scheme);
        int tiles = (rows + RowTile - 1) / RowTile;
        var importance = Importance(factor, options.ClipObjective); // per input column: the same for every tile
        unsafe
        {
            fixed (float* p = weight)
            {
                var w = (nint)p;
                Parallel.For(0, tiles, new ParallelOptions { MaxDegreeOfParallelism = maxThreads }, t =>
                {
                    int r0 = t * RowTile, n = Math.Min(RowTile, rows - r0);
                    QuantizeTile(new ReadOnlySpan<float>((float*)w + (long)r0 * cols, n * cols), r0, n, cols, factor, importance, scheme, options, result);
                });
            }
        }
        return result;
    }

    private static void QuantizeTile(ReadOnlySpan<float> src, int r0, int n, int k, GptqFactor f, float[]? importance, Int4Scheme scheme,
        GptqOptions o, Int4Weight res)
    {
        int g = scheme.GroupSize, groups = k / g, bs = o.BlockSize;
        var w = new float[n * k];
        var err = new float[n * bs];
        var scratch = new sbyte[g];
        var scale = new float[n * groups];
        var zero = new float[n * groups];
        var values = new float[g];
        var groupSet = new bool[groups];
        bool lazyGroups = !f.ActOrder || o.GroupScales == GptqGroupScales.Updated;
        // Working copy in processing order, dead inputs zeroed.
        for (int r = 0; r < n; r++)
            for (int p = 0; p < k; p++)
            {
                int c = f.Perm[p];
                w[r * k + p] = f.Dead[c] ? 0f : src[r * k + c];
            }
        if (!lazyGroups)
        {
            for (int r = 0; r < n; r++)
                for (int gi = 0; gi < groups; gi++)
                {
                    for (int j = 0; j < g; j++)
                    {
                        int c = gi * g + j;
                        values[j] = f.Dead[c] ? 0f : src[r * k + c];
                    }
                    SetGroup(values, r, gi);
                }
        }

        void SetGroup(ReadOnlySpan<float> v, int r, int gi)
        {
            (ushort s, sbyte z) sz;
            if (importance == null) sz = Int4GroupQuantizer.QuantizeGroup(v, scheme.Symmetric, o.Clip, scratch);
            else sz = Int4GroupQuantizer.ChooseGroupWeighted(v, importance.AsSpan(gi * g, g), scheme.Symmetric, o.Clip);
            res.Scales[(r0 + r) * groups + gi] = sz.s;
            res.Zeros[(r0 + r) * groups + gi] = sz.z;
            scale[r * groups + gi] = Bf16.ToSingle(sz.s);
            zero[r * groups + gi] = sz.z;
        }

        var u = f.U;
        for (int i1 = 0; i1 < k; i1 += bs)
        {
            int i2 = Math.Min(k, i1 + bs), cnt = i2 - i1;
            for (int i = 0; i < cnt; i++)
            {
                int p = i1 + i, c = f.Perm[p], gi = c / g;
                if (lazyGroups && !groupSet[gi])
                {
                    // The group's columns (input order) are all unquantized; those past this block still lack this block's
                    // pending updates, which are added here: w - sum over the block's done columns of err * U.
                    groupSet[gi] = true;
                    for (int r = 0; r < n; r++)
                    {
                        for (int j = 0; j < g; j++)
                        {
                            int pj = f.InvPerm[gi * g + j];
                            float v = w[r * k + pj];
                            if (pj >= i2)
                                for (int t = 0; t < i; t++) v -= err[r * bs + t] * u[(long)(i1 + t) * k + pj];
                            values[j] = v;
                        }
                        SetGroup(values, r, gi);
                    }
                }
                float d = u[(long)p * k + p];
                var urow = u.AsSpan((int)((long)p * k + p + 1), i2 - p - 1);
                for (int r = 0; r < n; r++)
                {
                    float x = w[r * k + p], s = scale[r * groups + gi], z = zero[r * groups + gi];
                    sbyte q = Int4Scheme.Quantize(x, s, z);
                    res.Q[(long)(r0 + r) * k + c] = q;
                    float e = (x - Int4Scheme.Dequantize(q, s, (int)z)) / d;
                    err[r * bs + i] = e;
                    VectorKernels.Axpy(-e, urow, w.AsSpan(r * k + p + 1, urow.Length));
                }
            }
            LazyUpdate(w, err, u, n, k, bs, i1, cnt);
        }
    }

    /// <summary>Per input column, the weight of its squared error in the clipping search (null: plain MSE).</summary>
    private static float[]? Importance(GptqFactor f, GptqClipObjective objective)
    {
        if (objective == GptqClipObjective.Mse) return null;
        var imp = new float[f.K];
        for (int c = 0; c < f.K; c++)
        {
            if (f.Dead[c]) continue;
            int p = f.InvPerm[c];
            double d = f.U[(long)p * f.K + p];
            imp[c] = objective == GptqClipObjective.InputEnergy ? (float)f.Diagonal[c] : (float)(1 / (d * d));
        }
        return imp;
    }

    /// <summary>
    /// W[:, i2..] -= Err[:, 0..cnt] * U[i1..i2, i2..]: for each 32-column strip, each row keeps its 32 outputs in
    /// four vector accumulators while the block's cnt rows of U (one 16 KB strip, reused by every tile row) stream by.
    /// </summary>
    private static void LazyUpdate(float[] w, float[] err, float[] u, int n, int k, int bs, int i1, int cnt)
    {
        int i2 = i1 + cnt, c0 = i2;
        if (Vector256.IsHardwareAccelerated)
        {
            ref float pu = ref u[0];
            ref float pw = ref w[0];
            for (; c0 <= k - 32; c0 += 32)
                for (int r = 0; r < n; r++)
                {
                    nuint o = (nuint)(r * k + c0);
                    var a0 = Vector256.LoadUnsafe(ref pw, o);
                    var a1 = Vector256.LoadUnsafe(ref pw, o + 8);
                    var a2 = Vector256.LoadUnsafe(ref pw, o + 16);
                    var a3 = Vector256.LoadUnsafe(ref pw, o + 24);
                    for (int i = 0; i < cnt; i++)
                    {
                        var e = Vector256.Create(-err[r * bs + i]);
                        nuint uo = (nuint)((long)(i1 + i) * k + c0);
                        a0 += e * Vector256.LoadUnsafe(ref pu, uo);
                        a1 += e * Vector256.LoadUnsafe(ref pu, uo + 8);
                        a2 += e * Vector256.LoadUnsafe(ref pu, uo + 16);
                        a3 += e * Vector256.LoadUnsafe(ref pu, uo + 24);
                    }
                    a0.StoreUnsafe(ref pw, o);
                    a1.StoreUnsafe(ref pw, o + 8);
                    a2.StoreUnsafe(ref pw, o + 16);
                    a3.StoreUnsafe(ref pw, o + 24);
                }
        }
        if (c0 >= k) return;
        int len = k - c0;
        for (int i = 0; i < cnt; i++)
        {
            var urow = u.AsSpan((int)((long)(i1 + i) * k + c0), len);
            for (int r = 0; r < n; r++)
                VectorKernels.Axpy(-err[r * bs + i], urow, w.AsSpan(r * k + c0, len));
        }
    }
}
