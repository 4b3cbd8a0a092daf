using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Text.Json.Nodes;
using Converter.Formats.Safetensors;
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

    /// <summary>Adds rows x (row-major [rows, k]) with weights w [rows] (empty: weight 1 each).</summary>
    public void Add(ReadOnlySpan<float> x, int rows, ReadOnlySpan<float> weights)
    {
        if (!weights.IsEmpty && weights.Length < rows) throw new ArgumentException($"{weights.Length} weights for {rows} rows", nameof(weights));
        var xd = new double[K];
        for (int r = 0; r < rows; r++)
        {
            double wt = weights.IsEmpty ? 1 : weights[r];
            if (!(wt >= 0) || double.IsInfinity(wt)) throw new ArgumentException($"row {r} has weight {wt}", nameof(weights));
            WeightSum += wt;
            if (wt == 0) continue;
            var row = x.Slice(r * K, K);
            for (int i = 0; i < K; i++) xd[i] = row[i];
            for (int i = 0; i < K; i++)
            {
                double a = wt * xd[i];
                if (a == 0) continue;
                var dst = _sum.AsSpan(i * K, i + 1); // lower triangle, mirrored in Mean
                int j = 0;
                if (Vector256.IsHardwareAccelerated)
                {
                    var va = Vector256.Create(a);
                    ref double pd = ref MemoryMarshal.GetReference(dst);
                    ref double px = ref xd[0];
                    for (; j <= i + 1 - 4; j += 4)
                        (Vector256.LoadUnsafe(ref pd, (nuint)j) + va * Vector256.LoadUnsafe(ref px, (nuint)j)).StoreUnsafe(ref pd, (nuint)j);
                }
                for (; j <= i; j++) dst[j] += a * xd[j];
            }
        }
        Count += rows;
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
