using Converter.Formats.Onnx.Proto;
using Converter.Decoder.Onnx;
using Converter.Verification;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;

namespace Converter.Runtime;

/// <summary>Where ONNX Runtime executes.</summary>
public enum OnnxExecutionProvider { Cpu, Cuda }

/// <param name="ExecutionProvider">cpu (default) or cuda (needs the GPU build of ONNX Runtime).</param>
/// <param name="IntraOpThreads">Threads per operator; 0 lets ONNX Runtime choose.</param>
public sealed record OnnxRunnerOptions(OnnxExecutionProvider ExecutionProvider = OnnxExecutionProvider.Cpu, int IntraOpThreads = 0)
{
    /// <summary>Log only errors from ONNX Runtime (e.g. rank models, whose peer-sum inputs with initializer defaults draw a warning per session).</summary>
    public bool ErrorsOnly { get; init; }

    /// <summary>KV-cache decoders: logits come from <see cref="OnnxArtifactRunner.RunDecode"/> with this prefill.</summary>
    public int? DecodePrefill { get; init; }

    /// <summary>The factory's generic options (<c>verify --execution-provider cpu|cuda --threads N</c>) for ONNX Runtime.</summary>
    public static OnnxRunnerOptions From(RunnerOptions options) => new(options.ExecutionProvider.ToLowerInvariant() switch
    {
        "cpu" => OnnxExecutionProvider.Cpu,
        "cuda" => OnnxExecutionProvider.Cuda,
        var other => throw new ArgumentException($"execution provider '{other}' is not cpu or cuda"),
    }, options.Threads) { DecodePrefill = options.DecodePrefill };
}

/// <summary>
/// Runs an exported ONNX model (model.onnx with external data) on token batches through ONNX Runtime.
/// Feeds <c>input_ids</c> and, when the model declares them, <c>attention_mask</c> (all ones) and
/// <c>position_ids</c> (0..seq-1). Hidden states and routing come from the value names the exporter lists in
/// the model metadata (<c>converter.hidden_states</c>, <c>converter.routing</c>): when they are requested and
/// are not graph outputs already, a copy of model.onnx with those values added as outputs is written beside
/// the data file (so its external data resolves), loaded, and deleted.
/// </summary>
public sealed class OnnxArtifactRunner : IArtifactRunner
{
    public const string HiddenStatesKey = "converter.hidden_states";
    public const string RoutingKey = "converter.routing";

    private readonly string _modelPath;
    private OnnxRunnerOptions _options;
    private readonly ModelProto _proto;
    private readonly string[] _hiddenNames, _routingNames, _residualNames, _selectionNames;
    private InferenceSession? _plain, _diagnostic;
    // A KV-cache decoder: its layers' cache width; full-sequence runs feed it empty past tensors.
    private readonly (int Layers, int Heads, int HeadSize)? _cache;

    public string Description { get; }
    public IReadOnlyList<string> HiddenStateNames => _hiddenNames;
    public IReadOnlyList<string> RoutingNames => _routingNames;

    public OnnxArtifactRunner(string modelPathOrFolder, OnnxRunnerOptions? options = null)
    {
        _modelPath = Directory.Exists(modelPathOrFolder) ? Path.Combine(modelPathOrFolder, "model.onnx") : modelPathOrFolder;
        if (!File.Exists(_modelPath)) throw new FileNotFoundException($"{_modelPath}: ONNX model not found", _modelPath);
        _options = options ?? new OnnxRunnerOptions();
        try
        {
            using var fs = File.OpenRead(_modelPath);
            _proto = ModelProto.Parser.ParseFrom(fs);
        }
        catch (Google.Protobuf.InvalidProtocolBufferException e)
        {
            throw new InvalidDataException($"{_modelPath}: not a valid ONNX model ({e.Message})");
        }
        _hiddenNames = (Metadata(HiddenStatesKey) ?? "").Split(',', StringSplitOptions.RemoveEmptyEntries);
        _routingNames = (Metadata(RoutingKey) ?? "").Split(',', StringSplitOptions.RemoveEmptyEntries);
        _residualNames = (Metadata(OnnxDecoderNames.ResidualStatesKey) ?? "").Split(',', StringSplitOptions.RemoveEmptyEntries);
        _selectionNames = (Metadata(OnnxDecoderNames.SelectionsKey) ?? "").Split(',', StringSplitOptions.RemoveEmptyEntries);
        // A rank model's peer-sum inputs have zeros initializers as defaults, which ORT warns about in every session.
        if (!string.IsNullOrEmpty(Metadata(OnnxDecoderNames.RankKey))) _options = _options with { ErrorsOnly = true };
        if (Metadata(OnnxDecoderNames.KvCacheKey) is { Length: > 0 } kv)
        {
            var parts = kv.Split(',');
            int layers = _proto.Graph.Input.Count(i => i.Name.StartsWith("past_key_values.", StringComparison.Ordinal) && i.Name.EndsWith(".key", StringComparison.Ordinal));
            _cache = (layers, int.Parse(parts[0], System.Globalization.CultureInfo.InvariantCulture), int.Parse(parts[1], System.Globalization.CultureInfo.InvariantCulture));
        }
        _plain = CreateSession(_modelPath);
        Description = $"ONNX Runtime {OrtEnv.Instance().GetVersionString()} ({_options.ExecutionProvider.ToString().ToLowerInvariant()}, " +
                      $"intra-op threads {(_options.IntraOpThreads == 0 ? "default" : _options.IntraOpThreads)}) on {_modelPath}";
    }

    private SessionOptions CreateOptions()
    {
        var so = new SessionOptions { GraphOptimizationLevel = GraphOptimizationLevel.ORT_ENABLE_ALL };
        if (_options.ErrorsOnly) so.LogSeverityLevel = OrtLoggingLevel.ORT_LOGGING_LEVEL_ERROR;
        if (_options.IntraOpThreads > 0) so.IntraOpNumThreads = _options.IntraOpThreads;
        if (_options.ExecutionProvider == OnnxExecutionProvider.Cuda)
        {
            try
            {
                so.AppendExecutionProvider_CUDA(0);
            }
            catch (Exception e) when (e is OnnxRuntimeException or EntryPointNotFoundException or DllNotFoundException)
            {
                so.Dispose();
                throw new NotSupportedException(
                    "The CUDA execution provider is not available in this ONNX Runtime build (the CPU package " +
                    "Microsoft.ML.OnnxRuntime is referenced; CUDA needs Microsoft.ML.OnnxRuntime.Gpu and a CUDA GPU): " + e.Message, e);
            }
        }
        return so;
    }

    private InferenceSession CreateSession(string path)
    {
        using var so = CreateOptions();
        return new InferenceSession(path, so);
    }

    private InferenceSession DiagnosticSession()
    {
        if (_diagnostic != null) return _diagnostic;
        var wanted = _hiddenNames.Concat(_routingNames).Concat(_residualNames).Concat(_selectionNames).Distinct().ToList();
        if (wanted.Count == 0) throw new NotSupportedException($"{_modelPath}: the model lists no hidden-state or routing values in its metadata");
        var existing = new HashSet<string>(_proto.Graph.Output.Select(o => o.Name), StringComparer.Ordinal);
        if (wanted.All(existing.Contains)) return _diagnostic = _plain!;
        var copy = _proto.Clone();
        foreach (var name in wanted)
            if (!existing.Contains(name)) copy.Graph.Output.Add(new ValueInfoProto { Name = name });
        var dir = Path.GetDirectoryName(Path.GetFullPath(_modelPath))!;
        var tmp = Path.Combine(dir, $".diagnostic-{Environment.ProcessId}-{Guid.NewGuid():N}.onnx");
        try
        {
            using (var fs = File.Create(tmp)) Google.Protobuf.MessageExtensions.WriteTo(copy, fs);
            return _diagnostic = CreateSession(tmp);
        }
        finally
        {
            File.Delete(tmp);
        }
    }

    public ArtifactOutputs Run(int[] tokens, int batch, int seq, bool hiddenStates, bool routing)
    {
        if (_options.DecodePrefill is not { } prefill) return Run(tokens, batch, seq, hiddenStates, routing, null, null, out _);
        if (_cache == null) throw new NotSupportedException($"{_modelPath}: --decode needs a KV-cache decoder (export onnx --kv-cache)");
        // Logits step by step through the cache; hidden states and routing (if asked) from one full-sequence run.
        var logits = RunDecode(tokens, batch, seq, Math.Min(prefill, seq));
        var full = hiddenStates || routing ? Run(tokens, batch, seq, hiddenStates, routing, null, null, out _) : null;
        return new ArtifactOutputs(logits, full?.HiddenStates, full?.RoutingTopK) { ResidualStates = full?.ResidualStates, Selections = full?.Selections };
    }

    /// <summary>The model's metadata value for <paramref name="key"/>, or null.</summary>
    public string? Metadata(string key) => _proto.MetadataProps.FirstOrDefault(p => p.Key == key)?.Value;

    /// <summary>Names of the graph's inputs, outputs and initializers (to check an expected interface before running).</summary>
    public bool HasInput(string name) => _proto.Graph.Input.Any(i => i.Name == name);
    public bool HasOutput(string name) => _proto.Graph.Output.Any(o => o.Name == name);

    /// <summary>
    /// Runs with extra float inputs fed by name (e.g. an expert-parallel rank's peer sums, which otherwise take their
    /// initializer defaults) and returns extra float outputs by name besides the usual ones.
    /// </summary>
    public ArtifactOutputs Run(int[] tokens, int batch, int seq, bool hiddenStates, bool routing,
        IReadOnlyDictionary<string, DenseTensor<float>>? extraInputs, IReadOnlyList<string>? extraOutputs, out Dictionary<string, float[]> extra)
    {
        var session = hiddenStates || routing ? DiagnosticSession() : _plain!;
        var inputs = Inputs(session, tokens, batch, seq, extraInputs);
        var outputNames = new List<string> { "logits" };
        if (hiddenStates) outputNames.AddRange(_hiddenNames);
        if (hiddenStates) outputNames.AddRange(_residualNames.Where(n => !outputNames.Contains(n)));
        if (routing) outputNames.AddRange(_routingNames);
        if (routing) outputNames.AddRange(_selectionNames);
        if (extraOutputs != null) outputNames.AddRange(extraOutputs.Where(n => !outputNames.Contains(n)));
        using var results = session.Run(inputs, outputNames);
        var byName = results.ToDictionary(r => r.Name, r => r);
        var logits = byName["logits"].AsTensor<float>().ToArray();
        extra = new Dictionary<string, float[]>(StringComparer.Ordinal);
        if (extraOutputs != null)
            foreach (var name in extraOutputs) extra[name] = byName[name].AsTensor<float>().ToArray();

        float[] Sequence0(string name)
        {
            var t = byName[name].AsTensor<float>();
            int per = (int)(t.Length / batch);
            return t.ToArray().AsSpan(0, per).ToArray(); // sequence 0 only
        }
        float[][]? hidden = hiddenStates ? Array.ConvertAll(_hiddenNames, Sequence0) : null;
        float[][]? residual = hiddenStates && _residualNames.Length > 0 ? Array.ConvertAll(_residualNames, Sequence0) : null;
        int[][]? route = null;
        if (routing)
        {
            route = new int[_routingNames.Length][];
            for (int i = 0; i < route.Length; i++)
            {
                var t = byName[_routingNames[i]].AsTensor<long>().ToArray();
                route[i] = Array.ConvertAll(t, x => checked((int)x));
            }
        }
        int[][]? selections = null;
        if (routing && _selectionNames.Length > 0)
            selections = Array.ConvertAll(_selectionNames, n => Array.ConvertAll(byName[n].AsTensor<long>().ToArray(), x => checked((int)x)));
        return new ArtifactOutputs(logits, hidden, route) { ResidualStates = residual, Selections = selections };
    }

    /// <summary>
    /// Only the named float outputs (e.g. a rank's <c>moe_partial.L</c>): ONNX Runtime then runs just the nodes they
    /// need, not the head, and no logits are copied out.
    /// </summary>
    public Dictionary<string, float[]> RunOutputs(int[] tokens, int batch, int seq, IReadOnlyDictionary<string, DenseTensor<float>>? extraInputs,
        IReadOnlyList<string> outputs)
    {
        using var results = _plain!.Run(Inputs(_plain, tokens, batch, seq, extraInputs), outputs);
        return results.ToDictionary(r => r.Name, r => r.AsTensor<float>().ToArray(), StringComparer.Ordinal);
    }

    /// <summary>True for a KV-cache decoder (<c>export onnx --kv-cache</c>).</summary>
    public bool HasKvCache => _cache != null;

    /// <summary>
    /// Incremental decoding through the cache: the first <paramref name="prefill"/> tokens of every sequence in one run,
    /// then one token per run, each feeding the previous run's present tensors back as past. Returns the logits of every
    /// position [batch, seq, vocab], as a full-sequence run would.
    /// </summary>
    public float[] RunDecode(int[] tokens, int batch, int seq, int prefill, IProgress<(int Done, int Total)>? progress = null)
    {
        var (layers, heads, headSize) = _cache ?? throw new NotSupportedException($"{_modelPath}: the model has no KV cache (export it with --kv-cache)");
        if (prefill < 1 || prefill > seq) throw new ArgumentException($"prefill {prefill} is not within 1..{seq}");
        var past = new Dictionary<string, DenseTensor<float>>(StringComparer.Ordinal);
        for (int l = 0; l < layers; l++)
        {
            past[OnnxDecoderNames.PastKey(l)] = new DenseTensor<float>(new float[0], [batch, heads, 0, headSize]);
            past[OnnxDecoderNames.PastValue(l)] = new DenseTensor<float>(new float[0], [batch, heads, 0, headSize]);
        }
        float[]? logits = null;
        int vocab = 0;
        var outputs = new List<string> { OnnxDecoderNames.Logits };
        for (int l = 0; l < layers; l++) { outputs.Add(OnnxDecoderNames.PresentKey(l)); outputs.Add(OnnxDecoderNames.PresentValue(l)); }
        for (int start = 0; start < seq;)
        {
            int n = start == 0 ? prefill : 1;
            var ids = new long[batch * n];
            var pos = new long[batch * n];
            var mask = new long[batch * (start + n)];
            Array.Fill(mask, 1L);
            for (int b = 0; b < batch; b++)
                for (int i = 0; i < n; i++)
                {
                    ids[b * n + i] = tokens[b * seq + start + i];
                    pos[b * n + i] = start + i;
                }
            var inputs = new List<NamedOnnxValue>
            {
                NamedOnnxValue.CreateFromTensor(OnnxDecoderNames.InputIds, new DenseTensor<long>(ids, [batch, n])),
                NamedOnnxValue.CreateFromTensor(OnnxDecoderNames.AttentionMask, new DenseTensor<long>(mask, [batch, start + n])),
                NamedOnnxValue.CreateFromTensor(OnnxDecoderNames.PositionIds, new DenseTensor<long>(pos, [batch, n])),
            };
            foreach (var (name, value) in past) inputs.Add(NamedOnnxValue.CreateFromTensor(name, value));
            using var results = _plain!.Run(inputs, outputs);
            var byName = results.ToDictionary(r => r.Name, r => r.AsTensor<float>(), StringComparer.Ordinal);
            var step = byName[OnnxDecoderNames.Logits];
            if (logits == null)
            {
                vocab = step.Dimensions[2];
                logits = new float[batch * seq * vocab];
            }
            var stepValues = step.ToArray();
            for (int b = 0; b < batch; b++)
                stepValues.AsSpan(b * n * vocab, n * vocab).CopyTo(logits.AsSpan((b * seq + start) * vocab));
            for (int l = 0; l < layers; l++)
                foreach (var name in new[] { OnnxDecoderNames.PresentKey(l), OnnxDecoderNames.PresentValue(l) })
                {
                    var t = byName[name];
                    past[name.Replace("present.", "past_key_values.", StringComparison.Ordinal)] = new DenseTensor<float>(t.ToArray(), t.Dimensions);
                }
            start += n;
            progress?.Report((start, seq));
        }
        return logits!;
    }

    private List<NamedOnnxValue> Inputs(InferenceSession session, int[] tokens, int batch, int seq,
        IReadOnlyDictionary<string, DenseTensor<float>>? extraInputs)
    {
        if (tokens.Length != batch * seq) throw new ArgumentException($"{tokens.Length} tokens for batch {batch} x seq {seq}");
        var inputs = new List<NamedOnnxValue> { DecoderInputs.Ids(tokens, batch, seq) };
        DecoderInputs.AddMaskAndPositions(inputs, batch, seq, session.InputMetadata.ContainsKey(OnnxDecoderNames.AttentionMask),
            session.InputMetadata.ContainsKey(OnnxDecoderNames.PositionIds));
        if (_cache is var (layers, heads, headSize))
            for (int l = 0; l < layers; l++)
            {
                inputs.Add(NamedOnnxValue.CreateFromTensor(OnnxDecoderNames.PastKey(l), new DenseTensor<float>(new float[0], [batch, heads, 0, headSize])));
                inputs.Add(NamedOnnxValue.CreateFromTensor(OnnxDecoderNames.PastValue(l), new DenseTensor<float>(new float[0], [batch, heads, 0, headSize])));
            }
        if (extraInputs != null)
            foreach (var (name, value) in extraInputs) inputs.Add(NamedOnnxValue.CreateFromTensor(name, value));
        return inputs;
    }

    /// <summary>Opens ONNX artifacts for <see cref="ArtifactRunnerFactory"/> (<c>verify</c>): cpu or cuda, threads.</summary>
    public static IArtifactRunner Open(string path, RunnerOptions options) => new OnnxArtifactRunner(path, OnnxRunnerOptions.From(options));

    /// <summary>Registers <see cref="Open"/> as the factory's ONNX runner.</summary>
    public static ArtifactRunnerFactory RegisterWith(ArtifactRunnerFactory factory) => factory.Register(ArtifactKind.Onnx, Open);

    public void Dispose()
    {
        if (_diagnostic != null && !ReferenceEquals(_diagnostic, _plain)) _diagnostic.Dispose();
        _plain?.Dispose();
        _plain = _diagnostic = null;
    }
}
