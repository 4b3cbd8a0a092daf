using System.Runtime.InteropServices;
using Converter.Calibration;
using Converter.Formats.Safetensors;
using Converter.Models;
using Converter.Models.DeepseekV3;
using Converter.Tensors;

namespace Converter.Runtime.Calibration;

/// <summary>One MoE layer's accumulators during calibration: per-expert Hessians and absmax, and the traffic stats.</summary>
internal sealed class LayerState
{
    public int Layer { get; }
    public CommTrafficStats? Comm { get; }
    private readonly int _h, _mi, _k;
    private readonly ExpertForward[]? _experts;
    private readonly HessianAccumulator?[]? _gateUp, _down;
    private readonly HessianAccumulator? _pooled;
    private readonly float[][]? _absGateUp, _absDown;
    private readonly float[]? _absPooled;
    private readonly RoutingWeights? _routing;

    /// <param name="routingWeighted">Weight each token's row in an expert's Hessians by its squared routing weight.</param>
    public LayerState(ModelCheckpoint ckpt, int layer, DeepseekV3Config c, bool hessians, bool comm, int threads = 0, bool routingWeighted = false)
    {
        Layer = layer;
        (_h, _mi, _k) = (c.HiddenSize, c.MoeIntermediateSize, c.NumExpertsPerTok);
        int e = c.NRoutedExperts;
        if (comm) Comm = new CommTrafficStats(layer, _h);
        if (hessians || comm)
        {
            _experts = new ExpertForward[e];
            string p = $"model.layers.{layer}.mlp.experts.";
            for (int i = 0; i < e; i++)
                _experts[i] = new ExpertForward(ckpt.ReadFloat32($"{p}{i}.gate_proj.weight"), ckpt.ReadFloat32($"{p}{i}.up_proj.weight"),
                    ckpt.ReadFloat32($"{p}{i}.down_proj.weight"), _h, _mi) { MaxThreads = threads };
        }
        if (hessians)
        {
            _gateUp = new HessianAccumulator?[e];
            _down = new HessianAccumulator?[e];
            _absGateUp = new float[e][];
            _absDown = new float[e][];
            for (int i = 0; i < e; i++)
            {
                _absGateUp[i] = new float[_h];
                _absDown[i] = new float[_mi];
            }
            _pooled = new HessianAccumulator(_h);
            _absPooled = new float[_h];
            if (routingWeighted)
                _routing = new RoutingWeights(ckpt.ReadFloat32($"model.layers.{layer}.mlp.gate.weight"), e, _h, _k, c.ScoringFunc,
                    c.NormTopkProb, c.RoutedScalingFactor);
        }
    }

    /// <summary>x: the MoE input [rows, hidden]; route: selected experts [rows, k]; name: the tensor, for errors.</summary>
    public void Add(float[] x, long[] route, int rows, string name)
    {
        ThrowIfNonFinite(x.AsSpan(0, rows * _h), name);
        _pooled?.Add(x, rows);
        if (_absPooled != null) AbsMax(x, rows, _h, _absPooled);
        Comm?.Add(CommSide.Dispatch, x, rows, name);
        if (_experts == null) return;

        var byExpert = new List<int>[_experts.Length];
        for (int r = 0; r < rows; r++)
            for (int j = 0; j < _k; j++)
            {
                long ex = route[r * _k + j];
                if ((ulong)ex >= (ulong)_experts.Length) throw new InvalidDataException($"{name}: routing selected expert {ex}, outside [0, {_experts.Length})");
                (byExpert[ex] ??= new List<int>()).Add(r * _k + j);
            }
        var g = _gateUp != null ? _routing?.Compute(x, route, rows) : null;
        for (int ex = 0; ex < _experts.Length; ex++)
        {
            var list = byExpert[ex];
            if (list == null) continue;
            int n = list.Count;
            var xs = new float[n * _h];
            for (int i = 0; i < n; i++) x.AsSpan(list[i] / _k * _h, _h).CopyTo(xs.AsSpan(i * _h));
            float[]? w2 = null;
            if (g != null)
            {
                w2 = new float[n];
                for (int i = 0; i < n; i++) w2[i] = g[list[i]] * g[list[i]];
            }
            var act = new float[n * _mi];
            var y = new float[n * _h];
            _experts[ex].Run(xs, n, act, y);
            string what = $"layer {Layer} expert {ex}";
            ThrowIfNonFinite(act, $"{what} down_proj input, computed from {name}");
            if (_gateUp != null)
            {
                (_gateUp[ex] ??= new HessianAccumulator(_h)).Add(xs, n, w2);
                (_down![ex] ??= new HessianAccumulator(_mi)).Add(act, n, w2);
                AbsMax(xs, n, _h, _absGateUp![ex]);
                AbsMax(act, n, _mi, _absDown![ex]);
            }
            Comm?.Add(CommSide.Combine, y, n, $"{what} output (combine), computed from {name}");
        }
    }

    private static void AbsMax(ReadOnlySpan<float> x, int rows, int width, float[] acc)
    {
        for (int r = 0; r < rows; r++)
        {
            var row = x.Slice(r * width, width);
            for (int i = 0; i < width; i++) acc[i] = Math.Max(acc[i], Math.Abs(row[i]));
        }
    }

    public static void ThrowIfNonFinite(ReadOnlySpan<float> x, string name)
    {
        for (int i = 0; i < x.Length; i++)
            if (!float.IsFinite(x[i])) throw new InvalidDataException($"calibration: '{name}' element {i} is {x[i]} (non-finite activations)");
    }

    /// <summary>Writes stats/hessian.layerL and stats/absmax.layerL (when Hessians are on).</summary>
    public void Write(string dir, CalibrationData data)
    {
        if (_gateUp == null) return;
        HessianStats.WriteLayer(dir, data, Layer, _gateUp, _down!, _pooled);
        var plan = new List<TensorSpec> { new("pooled.gate_up", DType.F32, [_h]) };
        var writes = new List<(string, float[])> { ("pooled.gate_up", _absPooled!) };
        for (int e = 0; e < _gateUp.Length; e++)
        {
            if (_gateUp[e] is not { Count: > 0 }) continue;
            writes.Add(($"experts.{e}.gate_up", _absGateUp![e]));
            writes.Add(($"experts.{e}.down", _absDown![e]));
        }
        plan = writes.Select(w => new TensorSpec(w.Item1, DType.F32, [w.Item2.Length])).ToList();
        string stats = Path.Combine(dir, HessianStats.Folder), staging = Path.Combine(stats, $".absmax{Layer}");
        using (var w = new SafetensorsWriter(staging, plan, long.MaxValue, overwrite: true))
        {
            foreach (var (n, v) in writes) w.Write(n, MemoryMarshal.AsBytes(v.AsSpan()));
            w.Commit();
        }
        File.Move(Path.Combine(staging, "model.safetensors"), Path.Combine(stats, CalibratePipeline.AbsmaxFileName(Layer)), overwrite: true);
        Directory.Delete(staging, true);
        var s = (System.Text.Json.Nodes.JsonObject)data.Extra["stats"]!;
        var list = s["absmax"] as System.Text.Json.Nodes.JsonArray ?? new System.Text.Json.Nodes.JsonArray();
        s["absmax"] = list;
        list.Add(HessianStats.Folder + "/" + CalibratePipeline.AbsmaxFileName(Layer));
    }
}
