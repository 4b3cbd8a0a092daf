using System.Diagnostics;
using Converter.Calibration;
using Converter.Decoder.Onnx;
using Converter.Formats.Onnx.Proto;
using Converter.Models;
using Converter.Pipelines;
using Converter.Runtime.Calibration;
using Converter.Verification;
using Converter.Staging;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;

namespace Converter.Runtime.Golden;

/// <summary>Settings of <see cref="GoldenPipeline"/>.</summary>
/// <param name="Batch">Sequences per ONNX Runtime run.</param>
/// <param name="Threads">ONNX Runtime intra-op threads (0: its choice).</param>
/// <param name="Form">Full or compact logits; null: full for vocabularies up to <see cref="GoldenLogitsForm.FullByDefaultUpTo"/>.</param>
/// <param name="TokensSource">What the tokens are (a file, text), for the golden's metadata.</param>
public sealed record GoldenOptions(int Batch = 8, int Threads = 0, GoldenLogitsForm? Form = null, bool Overwrite = false, string? TokensSource = null)
{
    public Converter.Staging.TestFault? Fault { get; init; }
}

public sealed record GoldenResult(string Path, int Sequences, int SequenceLength, int Vocab, GoldenLogitsForm Form, long FileBytes,
    int Slices, int RoutingDisagreements, TimeSpan Elapsed);

/// <summary>
/// <c>converter golden</c>: the reference outputs of a checkpoint for a set of token sequences, computed by this project
/// from the source weights and written in the golden format <c>verify</c> reads. The model runs as its fp32 ONNX export in
/// ONNX Runtime, one layer slice at a time (each MoE layer with the dense layers before it, as <c>calibrate</c> does; the
/// last slice also holds the final norm and lm_head): a slice is exported, loaded, run over every sequence and deleted
/// before the next, its output hidden state handed on through a float32 file, so memory holds one slice's weights.
/// Per position: the logits (full or compact), the next-token NLL; per MoE layer: the selected experts (the graph's own
/// TopK) and the selection margin, computed from the graph's MoE input and the router weights in float64 by the family's
/// <see cref="RoutingRule"/> (group stage included, as the transformers goldens state it); for sequence 0, every hidden
/// state (embedding output, each layer, the final norm's output).
/// </summary>
public static class GoldenPipeline
{
    public static GoldenResult Run(string modelDir, int[] tokens, int sequences, int seqLen, string outputPath, GoldenOptions o,
        ILogger? logger = null, IProgress<PipelineProgress>? progress = null, CancellationToken cancellation = default)
    {
        logger ??= NullLogger.Instance;
        var clock = Stopwatch.StartNew();
        if (o.Batch < 1) throw new ArgumentException($"--batch must be at least 1, not {o.Batch}");
        if (tokens.Length != (long)sequences * seqLen) throw new ArgumentException($"{tokens.Length} tokens for {sequences} x {seqLen}");
        using var ckpt = ModelCheckpoint.Open(modelDir);
        var arch = ckpt.Architecture;
        if (arch.Onnx == null)
            throw new NotSupportedException($"{modelDir}: `converter golden` runs the model's fp32 ONNX export layer by layer, and ONNX export " +
                                            $"does not support model_type '{arch.ModelType}' yet");
        for (int i = 0; i < tokens.Length; i++)
            if ((uint)tokens[i] >= (uint)arch.VocabSize)
                throw new InvalidDataException($"token {tokens[i]} (element {i}) is outside the model's vocabulary [0, {arch.VocabSize})");
        if (arch.Config.IntOrNull("max_position_embeddings") is int maxPos && seqLen > maxPos)
            throw new ArgumentException($"sequence length {seqLen} is longer than the model's max_position_embeddings {maxPos}");

        int layers = arch.NumLayers, h = arch.HiddenSize, v = arch.VocabSize;
        var moeLayers = Enumerable.Range(0, layers).Where(arch.IsMoeLayer).ToArray();
        int k = moeLayers.Length > 0 ? arch.Moe(moeLayers[0]).TopK : 0;
        var slices = Slices(layers, moeLayers);
        var streamDims = arch.Onnx.Residual.StreamDims;
        int streams = 1;
        foreach (var d in streamDims) streams = checked(streams * (int)d);
        int width = streams * h; // floats per token between slices
        // several streams: keep sequence 0's states for its first positions only, as the transformers goldens do
        var residual = streams > 1 ? new GoldenResidualStreams(streams, Math.Min(seqLen, ResidualPositions)) : null;
        var form = o.Form ?? GoldenLogitsForm.Default(v);
        var identity = new GoldenIdentity
        {
            ModelType = arch.ModelType, ConfigFingerprint = CalibrationData.Fingerprint(arch), VocabSize = v, HiddenSize = h, NumLayers = layers,
            RoutedExperts = arch.NumRoutedExperts, ExpertsPerToken = moeLayers.Length > 0 ? k : null, SourceWeights = SourceWeights(ckpt.Layout),
            Reference = $"converter golden: fp32 ONNX export, layer by layer in ONNX Runtime {OrtEnv.Instance().GetVersionString()} (cpu)",
            Tokens = o.TokensSource, Model = Path.GetFileName(Path.TrimEndingDirectorySeparator(Path.GetFullPath(modelDir))),
        };
        logger.LogInformation("Reference of {Model} ({Type}, {Layers} layers, vocabulary {Vocab}) on {Seq} x {Len} tokens, {Slices} slices, {Form}",
            identity.Model, arch.ModelType, layers, v, sequences, seqLen, slices.Count, form);

        string dest = Path.GetFullPath(outputPath);
        using var area = StagingArea.Begin(dest, new StagingOptions("golden", IsFile: true, Overwrite: o.Overwrite) { Fault = o.Fault }, logger);
        string work = Path.Combine(area.Root, "work");
        var topk = new int[moeLayers.Length * sequences * seqLen * k];
        var margin = new float[moeLayers.Length * sequences * seqLen];
        var hidden0 = new Dictionary<string, float[]>(StringComparer.Ordinal);
        int disagreements = 0, batches = (sequences + o.Batch - 1) / o.Batch, step = 0;
        try
        {
            Directory.CreateDirectory(work);
            using var writer = new GoldenWriter(area.Output, tokens, sequences, seqLen, v, form, identity, layers + 1, h, moeLayers.Length, k, o.Overwrite, residual);
            HiddenStateFile? hin = null, hout = null;
            long rowsTotal = (long)sequences * seqLen;
            try
            {
                foreach (var slice in slices)
                {
                    string sliceDir = Path.Combine(work, $"slice-{slice.First}-{slice.End - 1}");
                    logger.LogInformation("Exporting {Slice}{Head} to ONNX (fp32)", slice, slice.Head ? " with the head" : "");
                    OnnxExportPipeline.Run(ckpt, sliceDir, new OnnxExportOptions(Slice: slice) { Scratch = true }, NullLogger.Instance, null, cancellation);
                    hout = slice.Head ? null : new HiddenStateFile(Path.Combine(work, $"hidden.layer{slice.End - 1}.f32"), rowsTotal, width);
                    var routers = new Dictionary<int, (float[] W, float[]? Bias, RoutingRule Rule)>();
                    using (var run = new SliceSession(sliceDir, o.Threads, streamDims, h))
                    {
                        foreach (var l in run.MoeLayers)
                        {
                            var block = arch.Moe(l);
                            routers[l] = (ckpt.ReadFloat32(block.Router), block.RouterBias is { } rb ? ckpt.ReadFloat32(rb) : null, block.Routing);
                        }
                        for (int b0 = 0; b0 < sequences; b0 += o.Batch)
                        {
                            area.Step(cancellation);
                            int nb = Math.Min(o.Batch, sequences - b0), rows = nb * seqLen;
                            var outs = run.Run(tokens.AsSpan(b0 * seqLen, rows), hin?.Read((long)b0 * seqLen, rows), nb, seqLen, wantHidden: b0 == 0);
                            if (hout != null) hout.Write((long)b0 * seqLen, outs.Output);
                            else writer.AddLogits(b0, nb, outs.Output);
                            if (b0 == 0)
                                foreach (var (name, value) in outs.Hidden) hidden0[name] = value.AsSpan(0, value.Length / nb).ToArray();
                            foreach (var (layer, (x, route)) in outs.Moe)
                            {
                                int mi = Array.IndexOf(moeLayers, layer);
                                var (w, bias, rule) = routers[layer];
                                disagreements += Margins(x, route, rows, h, w, bias, rule,
                                    topk.AsSpan((mi * sequences + b0) * seqLen * k, rows * k), margin.AsSpan((mi * sequences + b0) * seqLen, rows));
                            }
                            step++;
                            progress?.Report(new PipelineProgress(step, slices.Count * batches, 0, $"{slice}: sequences {b0 + nb}/{sequences}"));
                        }
                    }
                    Directory.Delete(sliceDir, true);
                    hin?.Dispose();
                    (hin, hout) = (hout, null);
                    GC.Collect(GC.MaxGeneration, GCCollectionMode.Aggressive, blocking: true, compacting: true);
                }
            }
            finally
            {
                hin?.Dispose();
                hout?.Dispose();
            }
            float[] Hidden0(string name) => hidden0.TryGetValue(name, out var value) ? value
                : throw new InvalidOperationException($"the layer slices gave no '{name}' for sequence 0");
            if (residual != null)
            {
                // the expanded embedding and every layer's streams, then the final norm's output
                int n = residual.Positions;
                var states = new float[(layers + 1) * n * width];
                Hidden0(OnnxDecoderNames.Embedding).AsSpan(0, n * width).CopyTo(states);
                for (int l = 0; l < layers; l++) Hidden0(OnnxDecoderNames.Layer(l)).AsSpan(0, n * width).CopyTo(states.AsSpan((l + 1) * n * width));
                writer.SetResidualStates(states, Hidden0(OnnxDecoderNames.FinalNorm));
            }
            else
            {
                var names = new List<string> { OnnxDecoderNames.Embedding };
                for (int l = 0; l < layers - 1; l++) names.Add(OnnxDecoderNames.Layer(l));
                names.Add(OnnxDecoderNames.FinalNorm);
                var hs = new float[names.Count * seqLen * h];
                for (int i = 0; i < names.Count; i++) Hidden0(names[i]).CopyTo(hs.AsSpan(i * seqLen * h));
                writer.SetHiddenStates(hs);
            }
            if (moeLayers.Length > 0) writer.SetRouting(topk, margin);
            writer.Commit();
            Directory.Delete(work, true);
            area.Commit(cancellation);
        }
        catch (Exception e) when (area.Explain(e) is var better && better != e) { throw better; }
        if (disagreements > 0)
            logger.LogInformation("{Count} (layer, position) routing choices of ONNX Runtime (float32) differ from the float64 selection: near-ties, " +
                                  "their margins are below 1e-4 or close to it", disagreements);
        long bytes = new FileInfo(dest).Length;
        logger.LogInformation("Wrote {Path}: {Bytes:N0} bytes ({Form}) in {Secs:F1} s", dest, bytes, form, clock.Elapsed.TotalSeconds);
        return new GoldenResult(dest, sequences, seqLen, v, form, bytes, slices.Count, disagreements, clock.Elapsed);
    }

    /// <summary>Positions of sequence 0 whose residual streams a golden keeps (the transformers V4 goldens keep 256).</summary>
    public const int ResidualPositions = 256;

    /// <summary>Each MoE layer with the dense layers before it; the last slice runs to the last layer and holds the head.</summary>
    public static List<OnnxLayerSlice> Slices(int layers, int[] moeLayers)
    {
        var slices = new List<OnnxLayerSlice>();
        int start = 0;
        foreach (var m in moeLayers)
        {
            slices.Add(new OnnxLayerSlice(start, m + 1));
            start = m + 1;
        }
        if (start < layers) slices.Add(new OnnxLayerSlice(start, layers, Head: true));
        else slices[^1] = slices[^1] with { Head = true };
        return slices;
    }

    public static string SourceWeights(WeightLayout layout) => layout switch
    {
        WeightLayout.Dense => "dense",
        WeightLayout.Fp8Block => "fp8-block",
        WeightLayout.PackedInt4 => "int4",
        _ => layout.ToString().ToLowerInvariant(),
    };

    /// <summary>
    /// The selection margin of every row (float64 router logits from the MoE input); the graph's experts go to
    /// <paramref name="topkOut"/>. Returns the rows whose float64 selection is another expert set.
    /// </summary>
    private static int Margins(float[] x, long[] route, int rows, int h, float[] router, float[]? bias, RoutingRule rule, Span<int> topkOut, Span<float> marginOut)
    {
        int e = rule.Experts, k = rule.TopK;
        if (route.Length != (long)rows * k) throw new InvalidOperationException($"routing output of {route.Length} ids for {rows} rows x {k}");
        if (rule.Hashed)
        {
            // a hash layer's experts are a table lookup by token id: no scores to tie, as the golden's +inf margin says
            for (int i = 0; i < rows * k; i++) topkOut[i] = checked((int)route[i]);
            marginOut[..rows].Fill(float.PositiveInfinity);
            return 0;
        }
        var margins = new float[rows];
        int differ = 0;
        var biasD = bias == null ? [] : Array.ConvertAll(bias, b => (double)b);
        Parallel.For(0, rows, () => (new double[e], new int[k], new double[k]), (r, _, buf) =>
        {
            var (logits, sel, w) = buf;
            var xr = x.AsSpan(r * h, h);
            for (int j = 0; j < e; j++)
            {
                var wr = router.AsSpan(j * h, h);
                double acc = 0;
                for (int i = 0; i < h; i++) acc += (double)xr[i] * wr[i];
                logits[j] = acc;
            }
            margins[r] = (float)rule.Select(logits, biasD, sel, w);
            bool same = true;
            for (int a = 0; a < k && same; a++)
            {
                bool found = false;
                for (int b = 0; b < k; b++) found |= route[r * k + b] == sel[a];
                same = found;
            }
            if (!same) Interlocked.Increment(ref differ);
            return buf;
        }, _ => { });
        for (int i = 0; i < rows * k; i++) topkOut[i] = checked((int)route[i]);
        margins.CopyTo(marginOut);
        return differ;
    }

    /// <summary>One exported slice in an ONNX Runtime session, with its hidden states, MoE inputs and routing as outputs.</summary>
    private sealed class SliceSession : IDisposable
    {
        private readonly InferenceSession _session;
        private readonly bool _mask, _positions, _takesHidden;
        private readonly string _output;
        private readonly string[] _hidden;
        private readonly (int Layer, string Input, string Route)[] _moe;

        public IEnumerable<int> MoeLayers => _moe.Select(m => m.Layer);

        private readonly int[] _stateDims; // between sequence and hidden: [] or [streams]
        private readonly int _hiddenSize;

        public SliceSession(string dir, int threads, long[] streamDims, int hidden)
        {
            _stateDims = Array.ConvertAll(streamDims, d => checked((int)d));
            _hiddenSize = hidden;
            string path = Path.Combine(dir, "model.onnx");
            ModelProto proto;
            using (var fs = File.OpenRead(path)) proto = ModelProto.Parser.ParseFrom(fs);
            string Meta(string key) => proto.MetadataProps.FirstOrDefault(p => p.Key == key)?.Value ?? "";
            string[] List(string key) => Meta(key).Split(',', StringSplitOptions.RemoveEmptyEntries);
            var slice = Meta(OnnxDecoderNames.SliceKey).Split(',');
            int end = int.Parse(slice[1], System.Globalization.CultureInfo.InvariantCulture);
            bool head = proto.Graph.Output.Any(o => o.Name == OnnxDecoderNames.Logits);
            _output = head ? OnnxDecoderNames.Logits : OnnxDecoderNames.Layer(end - 1);
            // the residual streams too, where the family has several (each layer's output, the last layer's included)
            string[] states = [.. List(OnnxDecoderNames.HiddenStatesKey).Union(List(OnnxDecoderNames.ResidualStatesKey))];
            _hidden = head || states.Contains(_output) ? states : [.. states, _output];
            var inputs = List(OnnxDecoderNames.MoeInputsKey);
            var routes = List(OnnxDecoderNames.RoutingKey);
            _moe = inputs.Select((name, i) => (int.Parse(name.Split('.')[2], System.Globalization.CultureInfo.InvariantCulture), name, routes[i])).ToArray();
            var existing = proto.Graph.Output.Select(o => o.Name).ToHashSet();
            foreach (var n in _hidden.Concat(inputs).Concat(routes))
                if (existing.Add(n)) proto.Graph.Output.Add(new ValueInfoProto { Name = n });
            _takesHidden = proto.Graph.Input.Any(i => i.Name == OnnxDecoderNames.SliceInput);
            _mask = proto.Graph.Input.Any(i => i.Name == OnnxDecoderNames.AttentionMask);
            _positions = proto.Graph.Input.Any(i => i.Name == OnnxDecoderNames.PositionIds);
            var tmp = Path.Combine(dir, $".golden-{Environment.ProcessId}.onnx");
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

        public (float[] Output, Dictionary<string, float[]> Hidden, Dictionary<int, (float[] X, long[] Route)> Moe) Run(
            ReadOnlySpan<int> tokens, float[]? hiddenIn, int batch, int seq, bool wantHidden)
        {
            var inputs = new List<NamedOnnxValue>();
            if (_takesHidden)
                inputs.Add(NamedOnnxValue.CreateFromTensor(OnnxDecoderNames.SliceInput,
                    new DenseTensor<float>(hiddenIn ?? throw new InvalidOperationException("a slice after layer 0 needs the previous slice's output"),
                        [batch, seq, .. _stateDims, _hiddenSize])));
            else
                inputs.Add(DecoderInputs.Ids(tokens, batch, seq));
            DecoderInputs.AddMaskAndPositions(inputs, batch, seq, _mask, _positions);
            var names = new List<string> { _output };
            if (wantHidden) names.AddRange(_hidden.Where(n => n != _output));
            foreach (var m in _moe) { names.Add(m.Input); names.Add(m.Route); }
            using var results = _session.Run(inputs, names);
            var by = results.ToDictionary(r => r.Name, r => r, StringComparer.Ordinal);
            var output = by[_output].AsTensor<float>().ToArray();
            var hidden = new Dictionary<string, float[]>(StringComparer.Ordinal);
            if (wantHidden)
                foreach (var n in _hidden) hidden[n] = n == _output ? output : by[n].AsTensor<float>().ToArray();
            var moe = new Dictionary<int, (float[], long[])>();
            foreach (var m in _moe) moe[m.Layer] = (by[m.Input].AsTensor<float>().ToArray(), by[m.Route].AsTensor<long>().ToArray());
            return (output, hidden, moe);
        }

        public void Dispose() => _session.Dispose();
    }
}
