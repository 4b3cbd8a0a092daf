using Converter.Formats.Onnx.Proto;
using Converter.Models.DeepseekV3.Onnx;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;

namespace Converter.Runtime.Calibration;

/// <summary>
/// An ONNX Runtime session over an exported model with every MoE layer's input (<see cref="DeepseekV3OnnxNames.MoeInput"/>)
/// and top-k expert ids (<see cref="DeepseekV3OnnxNames.Routing"/>) exposed: a copy of model.onnx with those values
/// added as outputs is written beside the data file (so external data resolves), loaded, and deleted.
/// </summary>
internal sealed class MoeTap : IDisposable
{
    private readonly InferenceSession _session;
    private readonly bool _mask, _positions;

    public MoeTap(string onnxDir, int threads)
    {
        string path = Path.Combine(onnxDir, "model.onnx");
        if (!File.Exists(path)) throw new FileNotFoundException($"{onnxDir}: no model.onnx", path);
        ModelProto proto;
        using (var fs = File.OpenRead(path)) proto = ModelProto.Parser.ParseFrom(fs);
        string Meta(string key) => proto.MetadataProps.FirstOrDefault(p => p.Key == key)?.Value ?? "";
        if (Meta(DeepseekV3OnnxNames.MoeInputsKey).Length == 0)
            throw new InvalidDataException($"{path}: the model does not list its MoE inputs (metadata '{DeepseekV3OnnxNames.MoeInputsKey}'); re-export it with this converter");
        if (Meta("converter.simulate_comm").Length > 0)
            throw new InvalidDataException($"{path}: the model simulates expert traffic ({Meta("converter.simulate_comm")}); calibrate on a plain export");
        var wanted = Meta(DeepseekV3OnnxNames.MoeInputsKey).Split(',').Concat(Meta(DeepseekV3OnnxNames.RoutingKey).Split(',')).ToList();
        var existing = proto.Graph.Output.Select(o => o.Name).ToHashSet();
        foreach (var n in wanted)
            if (!existing.Contains(n)) proto.Graph.Output.Add(new ValueInfoProto { Name = n });
        _mask = proto.Graph.Input.Any(i => i.Name == DeepseekV3OnnxNames.AttentionMask);
        _positions = proto.Graph.Input.Any(i => i.Name == DeepseekV3OnnxNames.PositionIds);
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

    /// <summary>Per requested MoE layer: its input [batch*seq*hidden] and top-k ids [batch*seq*k].</summary>
    public Dictionary<int, (float[] X, long[] Route)> Run(ReadOnlySpan<int> tokens, int batch, int seq, IReadOnlyList<int> layers)
    {
        var ids = new long[tokens.Length];
        for (int i = 0; i < ids.Length; i++) ids[i] = tokens[i];
        var inputs = new List<NamedOnnxValue> { NamedOnnxValue.CreateFromTensor(DeepseekV3OnnxNames.InputIds, new DenseTensor<long>(ids, [batch, seq])) };
        if (_mask)
        {
            var ones = new long[ids.Length];
            Array.Fill(ones, 1L);
            inputs.Add(NamedOnnxValue.CreateFromTensor(DeepseekV3OnnxNames.AttentionMask, new DenseTensor<long>(ones, [batch, seq])));
        }
        if (_positions)
        {
            var pos = new long[ids.Length];
            for (int i = 0; i < pos.Length; i++) pos[i] = i % seq;
            inputs.Add(NamedOnnxValue.CreateFromTensor(DeepseekV3OnnxNames.PositionIds, new DenseTensor<long>(pos, [batch, seq])));
        }
        var names = new List<string>();
        foreach (var l in layers) { names.Add(DeepseekV3OnnxNames.MoeInput(l)); names.Add(DeepseekV3OnnxNames.Routing(l)); }
        using var results = _session.Run(inputs, names);
        var byName = results.ToDictionary(r => r.Name, r => r);
        var outs = new Dictionary<int, (float[], long[])>();
        foreach (var l in layers)
            outs[l] = (byName[DeepseekV3OnnxNames.MoeInput(l)].AsTensor<float>().ToArray(), byName[DeepseekV3OnnxNames.Routing(l)].AsTensor<long>().ToArray());
        return outs;
    }

    public void Dispose() => _session.Dispose();
}
