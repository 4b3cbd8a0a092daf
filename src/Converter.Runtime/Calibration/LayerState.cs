using System.Runtime.InteropServices;
using Converter.Calibration;
using Converter.Formats.Safetensors;
using Converter.Models;
using Converter.Tensors;

namespace Converter.Runtime.Calibration;

/// <summary>
/// One MoE layer's accumulators during calibration, from the pass holding its first experts to the pass holding its
/// last (<see cref="CalibrationPassPlan"/>). Per layer, fed only while the range starting at expert 0 is open (so once):
/// the pooled Hessian and absmax, the dispatch traffic. Per range of routed experts (<see cref="BeginRange"/> ..
/// <see cref="EndRange"/>): the experts' float32 weights and Hessians, their absmax and combine traffic; at the end of
/// a range its experts' Hessians are streamed to the layer's <see cref="HessianStats.LayerWriter"/> and dropped.
/// </summary>
internal sealed class LayerState : IDisposable
{
    public int Layer { get; }
    public CommTrafficStats? Comm { get; }
    /// <summary>Every routed expert was in a finished range: the layer's files are written.</summary>
    public bool Done => _end == _e && _experts == null;
    private readonly ModelCheckpoint _ckpt;
    private readonly MoeBlock _block;
    private readonly int _h, _mi, _k, _e, _threads;
    private readonly bool _hessians, _loadExperts;
    private readonly HessianAccumulator? _pooled;
    private readonly float[][]? _absGateUp, _absDown;
    private readonly float[]? _absPooled;
    private readonly RoutingWeights? _routing;
    private readonly ImatrixAccumulator? _imatrix;
    private readonly ImatrixMoeNames? _names;
    private readonly ExpertForward? _shared;
    private HessianStats.LayerWriter? _writer;
    private long[]? _counts;
    // the open range [_first, _end): weights and Hessians indexed by expert - _first
    private int _first, _end;
    private ExpertForward[]? _experts;
    private HessianAccumulator?[]? _gateUp, _down;

    /// <param name="routingWeighted">Weight each token's row in an expert's Hessians by its squared routing weight.</param>
    /// <param name="imatrix">Where the router's, shared and routed experts' input squares go (llama.cpp's names in
    /// <paramref name="names"/>); null: no importance matrix.</param>
    public LayerState(ModelCheckpoint ckpt, MoeBlock block, int hidden, bool hessians, bool comm, int threads = 0, bool routingWeighted = false,
        ImatrixAccumulator? imatrix = null, ImatrixMoeNames? names = null)
    {
        int layer = Layer = block.Layer;
        (_ckpt, _block) = (ckpt, block);
        (_h, _mi, _k, _e, _threads) = (hidden, checked((int)block.ExpertIntermediate), block.TopK, block.Experts, threads);
        (_hessians, _loadExperts) = (hessians, hessians || comm || imatrix != null);
        if (imatrix != null)
        {
            (_imatrix, _names) = (imatrix, names ?? throw new ArgumentNullException(nameof(names)));
            imatrix.Declare(names.Router, _h);
            imatrix.Declare(names.ExpertsGate, _h, _e, countPerMatrix: true);
            imatrix.Declare(names.ExpertsUp, _h, _e, countPerMatrix: true);
            imatrix.Declare(names.ExpertsDown, _mi, _e, countPerMatrix: true);
            if (block.Shared is { } sh && names.SharedGate != null)
            {
                int si = checked((int)sh.Intermediate);
                imatrix.Declare(names.SharedGate, _h);
                imatrix.Declare(names.SharedUp!, _h);
                imatrix.Declare(names.SharedDown!, si);
                _shared = new ExpertForward(ckpt.ReadFloat32(sh.Gate), ckpt.ReadFloat32(sh.Up), ckpt.ReadFloat32(sh.Down), _h, si) { MaxThreads = threads };
            }
        }
        if (comm) Comm = new CommTrafficStats(layer, _h, combineSlots: _e);
        if (hessians)
        {
            _absGateUp = new float[_e][];
            _absDown = new float[_e][];
            for (int i = 0; i < _e; i++)
            {
                _absGateUp[i] = new float[_h];
                _absDown[i] = new float[_mi];
            }
            _pooled = new HessianAccumulator(_h) { MaxThreads = threads };
            _absPooled = new float[_h];
            if (routingWeighted)
                _routing = new RoutingWeights(ckpt.ReadFloat32(block.Router), _h, block.Routing);
        }
    }

    /// <summary>Opens routed experts [first, end): ranges come in expert order, each starting where the last ended.</summary>
    public void BeginRange(int first, int end)
    {
        if (first != _end || end <= first || end > _e || _experts != null)
            throw new InvalidOperationException($"layer {Layer}: experts {first}..{end - 1} opened after {_end} (of {_e}){(_experts != null ? " with a range open" : "")}");
        (_first, _end) = (first, end);
        int n = end - first;
        _experts = new ExpertForward[_loadExperts ? n : 0];
        for (int i = 0; i < _experts.Length; i++)
            _experts[i] = new ExpertForward(_ckpt.ReadFloat32(_block.ExpertWeight(first + i, FfnProjection.Gate)), _ckpt.ReadFloat32(_block.ExpertWeight(first + i, FfnProjection.Up)),
                _ckpt.ReadFloat32(_block.ExpertWeight(first + i, FfnProjection.Down)), _h, _mi) { MaxThreads = _threads };
        if (_hessians)
        {
            _gateUp = new HessianAccumulator?[n];
            _down = new HessianAccumulator?[n];
        }
    }

    /// <summary>x: the MoE input [rows, hidden]; route: selected experts [rows, k]; name: the tensor, for errors.</summary>
    public void Add(float[] x, long[] route, int rows, string name)
    {
        if (_experts == null) throw new InvalidOperationException($"layer {Layer}: no range of experts is open");
        ThrowIfNonFinite(x.AsSpan(0, rows * _h), name);
        if (_first == 0) // per-layer statistics: recorded in the layer's first range only
        {
            _pooled?.Add(x, rows);
            if (_absPooled != null) AbsMax(x, rows, _h, _absPooled);
            Comm?.Add(CommSide.Dispatch, x, rows, name);
            if (_imatrix != null)
            {
                var xs = x.AsSpan(0, rows * _h);
                _imatrix.Add(_names!.Router, 0, xs, rows);
                if (_shared != null)
                {
                    _imatrix.Add(_names.SharedGate!, 0, xs, rows);
                    _imatrix.Add(_names.SharedUp!, 0, xs, rows);
                    var act = new float[rows * _shared.Intermediate];
                    _shared.Run(xs, rows, act, new float[rows * _h]);
                    ThrowIfNonFinite(act, $"layer {Layer} shared experts' down_proj input, computed from {name}");
                    _imatrix.Add(_names.SharedDown!, 0, act, rows);
                }
            }
        }
        var byExpert = new List<int>[_end - _first];
        for (int r = 0; r < rows; r++)
            for (int j = 0; j < _k; j++)
            {
                long ex = route[r * _k + j];
                if ((ulong)ex >= (ulong)_e) throw new InvalidDataException($"{name}: routing selected expert {ex}, outside [0, {_e})");
                if (ex >= _first && ex < _end) (byExpert[ex - _first] ??= new List<int>()).Add(r * _k + j);
            }
        if (_experts.Length == 0) return;
        var g = _gateUp != null ? _routing?.Compute(x, route, rows) : null;
        for (int i = 0; i < byExpert.Length; i++)
        {
            var list = byExpert[i];
            if (list == null) continue;
            int ex = _first + i, n = list.Count;
            var xs = new float[n * _h];
            for (int t = 0; t < n; t++) x.AsSpan(list[t] / _k * _h, _h).CopyTo(xs.AsSpan(t * _h));
            float[]? w2 = null;
            if (g != null)
            {
                w2 = new float[n];
                for (int t = 0; t < n; t++) w2[t] = g[list[t]] * g[list[t]];
            }
            var act = new float[n * _mi];
            var y = new float[n * _h];
            _experts[i].Run(xs, n, act, y);
            string what = $"layer {Layer} expert {ex}";
            ThrowIfNonFinite(act, $"{what} down_proj input, computed from {name}");
            if (_gateUp != null)
            {
                (_gateUp[i] ??= new HessianAccumulator(_h) { MaxThreads = _threads }).Add(xs, n, w2);
                (_down![i] ??= new HessianAccumulator(_mi) { MaxThreads = _threads }).Add(act, n, w2);
                AbsMax(xs, n, _h, _absGateUp![ex]);
                AbsMax(act, n, _mi, _absDown![ex]);
            }
            if (_imatrix != null)
            {
                _imatrix.Add(_names!.ExpertsGate, ex, xs, n);
                _imatrix.Add(_names.ExpertsUp, ex, xs, n);
                _imatrix.Add(_names.ExpertsDown, ex, act, n);
            }
            Comm?.Add(CommSide.Combine, y, n, $"{what} output (combine), computed from {name}", slot: ex);
        }
    }

    /// <summary>
    /// Closes the open range: its experts' Hessians go to stats/hessian.layerL (the writer is planned from the layer's
    /// expert counts in <paramref name="data"/>, complete once the first range has run); after the last range the file is
    /// committed and stats/absmax.layerL written.
    /// </summary>
    public void EndRange(string dir, CalibrationData data)
    {
        if (_experts == null) throw new InvalidOperationException($"layer {Layer}: no range of experts is open");
        if (_hessians)
        {
            if (_first == 0)
            {
                _counts = data.ExpertCounts(Layer);
                _writer = new HessianStats.LayerWriter(dir, Layer, _counts, _h, _mi, pooled: _pooled!.Count > 0);
            }
            for (int i = 0; i < _end - _first; i++) _writer!.WriteExpert(_first + i, _gateUp![i], _down![i]);
        }
        _experts = null;
        _gateUp = _down = null;
        if (_end < _e || !_hessians) return;
        _writer!.Commit(data, _pooled);
        _writer.Dispose();
        _writer = null;
        WriteAbsmax(dir, data);
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

    /// <summary>stats/absmax.layerL: the pooled gate/up input, then every expert with tokens.</summary>
    private void WriteAbsmax(string dir, CalibrationData data)
    {
        var writes = new List<(string, float[])> { (HessianStats.PooledGateUpName, _absPooled!) };
        for (int e = 0; e < _e; e++)
        {
            if (_counts![e] <= 0) continue;
            writes.Add(($"experts.{e}.gate_up", _absGateUp![e]));
            writes.Add(($"experts.{e}.down", _absDown![e]));
        }
        var plan = writes.Select(w => new TensorSpec(w.Item1, DType.F32, [w.Item2.Length])).ToList();
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

    public void Dispose() => _writer?.Dispose();
}
