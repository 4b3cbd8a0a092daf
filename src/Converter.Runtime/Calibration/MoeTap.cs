using Converter.Formats.Onnx.Proto;
using Converter.Decoder.Onnx;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;

namespace Converter.Runtime.Calibration;

/// <summary>
/// An ONNX Runtime session over an exported model with every MoE layer's input (<see cref="OnnxDecoderNames.MoeInput"/>)
/// and top-k expert ids (<see cref="OnnxDecoderNames.Routing"/>) exposed: a copy of model.onnx with those values
/// added as outputs is written beside the data file (so external data resolves), loaded, and deleted.
/// The model is a whole export or a layer slice (<see cref="OnnxLayerSlice"/>): a slice after layer 0 takes the
/// previous slice's hidden state instead of token ids and gives its own last hidden state.
/// </summary>
internal sealed class MoeTap : IDisposable
{
    private readonly InferenceSession _session;
    private readonly bool _mask, _positions;

    /// <summary>The model takes <see cref="OnnxDecoderNames.SliceInput"/> (a slice after layer 0), not input_ids.</summary>
    public bool TakesHidden { get; }
    /// <summary>A slice's output value (its last layer's hidden state); null for a whole model.</summary>
    public string? SliceOutput { get; }

    public MoeTap(string onnxDir, int threads) : this(onnxDir, threads, []) { }

    /// <param name="extraOutputs">Graph values to expose besides the MoE inputs and routing.</param>
    public MoeTap(string onnxDir, int threads, IEnumerable<string> extraOutputs)
    {
        string path = Path.Combine(onnxDir, "model.onnx");
        if (!File.Exists(path)) throw new FileNotFoundException($"{onnxDir}: no model.onnx", path);
        ModelProto proto;
        using (var fs = File.OpenRead(path)) proto = ModelProto.Parser.ParseFrom(fs);
        string Meta(string key) => proto.MetadataProps.FirstOrDefault(p => p.Key == key)?.Value ?? "";
        if (Meta(OnnxDecoderNames.MoeInputsKey).Length == 0)
            throw new InvalidDataException($"{path}: the model does not list its MoE inputs (metadata '{OnnxDecoderNames.MoeInputsKey}'); re-export it with this converter");
        if (Meta("converter.simulate_comm").Length > 0)
            throw new InvalidDataException($"{path}: the model simulates expert traffic ({Meta("converter.simulate_comm")}); calibrate on a plain export");
        var wanted = Meta(OnnxDecoderNames.MoeInputsKey).Split(',').Concat(Meta(OnnxDecoderNames.RoutingKey).Split(',')).Concat(extraOutputs).ToList();
        var existing = proto.Graph.Output.Select(o => o.Name).ToHashSet();
        foreach (var n in wanted)
            if (!existing.Contains(n)) proto.Graph.Output.Add(new ValueInfoProto { Name = n });
        TakesHidden = proto.Graph.Input.Any(i => i.Name == OnnxDecoderNames.SliceInput);
        if (Meta(OnnxDecoderNames.SliceKey) is { Length: > 0 } slice)
            SliceOutput = OnnxDecoderNames.Layer(int.Parse(slice.Split(',')[1], System.Globalization.CultureInfo.InvariantCulture) - 1);
        _mask = proto.Graph.Input.Any(i => i.Name == OnnxDecoderNames.AttentionMask);
        _positions = proto.Graph.Input.Any(i => i.Name == OnnxDecoderNames.PositionIds);
        var tmp = Path.Combine(Path.GetDirectoryName(Path.GetFullPath(path))!, $".calibrate-{Environment.ProcessId}-{Guid.NewGuid():N}.onnx");
        try
        {
            using (var fs = File.Create(tmp)) Google.Protobuf.MessageExtensions.WriteTo(proto, fs);
            using var so = new SessionOptions { GraphOptimizationLevel = GraphOptimizationLevel.ORT_ENABLE_ALL };
            if (threads > 0) so.IntraOpNumThreads = threads;
            _session = new InferenceSession(tmp, so);
        }
        finally
        {
            File.Delete(tmp);
        }
    }

    /// <summary>Per requested MoE layer: its input [batch*seq*hidden] and top-k ids [batch*seq*k]; with
    /// <paramref name="wantHidden"/>, also the slice's output [batch*seq*hidden]. The model's first input is
    /// <paramref name="tokens"/> or, for a slice after layer 0, <paramref name="hiddenIn"/> [batch*seq*hidden].</summary>
    public (Dictionary<int, (float[] X, long[] Route)> Moe, float[]? Hidden) Run(ReadOnlySpan<int> tokens, float[]? hiddenIn,
        int batch, int seq, IReadOnlyList<int> layers, bool wantHidden = false) =>
        Run(tokens, hiddenIn, batch, seq, layers, wantHidden, [], out _);

    /// <summary>As the other overload, also fetching the graph values <paramref name="extra"/> (hidden states named by
    /// <see cref="OnnxDecoderNames.Embedding"/> / <see cref="OnnxDecoderNames.Layer"/>; each added to the outputs when
    /// the session is created, see <see cref="MoeTap(string, int, IEnumerable{string})"/>).</summary>
    public (Dictionary<int, (float[] X, long[] Route)> Moe, float[]? Hidden) Run(ReadOnlySpan<int> tokens, float[]? hiddenIn,
        int batch, int seq, IReadOnlyList<int> layers, bool wantHidden, IReadOnlyList<string> extra, out Dictionary<string, float[]> extraValues)
    {
        int n = batch * seq;
        var inputs = new List<NamedOnnxValue>();
        if (TakesHidden)
        {
            if (hiddenIn == null || hiddenIn.Length % n != 0) throw new ArgumentException("a layer slice needs the previous slice's hidden state");
            inputs.Add(NamedOnnxValue.CreateFromTensor(OnnxDecoderNames.SliceInput, new DenseTensor<float>(hiddenIn, [batch, seq, hiddenIn.Length / n])));
        }
        else
        {
            inputs.Add(DecoderInputs.Ids(tokens, batch, seq));
        }
        DecoderInputs.AddMaskAndPositions(inputs, batch, seq, _mask, _positions);
        var names = new List<string>();
        foreach (var l in layers) { names.Add(OnnxDecoderNames.MoeInput(l)); names.Add(OnnxDecoderNames.Routing(l)); }
        if (wantHidden)
            names.Add(SliceOutput ?? throw new InvalidOperationException("a whole model has no slice output"));
        foreach (var x in extra) if (!names.Contains(x)) names.Add(x);
        using var results = _session.Run(inputs, names);
        var byName = results.ToDictionary(r => r.Name, r => r);
        extraValues = extra.ToDictionary(x => x, x => byName[x].AsTensor<float>().ToArray());
        var outs = new Dictionary<int, (float[], long[])>();
        foreach (var l in layers)
            outs[l] = (byName[OnnxDecoderNames.MoeInput(l)].AsTensor<float>().ToArray(), byName[OnnxDecoderNames.Routing(l)].AsTensor<long>().ToArray());
        return (outs, wantHidden ? byName[SliceOutput!].AsTensor<float>().ToArray() : null);
    }

    public void Dispose() => _session.Dispose();
}
