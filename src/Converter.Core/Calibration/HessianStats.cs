using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using System.Text.Json.Nodes;
using Converter.Formats.Safetensors;
using Converter.Numerics.Int4;
using Converter.Tensors;

namespace Converter.Calibration;

/// <summary>Which input of an expert a Hessian describes: gate_proj and up_proj read the same input.</summary>
public enum ExpertInput { GateUp, Down }

/// <summary>
/// GPTQ's per-linear input statistics in a calibration folder: one file per MoE layer,
/// <c>stats/hessian.layer{L}.safetensors</c>, holding
/// <list type="bullet">
/// <item><c>experts.{E}.gate_up</c> F32 [hidden, hidden]: mean of x x^T over the tokens routed to expert E (input of gate_proj and up_proj);</item>
/// <item><c>experts.{E}.down</c> F32 [moe_intermediate, moe_intermediate]: the same over E's intermediate activations (input of down_proj);</item>
/// <item><c>experts.tokens</c> I64 [n_routed_experts]: how many tokens each expert's Hessians average (0: the expert's tensors may be absent);</item>
/// <item><c>pooled.gate_up</c> F32 [hidden, hidden]: mean over every token entering the layer's MoE.</item>
/// </list>
/// Hessians are means (X^T X / n): GPTQ's result does not depend on the overall scale, and means keep
/// layers of different token counts comparable. calibration.json lists the files under extra.stats.hessian.
/// </summary>
public static class HessianStats
{
    public const string Folder = "stats";

    public static string FileName(int layer) => $"hessian.layer{layer}.safetensors";

    public static string ExpertName(int expert, ExpertInput input) => $"experts.{expert}.{(input == ExpertInput.GateUp ? "gate_up" : "down")}";

    public const string TokensName = "experts.tokens", PooledGateUpName = "pooled.gate_up";

    /// <summary>Writes one layer's file (atomically) and records it in the manifest's extra.stats.hessian list (call <see cref="CalibrationData.Save"/> after).</summary>
    public static void WriteLayer(string calibrationDir, CalibrationData data, int layer, IReadOnlyList<HessianAccumulator?> gateUp,
        IReadOnlyList<HessianAccumulator?> down, HessianAccumulator? pooledGateUp)
    {
        var dir = Path.Combine(calibrationDir, Folder);
        Directory.CreateDirectory(dir);
        var plan = new List<TensorSpec> { new(TokensName, DType.I64, [gateUp.Count]) };
        var tokens = new long[gateUp.Count];
        var writes = new List<(string, HessianAccumulator)>();
        for (int e = 0; e < gateUp.Count; e++)
        {
            tokens[e] = gateUp[e]?.Count ?? 0;
            if (gateUp[e] is { Count: > 0 } g) writes.Add((ExpertName(e, ExpertInput.GateUp), g));
            if (down[e] is { Count: > 0 } d) writes.Add((ExpertName(e, ExpertInput.Down), d));
        }
        if (pooledGateUp is { Count: > 0 }) writes.Add((PooledGateUpName, pooledGateUp));
        foreach (var (n, a) in writes) plan.Add(new TensorSpec(n, DType.F32, [a.K, a.K]));
        var staging = Path.Combine(dir, $".layer{layer}");
        using (var w = new SafetensorsWriter(staging, plan, long.MaxValue, overwrite: true))
        {
            w.Write(TokensName, MemoryMarshal.AsBytes(tokens.AsSpan()));
            foreach (var (n, a) in writes) w.Write(n, MemoryMarshal.AsBytes(a.MeanF32().AsSpan()));
            w.Commit();
        }
        File.Move(Path.Combine(staging, "model.safetensors"), Path.Combine(dir, FileName(layer)), overwrite: true);
        Directory.Delete(staging, true);
        Record(data, layer);
    }

    /// <summary>
    /// Streams one layer's file when its experts' Hessians finish at different times (calibrate splits a layer's experts
    /// across passes): planned from the per-expert token counts, so every expert with tokens gets gate_up and down;
    /// experts are written in expert order, then <see cref="Commit"/> writes the pooled Hessian and renames the file
    /// into place. The bytes equal <see cref="WriteLayer"/>'s for the same accumulators.
    /// </summary>
    public sealed class LayerWriter : IDisposable
    {
        private readonly string _dir, _staging;
        private readonly long[] _tokens;
        private readonly int _hidden, _intermediate;
        private readonly bool _pooled;
        private readonly SafetensorsWriter _writer;
        private int _nextExpert;
        public int Layer { get; }

        /// <param name="tokens">Rows each expert's Hessians will average (its routed tokens), [n_routed_experts].</param>
        /// <param name="pooled">Whether <see cref="Commit"/> will get a pooled gate/up Hessian with rows.</param>
        public LayerWriter(string calibrationDir, int layer, IReadOnlyList<long> tokens, int hidden, int intermediate, bool pooled)
        {
            (Layer, _tokens, _hidden, _intermediate, _pooled) = (layer, tokens.ToArray(), hidden, intermediate, pooled);
            _dir = Path.Combine(calibrationDir, Folder);
            Directory.CreateDirectory(_dir);
            var plan = new List<TensorSpec> { new(TokensName, DType.I64, [_tokens.Length]) };
            for (int e = 0; e < _tokens.Length; e++)
            {
                if (_tokens[e] <= 0) continue;
                plan.Add(new TensorSpec(ExpertName(e, ExpertInput.GateUp), DType.F32, [hidden, hidden]));
                plan.Add(new TensorSpec(ExpertName(e, ExpertInput.Down), DType.F32, [intermediate, intermediate]));
            }
            if (pooled) plan.Add(new TensorSpec(PooledGateUpName, DType.F32, [hidden, hidden]));
            _staging = Path.Combine(_dir, $".layer{layer}");
            _writer = new SafetensorsWriter(_staging, plan, long.MaxValue, overwrite: true);
            _writer.Write(TokensName, MemoryMarshal.AsBytes(_tokens.AsSpan()));
        }

        /// <summary>Writes expert <paramref name="expert"/>'s Hessians (null for an expert without tokens); experts come in order.</summary>
        public void WriteExpert(int expert, HessianAccumulator? gateUp, HessianAccumulator? down)
        {
            if (expert != _nextExpert) throw new InvalidOperationException($"layer {Layer}: expert {expert} written, expected {_nextExpert}");
            _nextExpert++;
            long n = _tokens[expert];
            if ((gateUp?.Count ?? 0) != n || (down?.Count ?? 0) != n)
                throw new InvalidOperationException($"layer {Layer} expert {expert}: Hessians over {gateUp?.Count ?? 0}/{down?.Count ?? 0} rows, planned {n}");
            if (n == 0) return;
            if (gateUp!.K != _hidden || down!.K != _intermediate)
                throw new InvalidOperationException($"layer {Layer} expert {expert}: Hessians of {gateUp.K}/{down!.K}, planned {_hidden}/{_intermediate}");
            _writer.Write(ExpertName(expert, ExpertInput.GateUp), MemoryMarshal.AsBytes(gateUp.MeanF32().AsSpan()));
            _writer.Write(ExpertName(expert, ExpertInput.Down), MemoryMarshal.AsBytes(down.MeanF32().AsSpan()));
        }

        /// <summary>After every expert: writes the pooled Hessian, renames the file into place and lists it in the manifest.</summary>
        public void Commit(CalibrationData data, HessianAccumulator? pooledGateUp)
        {
            if (_nextExpert != _tokens.Length) throw new InvalidOperationException($"layer {Layer}: {_tokens.Length - _nextExpert} experts not written");
            if (_pooled != (pooledGateUp is { Count: > 0 })) throw new InvalidOperationException($"layer {Layer}: the pooled Hessian was {(_pooled ? "" : "not ")}planned");
            if (_pooled) _writer.Write(PooledGateUpName, MemoryMarshal.AsBytes(pooledGateUp!.MeanF32().AsSpan()));
            _writer.Commit();
            File.Move(Path.Combine(_staging, "model.safetensors"), Path.Combine(_dir, FileName(Layer)), overwrite: true);
            Directory.Delete(_staging, true);
            Record(data, Layer);
        }

        public void Dispose() => _writer.Dispose();
    }

    private static void Record(CalibrationData data, int layer)
    {
        var stats = data.Extra["stats"] as JsonObject ?? new JsonObject();
        data.Extra["stats"] = stats;
        var list = stats["hessian"] as JsonArray ?? new JsonArray();
        stats["hessian"] = list;
        var rel = Folder + "/" + FileName(layer);
        if (!list.Any(n => n?.GetValue<string>() == rel)) list.Add(rel);
    }

    /// <summary>One layer's Hessians, opened on demand.</summary>
    public sealed class LayerReader : IDisposable
    {
        private readonly SafetensorsFile _file;
        public int Layer { get; }
        public long[] Tokens { get; }

        private LayerReader(SafetensorsFile file, int layer, long[] tokens)
        {
            _file = file;
            Layer = layer;
            Tokens = tokens;
        }

        /// <summary>Opens stats/hessian.layer{L}.safetensors, or returns null when the folder has none for this layer.</summary>
        public static LayerReader? TryOpen(string calibrationDir, int layer, int experts)
        {
            var path = Path.Combine(calibrationDir, Folder, FileName(layer));
            if (!File.Exists(path)) return null;
            var f = SafetensorsFile.Open(path);
            try
            {
                if (!f.Contains(TokensName)) throw new InvalidDataException($"{path}: tensor '{TokensName}' is missing");
                var info = f.Info(TokensName);
                if (info.DType != DType.I64 || info.Shape.Length != 1 || info.Shape[0] != experts)
                    throw new InvalidDataException($"{path}: '{TokensName}' is {info.DType} {info.ShapeText}, expected I64 [{experts}]");
                using var d = f.Read(info);
                return new LayerReader(f, layer, d.As<long>().ToArray());
            }
            catch
            {
                f.Dispose();
                throw;
            }
        }

        /// <summary>The Hessian named (an expert's or the pooled one) as float64 [k, k], or null when absent.</summary>
        public double[]? Read(string name, int k)
        {
            if (!_file.Contains(name)) return null;
            var info = _file.Info(name);
            if (info.DType != DType.F32 || info.Shape.Length != 2 || info.Shape[0] != k || info.Shape[1] != k)
                throw new InvalidDataException($"{_file.Path}: '{name}' is {info.DType} {info.ShapeText}, expected F32 [{k}, {k}]");
            using var d = _file.Read(info);
            var f = d.As<float>();
            var h = new double[f.Length];
            for (int i = 0; i < f.Length; i++) h[i] = f[i];
            return h;
        }

        public void Dispose() => _file.Dispose();
    }
}

/// <summary>
/// Accumulates sum_t w_t x_t x_t^T (float64) over rows of inputs x [k], each row with a weight w_t (1 unless given),
/// for <see cref="HessianStats"/>. <see cref="Count"/> counts rows; the mean divides by the sum of the weights.
/// </summary>
public sealed class HessianAccumulator
{
    public int K { get; }
    public long Count { get; private set; }
    public double WeightSum { get; private set; }
    private readonly double[] _sum;

    public HessianAccumulator(int k)
    {
        K = k;
        _sum = new double[(long)k * k];
    }

    /// <summary>Adds rows x (row-major [rows, k]), each with weight 1.</summary>
    public void Add(ReadOnlySpan<float> x, int rows) => Add(x, rows, default);

    /// <summary>Rows added per sweep of the lower triangle (a rank-64 update instead of 64 rank-1 updates): at k = 7168 the
    /// triangle is 205 MB of float64, and sweeping it once per row made calibration memory-bound (90% of its time).</summary>
    private const int Block = 64;
    /// <summary>Triangle rows per parallel work item (a multiple of the kernel's 4), and columns per cache tile (a multiple of
    /// its 8; 64 x 256 doubles = 128 KB of panels).</summary>
    private const int RowChunk = 32, ColumnTile = 256;

    /// <summary>Threads for <see cref="Add(ReadOnlySpan{float}, int, ReadOnlySpan{float})"/> (0: all cores). Results do not
    /// depend on it: every element is summed in the same order whatever the thread that computes it.</summary>
    public int MaxThreads { get; init; }

    /// <summary>Adds rows x (row-major [rows, k]) with weights w [rows] (empty: weight 1 each).</summary>
    public void Add(ReadOnlySpan<float> x, int rows, ReadOnlySpan<float> weights)
    {
        if (!weights.IsEmpty && weights.Length < rows) throw new ArgumentException($"{weights.Length} weights for {rows} rows", nameof(weights));
        if (x.Length < (long)rows * K) throw new ArgumentException($"{x.Length} values for {rows} rows of {K}", nameof(x));
        for (int r = 0; r < rows; r++)
        {
            double wt = weights.IsEmpty ? 1 : weights[r];
            if (!(wt >= 0) || double.IsInfinity(wt)) throw new ArgumentException($"row {r} has weight {wt}", nameof(weights));
            WeightSum += wt;
        }
        if (rows < 8) AddRankOne(x, rows, weights);
        else AddBlocked(x, rows, weights);
        Count += rows;
    }

    /// <summary>A few rows (GPTQ tests feed one token at a time): one sweep of the triangle per row.</summary>
    private void AddRankOne(ReadOnlySpan<float> x, int rows, ReadOnlySpan<float> weights)
    {
        var xd = new double[K];
        for (int r = 0; r < rows; r++)
        {
            double wt = weights.IsEmpty ? 1 : weights[r];
            if (wt == 0) continue;
            var row = x.Slice(r * K, K);
            for (int i = 0; i < K; i++) xd[i] = row[i];
            for (int i = 0; i < K; i++)
                VectorKernels.Axpy(wt * xd[i], xd.AsSpan(0, i + 1), _sum.AsSpan(i * K, i + 1));
        }
    }

    private void AddBlocked(ReadOnlySpan<float> x, int rows, ReadOnlySpan<float> weights)
    {
        // A block of rows packed as GEMM panels: bp holds x[r, j] by 8 columns (bp[j / 8][r][j % 8]), ap holds
        // w_r x[r, i] by 4 columns (ap[i / 4][r][i % 4]), so the 4x8 kernel reads both contiguously. The block width is
        // the row count rounded up to 8, at most 64; padding rows are 0.
        int width = Math.Min(Block, (rows + 7) / 8 * 8);
        var bp = new double[(long)(K + 7) / 8 * 8 * width];
        var ap = new double[(long)(K + 3) / 4 * 4 * width];
        var po = new ParallelOptions { MaxDegreeOfParallelism = MaxThreads > 0 ? MaxThreads : -1 };
        for (int r0 = 0; r0 < rows; r0 += width)
        {
            int n = Math.Min(width, rows - r0);
            if (n < width) { Array.Clear(bp); Array.Clear(ap); }
            for (int r = 0; r < n; r++)
            {
                double wt = weights.IsEmpty ? 1 : weights[r0 + r];
                var row = x.Slice((r0 + r) * K, K);
                for (int i = 0; i < K; i++)
                {
                    bp[(i >> 3) * width * 8 + r * 8 + (i & 7)] = row[i];
                    ap[(i >> 2) * width * 4 + r * 4 + (i & 3)] = wt * row[i];
                }
            }
            Parallel.For(0, (K + RowChunk - 1) / RowChunk, po, chunk => AddChunk(ap, bp, width, chunk * RowChunk, Math.Min(K, (chunk + 1) * RowChunk)));
        }
    }

    /// <summary>sum[i, j] += sum_r ap[i, r] * bp[j, r] for triangle rows [i0, i1) (i0 a multiple of 4), j &lt;= i, one
    /// column tile at a time: 4x8 kernels below the diagonal, a scalar loop for the few entries beside it.</summary>
    private void AddChunk(double[] ap, double[] bp, int width, int i0, int i1)
    {
        bool vector = Vector256.IsHardwareAccelerated;
        for (int j0 = 0; j0 < i1; j0 += ColumnTile)
        {
            int j1 = Math.Min(j0 + ColumnTile, i1);
            for (int ib = i0; ib < i1; ib += 4)
            {
                int nRows = Math.Min(4, i1 - ib);
                if (ib + nRows - 1 < j0) continue;
                // 8-column panels wholly at or left of column ib, so at or below the diagonal for every row of the block
                int fullEnd = vector && nRows == 4 ? Math.Min(j1, (ib + 1) / 8 * 8) : j0;
                for (int jb = j0; jb < fullEnd; jb += 8) Kernel4x8(ap, bp, width, ib, jb);
                for (int i = ib; i < ib + nRows; i++)
                {
                    var dst = _sum.AsSpan(i * K, i + 1); // lower triangle, mirrored in Mean
                    for (int j = Math.Max(j0, fullEnd), end = Math.Min(j1, i + 1); j < end; j++)
                    {
                        double sum = 0;
                        for (int r = 0; r < width; r++) sum += ap[(i >> 2) * width * 4 + r * 4 + (i & 3)] * bp[(j >> 3) * width * 8 + r * 8 + (j & 7)];
                        dst[j] += sum;
                    }
                }
            }
        }
    }

    /// <summary>sum[ib..ib+3, jb..jb+7] += the block's rank-width update, in 8 registers.</summary>
    private void Kernel4x8(double[] ap, double[] bp, int width, int ib, int jb)
    {
        ref double pa = ref ap[(ib >> 2) * width * 4];
        ref double pb = ref bp[(jb >> 3) * width * 8];
        Vector256<double> c00 = Vector256<double>.Zero, c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00, c31 = c00;
        for (int r = 0; r < width; r++)
        {
            var b0 = Vector256.LoadUnsafe(ref pb, (nuint)(r * 8));
            var b1 = Vector256.LoadUnsafe(ref pb, (nuint)(r * 8 + 4));
            var a0 = Vector256.Create(Unsafe.Add(ref pa, r * 4));
            var a1 = Vector256.Create(Unsafe.Add(ref pa, r * 4 + 1));
            var a2 = Vector256.Create(Unsafe.Add(ref pa, r * 4 + 2));
            var a3 = Vector256.Create(Unsafe.Add(ref pa, r * 4 + 3));
            c00 = MulAdd(a0, b0, c00); c01 = MulAdd(a0, b1, c01);
            c10 = MulAdd(a1, b0, c10); c11 = MulAdd(a1, b1, c11);
            c20 = MulAdd(a2, b0, c20); c21 = MulAdd(a2, b1, c21);
            c30 = MulAdd(a3, b0, c30); c31 = MulAdd(a3, b1, c31);
        }
        ref double d = ref _sum[(long)ib * K + jb];
        AddTo(ref d, c00, c01);
        AddTo(ref Unsafe.Add(ref d, K), c10, c11);
        AddTo(ref Unsafe.Add(ref d, 2 * K), c20, c21);
        AddTo(ref Unsafe.Add(ref d, 3 * K), c30, c31);

        // one rounding where the CPU fuses (the branch is a JIT-time constant); the result is deterministic either way
        static Vector256<double> MulAdd(Vector256<double> a, Vector256<double> b, Vector256<double> c) =>
            Fma.IsSupported ? Fma.MultiplyAdd(a, b, c) : c + a * b;

        static void AddTo(ref double dst, Vector256<double> lo, Vector256<double> hi)
        {
            (Vector256.LoadUnsafe(ref dst) + lo).StoreUnsafe(ref dst);
            (Vector256.LoadUnsafe(ref dst, 4) + hi).StoreUnsafe(ref dst, 4);
        }
    }

    /// <summary>The weighted mean sum_t w_t x_t x_t^T / sum_t w_t as a full symmetric float64 matrix.</summary>
    public double[] Mean()
    {
        var h = new double[_sum.Length];
        double inv = WeightSum == 0 ? 0 : 1.0 / WeightSum;
        for (int i = 0; i < K; i++)
            for (int j = 0; j <= i; j++)
                h[(long)i * K + j] = h[(long)j * K + i] = _sum[(long)i * K + j] * inv;
        return h;
    }

    public float[] MeanF32()
    {
        var m = Mean();
        var f = new float[m.Length];
        for (int i = 0; i < m.Length; i++) f[i] = (float)m[i];
        return f;
    }
}
