using Converter.Formats.Onnx;
using Converter.Formats.Onnx.Proto;
using DataType = Converter.Formats.Onnx.Proto.TensorProto.Types.DataType;
using static Converter.Formats.Onnx.OnnxAttr;
using Converter.Models;
using N = Converter.Decoder.Onnx.OnnxDecoderNames;

namespace Converter.Decoder.Onnx;

/// <summary>Where an initializer's bytes come from.</summary>
public enum InitializerSource
{
    /// <summary>One checkpoint tensor as float32 (FP8 sources dequantized).</summary>
    Float32,
    /// <summary>Routed experts' gate and up stacked [E, 2I, hidden] with rows interleaved (gate i, up i).</summary>
    StackedFc1Float32,
    /// <summary>Routed experts' down projections stacked [E, hidden, I].</summary>
    StackedFloat32,
    /// <summary>e4m3 codes of one weight or of experts stacked: copied from an FP8 source or quantized.</summary>
    Fp8Codes,
    /// <summary>The block scales belonging to the preceding <see cref="Fp8Codes"/> initializer.</summary>
    Fp8Scales,
    /// <summary>4-bit codes (uint8, two per byte, low nibble first) of one weight or of experts stacked: copied from a
    /// packed INT4 source or quantized with the RTN INT4 quantizer.</summary>
    Int4Codes,
    /// <summary>Routed experts' gate and up codes stacked [E, 2I, hidden / 2] with rows interleaved (gate i, up i).</summary>
    Int4CodesFc1,
    /// <summary>float32 scales [.., N, K / group] of the preceding INT4 codes initializer (BF16 scales widened exactly).</summary>
    Int4Scales,
    /// <summary>uint8 zero points [.., N, ceil(K / group / 2)] of the preceding INT4 codes initializer (asymmetric only).</summary>
    Int4Zeros,
    /// <summary>Values computed at export (rope tables).</summary>
    Computed,
    /// <summary>One integer checkpoint tensor (I32 or I64) widened to int64 (a routing table).</summary>
    Int64,
}

/// <summary>One initializer of the exported model: its name, type, shape and source tensors.</summary>
/// <param name="Interleaved">INT4 scales and zero points of fc1: Tensors are the gate then the up projections, rows interleaved.</param>
public sealed record OnnxInitializerPlan(string Name, DataType Type, long[] Dims, InitializerSource Source,
    string[] Tensors, float[]? Values = null, bool Interleaved = false)
{
    /// <summary>Float32 values as the family's official layout holds the tensors (an fp8 export of weights the layout keeps
    /// in another block format, DeepSeek-V4's FP4 experts): a higher-precision source is rounded to that format first.</summary>
    public bool Official { get; init; }

    public long ByteLength => OnnxTensors.ByteLength(Type, Dims);
}

/// <summary>The graph (no initializer data yet) and the ordered list of initializers to stream into it.</summary>
public sealed record OnnxDecoderExport(ModelProto Model, IReadOnlyList<OnnxInitializerPlan> Initializers,
    IReadOnlyList<string> HiddenStateOutputs, IReadOnlyList<string> RoutingOutputs);

/// <summary>
/// Builds a decoder-only forward graph for any family: embedding, per layer RMSNorm + the family's attention +
/// residual, RMSNorm + MoE (routing from the family's <see cref="RoutingRule"/>) or dense SwiGLU + residual, final
/// norm, lm_head. Inputs input_ids (and optionally attention_mask, position_ids) int64 [batch, sequence]; output
/// logits float32 [batch, sequence, vocab]. MTP layers are not part of it. With <see cref="OnnxDecoderOptions.Slice"/>
/// only a range of decoder layers (<see cref="OnnxLayerSlice"/>).
/// </summary>
public static class OnnxDecoderGraph
{
    public static OnnxDecoderExport Build(ModelArchitecture arch, OnnxDecoderOptions options)
    {
        var family = arch.Onnx ?? throw new NotSupportedException($"ONNX export does not support model_type '{arch.ModelType}'");
        return new OnnxDecoderBuilder(arch, family, options).Build();
    }
}

/// <summary>
/// The state of one graph under construction, handed to the family's attention builder: the graph, the weight
/// helpers (float32, fp8 dequantized in the graph, INT4 parts for MatMulNBits), the shared mask, positions and
/// rotary tables, and one function per distinct set of INT4 inputs.
/// </summary>
public sealed class OnnxDecoderBuilder
{
    private readonly ModelArchitecture _arch;
    private readonly IOnnxDecoderFamily _family;
    private readonly List<OnnxInitializerPlan> _plan = [];
    // function name -> the signature it was made for (MoE functions differ by block shape and routing)
    private readonly Dictionary<string, string> _made = new(StringComparer.Ordinal);
    private readonly IReadOnlySet<string> _denseInt4;

    public OnnxModelBuilder Model { get; }
    public OnnxGraphBuilder Graph { get; }
    public OnnxDecoderOptions Options { get; }
    public Converter.Numerics.Int4.Int4Scheme? Int4 => Options.Int4;
    public bool Fp8 => Options.Weights == OnnxWeightFormat.Fp8;
    public bool IsInt4 => Options.Weights == OnnxWeightFormat.Int4;
    /// <summary>Additive attention bias [b|1, 1, s, s] ([b, 1, s, past + s] with a KV cache): 0 where a key is visible
    /// (causal and not padded), -1e9 elsewhere.</summary>
    public string Mask { get; private set; } = "";
    /// <summary>int64 position ids [batch, sequence].</summary>
    public string Positions { get; private set; } = "";
    /// <summary>The int64 token ids [batch, sequence] (graph input input_ids); empty in a slice that starts after layer 0.</summary>
    public string InputIds { get; private set; } = "";
    /// <summary>The int64 attention_mask input [batch, sequence] (1 = real token), or null where the graph has none.</summary>
    public string? AttentionMaskInput { get; private set; }
    public string Cos { get; private set; } = "";
    public string Sin { get; private set; } = "";
    public float Epsilon => (float)_arch.RmsNormEps;

    internal OnnxDecoderBuilder(ModelArchitecture arch, IOnnxDecoderFamily family, OnnxDecoderOptions options)
    {
        (_arch, _family, Options) = (arch, family, options);
        Graph = new OnnxGraphBuilder(arch.ModelType);
        Model = new OnnxModelBuilder { DocString = $"{arch.ModelType} ({arch.NumLayers} layers) exported by converter, weights {options.Weights}" };
        _denseInt4 = options.DenseInt4 ?? new HashSet<string>();
    }

    /// <summary>A function made once per name: "MLA", "MLA_int4" (every projection INT4), "MLA_int4_0110" (some).</summary>
    public string Function(string baseName, bool[] mask, Action<string, bool[]?> create, string signature = "")
    {
        string name = !mask.Any(b => b) ? baseName
            : mask.All(b => b) ? baseName + "_int4"
            : baseName + "_int4_" + string.Concat(mask.Select(b => b ? '1' : '0'));
        for (int n = 1; _made.TryGetValue(name, out var sig) && sig != signature; n++)
            name = $"{baseName}_{n}" + name[baseName.Length..];
        if (_made.TryAdd(name, signature)) create(name, mask.Any(b => b) ? mask : null);
        return name;
    }

    private readonly List<string> _selections = [];

    /// <summary>The stable name of layer <paramref name="layer"/>'s sparse-attention selection (the key entries a top-k
    /// picked per query, int64 [batch, sequence, k], -1 where a pick is not attendable), which the attention must produce:
    /// a diagnostic output like the routing, listed in the model metadata (<see cref="OnnxDecoderNames.SelectionsKey"/>).</summary>
    public string ReserveSelection(int layer)
    {
        string name = Graph.Reserve(OnnxDecoderNames.Selection(layer));
        _selections.Add(name);
        return name;
    }

    public string Init(string name, DataType type, long[] dims, InitializerSource src, string[] tensors, float[]? values = null, bool interleaved = false,
        bool official = false)
    {
        _plan.Add(new OnnxInitializerPlan(name, type, dims, src, tensors, values, interleaved) { Official = official });
        return Graph.Initializer(name);
    }

    private readonly Dictionary<string, string> _plain = new(StringComparer.Ordinal);

    /// <summary>A checkpoint tensor as a float32 initializer, planned once however often it is used (tied embeddings).</summary>
    public string Plain(string name, params long[] dims) =>
        _plain.TryGetValue(name, out var value) ? value : _plain[name] = Init(name, DataType.Float, dims, InitializerSource.Float32, [name]);

    /// <summary>An integer checkpoint tensor (a routing table) as an int64 initializer, planned once.</summary>
    public string Integers(string name, params long[] dims) =>
        _plain.TryGetValue(name, out var value) ? value : _plain[name] = Init(name, DataType.Int64, dims, InitializerSource.Int64, [name]);

    /// <summary>RMSNorm over the last axis with a checkpoint weight.</summary>
    public string RmsNorm(string x, string weight, long dim) =>
        Graph.Op("RMSNormalization", [x, Plain(weight, dim)], Float("epsilon", Epsilon), Int("axis", -1));

    /// <summary>A projection's function inputs: one float32 value (dequantized in the graph for fp8), or INT4 codes,
    /// scales (and zero points) for MatMulNBits; <paramref name="mask"/> records which.</summary>
    public string[] Proj(string name, long rows, long cols, List<bool> mask)
    {
        bool q = IsInt4 && _denseInt4.Contains(name);
        mask.Add(q);
        return q ? Int4Parts(name, [name], null, rows, cols, InitializerSource.Int4Codes, matMulNBits: true) : [Linear(name, rows, cols)];
    }

    /// <summary>A projection that stays float32 (dequantized in the graph for fp8) even in an INT4 export: weights
    /// the attention reshapes or absorbs rather than multiplies with (MLA's kv_b in a KV-cache decoder).</summary>
    public string[] FloatProj(string name, long rows, long cols, List<bool> mask)
    {
        mask.Add(false);
        return [Linear(name, rows, cols)];
    }

    private string[] Int4Parts(string name, string[] tensors, long? experts, long rows, long cols, InitializerSource codes, bool matMulNBits)
    {
        int block = Int4!.Value.GroupSize;
        long groups = cols / block;
        long[] lead = experts is { } e ? [e] : [];
        bool fc1 = codes == InitializerSource.Int4CodesFc1;
        // MatMulNBits wants B as [N, blocks, block / 2]; QMoE as [E, N, K / 2]: the same bytes.
        long[] codeDims = matMulNBits ? [.. lead, rows, groups, block / 2] : [.. lead, rows, cols / 2];
        var parts = new List<string>
        {
            Init(name, DataType.Uint8, codeDims, codes, tensors),
            Init(name + "_scales", DataType.Float, [.. lead, rows, groups], InitializerSource.Int4Scales, tensors, interleaved: fc1),
        };
        if (!Int4.Value.Symmetric)
            parts.Add(Init(name + "_zero_points", DataType.Uint8, [.. lead, rows, (groups + 1) / 2], InitializerSource.Int4Zeros, tensors, interleaved: fc1));
        return parts.ToArray();
    }

    /// <summary>fp8 export: true for the weights the family's official layout stores as FP8 blocks (every projection of
    /// DeepSeek-V3 and Qwen3-MoE); the others stay float32.</summary>
    public bool IsFp8Weight(string name) => Fp8 && OfficialEncoding(name) is WeightEncoding.Fp8Block or WeightEncoding.Fp8BlockPow2;

    private WeightEncoding OfficialEncoding(string name) => _arch.OfficialEncoding(_arch.Classify(name));

    private string DequantFor(long cols) => Options.Fp8CastDequantize && cols % 128 == 0 ? OnnxFeedForwardFunctions.DequantCastName : OnnxFeedForwardFunctions.DequantName;

    private string Linear(string name, long rows, long cols)
    {
        if (!IsFp8Weight(name)) return Plain(name, rows, cols);
        string w = Init(name, DataType.Float8E4M3Fn, [rows, cols], InitializerSource.Fp8Codes, [name]);
        string s = Init(name + "_scale_inv", DataType.Float, [(rows + 127) / 128, (cols + 127) / 128], InitializerSource.Fp8Scales, [name]);
        return Graph.Op(DequantFor(cols), [w, s], 1, N.Domain)[0];
    }

    private string DequantStacked(string name, string[] tensors, long e, long rows, long cols)
    {
        string w = Init(name, DataType.Float8E4M3Fn, [e, rows, cols], InitializerSource.Fp8Codes, tensors);
        string s = Init(name + "_scale_inv", DataType.Float, [e, (rows + 127) / 128, (cols + 127) / 128], InitializerSource.Fp8Scales, tensors);
        return Graph.Op(DequantFor(cols), [w, s], 1, N.Domain)[0];
    }

    internal OnnxDecoderExport Build()
    {
        var g = Graph;
        var options = Options;
        var arch = _arch;
        var names = arch.Names;
        bool fp8 = Fp8, int4 = IsInt4;
        var scheme = options.Int4;
        Model.Import(N.Domain, 1);
        if (int4 && scheme == null) throw new ArgumentException("int4 export needs an INT4 scheme (options.Int4)");
        if (int4) Model.Import(OnnxModelBuilder.MicrosoftDomain, 1);
        var rank = options.Rank;
        if (rank != null && options.Comm is { Any: true })
            throw new NotSupportedException("an expert-parallel rank graph is exported without simulated traffic");
        if (fp8)
        {
            OnnxFeedForwardFunctions.DequantizeFp8Block(Model);
            if (options.Fp8CastDequantize) OnnxFeedForwardFunctions.DequantizeFp8BlockCast(Model);
        }
        long h = arch.HiddenSize, v = arch.VocabSize;
        int layers = arch.NumLayers;

        var slice = options.Slice ?? new OnnxLayerSlice(0, layers);
        bool whole = options.Slice == null;
        if (slice.First < 0 || slice.End > layers || slice.First >= slice.End)
            throw new ArgumentException($"layer slice [{slice.First}, {slice.End}) is not within the model's {layers} layers");
        if (slice.Head && slice.End != layers) throw new ArgumentException($"layer slice [{slice.First}, {slice.End}) ends before the last layer and has no head");
        bool head = whole || slice.Head; // final norm, lm_head and logits
        if (!whole && rank != null) throw new NotSupportedException("an expert-parallel rank graph is exported whole, not as a layer slice");
        bool cached = options.KvCache;
        if (cached && (!whole || rank != null || options.Comm is { Any: true }))
            throw new NotSupportedException("a KV-cache decoder is exported whole, without expert-parallel ranks or simulated traffic");
        if (cached && (!options.AttentionMaskInput || !options.PositionIdsInput))
            throw new ArgumentException("a KV-cache decoder takes attention_mask and position_ids (they locate the new tokens after the past ones)");

        // Inputs, embedding (or the previous slice's residual state), mask, positions.
        var residual = _family.Residual;
        // The residual state's dims after [batch, sequence]: hidden for one stream, [streams..., hidden] for several.
        object?[] stateDims = ["batch", "sequence", .. residual.StreamDims.Select(d => (object?)d), h];
        bool streams = residual.StreamDims.Length > 0;
        string hidden, batchSeq; // batchSeq: the int64 shape [batch, sequence]
        var hiddenOutputs = new List<string>();
        var residualStates = new List<string>();
        if (slice.First == 0)
        {
            string ids = InputIds = g.Input(N.InputIds, DataType.Int64, "batch", "sequence");
            batchSeq = g.Shape(ids);
            string embed = Plain(names.Embedding, v, h);
            if (streams)
            {
                string embedded = g.Fresh("embedded");
                g.OpNamed("Gather", [embed, ids], [embedded]);
                hidden = residual.Expand(this, embedded);
                g.OpNamed("Identity", [hidden], [g.Reserve(N.Embedding)]);
                hidden = N.Embedding;
            }
            else
            {
                hidden = g.Reserve(N.Embedding);
                g.OpNamed("Gather", [embed, ids], [hidden]);
            }
            hiddenOutputs.Add(N.Embedding);
            residualStates.Add(N.Embedding);
        }
        else
        {
            hidden = g.Input(N.SliceInput, DataType.Float, stateDims);
            batchSeq = g.Shape(hidden, 0, 2);
        }
        string? attentionMask = AttentionMaskInput = options.AttentionMaskInput ? g.Input(N.AttentionMask, DataType.Int64, "batch", "sequence") : null;
        string? positionIds = options.PositionIdsInput ? g.Input(N.PositionIds, DataType.Int64, "batch", "sequence") : null;

        string seq = g.Reshape(g.Shape(hidden, 1, 2), g.ConstInt64());
        string range = g.Op("Range", [g.ScalarInt64(0), seq, g.ScalarInt64(1)]);
        string causal;
        var caches = new List<OnnxLayerCache>();
        if (cached)
        {
            var shape = _family.KvCache;
            for (int l = 0; l < layers; l++)
            {
                string pk = g.Input(N.PastKey(l), DataType.Float, "batch", shape.Heads, "past_sequence_length", shape.HeadSize);
                string pv = g.Input(N.PastValue(l), DataType.Float, "batch", shape.Heads, "past_sequence_length", shape.HeadSize);
                caches.Add(new OnnxLayerCache(pk, pv, g.Reserve(N.PresentKey(l)), g.Reserve(N.PresentValue(l))));
            }
            // Query i sits at past + i and sees keys 0..past + i of the past-plus-new sequence.
            string past = g.Reshape(g.Shape(caches[0].PastKey, 2, 3), g.ConstInt64());
            string keys = g.Op("Range", [g.ScalarInt64(0), g.Add(past, seq), g.ScalarInt64(1)]);
            causal = g.Op("LessOrEqual", [g.Unsqueeze(keys, 0), g.Unsqueeze(g.Add(range, past), 1)]);   // [s, past + s]
            Model.Metadata[N.KvCacheKey] = $"{shape.Heads},{shape.HeadSize}";
        }
        else
        {
            causal = g.Op("LessOrEqual", [g.Unsqueeze(range, 0), g.Unsqueeze(range, 1)]);   // [s, s]: key <= query
        }
        string allowed = attentionMask == null
            ? g.Unsqueeze(causal, 0, 1)
            : g.Op("And", [causal, g.Unsqueeze(g.Cast(attentionMask, DataType.Bool), 1, 2)]);  // [b, 1, s, s]
        // A large finite bias (not -inf) keeps fully padded rows finite.
        Mask = g.Op("Where", [allowed, g.ScalarFloat(0f), g.ScalarFloat(-1e9f)]);
        Positions = positionIds ?? g.Op("Expand", [g.Unsqueeze(range, 0), batchSeq]);

        int maxPos = _family.MaxPositions;
        if (_family.Rope(maxPos) is { } rope)
        {
            Cos = Init("rope.cos_cache", DataType.Float, [maxPos, rope.Half], InitializerSource.Computed, [], rope.Cos);
            Sin = Init("rope.sin_cache", DataType.Float, [maxPos, rope.Half], InitializerSource.Computed, [], rope.Sin);
        }

        var routingOutputs = new List<string>();
        var moeInputValues = new List<string>();
        var partialOutputs = new List<string>();
        var rankLayers = new List<int>();
        int topK = 0;
        for (int layer = slice.First; layer < slice.End; layer++)
        {
            var attnSplit = residual.Collapse(this, layer, OnnxSublayer.Attention, hidden);
            string xn = RmsNorm(attnSplit.BlockInput, names.InputNorm(layer), h);
            string attn = _family.Attention(this, layer, xn, cached ? caches[layer] : null);
            hidden = residual.Merge(this, layer, OnnxSublayer.Attention, hidden, attnSplit, attn, null);

            var ffnSplit = residual.Collapse(this, layer, OnnxSublayer.FeedForward, hidden);
            string xn2 = RmsNorm(ffnSplit.BlockInput, names.PostAttentionNorm(layer), h);
            string mlpOut = g.Fresh($"layer{layer}.mlp");
            if (arch.IsMoeLayer(layer))
            {
                var block = arch.Moe(layer);
                topK = block.TopK;
                string moeIn = g.Reserve(N.MoeInput(layer));
                g.OpNamed("Identity", [xn2], [moeIn]); // a stable name for calibration (ORT removes the node)
                xn2 = moeIn;
                moeInputValues.Add(moeIn);
                long e = block.Experts, mi = block.ExpertIntermediate;
                OnnxLocalExperts? local = null;
                if (rank != null && !rank.Layers.TryGetValue(layer, out local))
                    throw new ArgumentException($"rank {rank.Rank}: no local experts given for MoE layer {layer}");
                // The experts stacked into fc1/fc2: all of them, or a rank's local slots in slot order.
                int[] stacked = local?.Experts ?? Enumerable.Range(0, (int)e).ToArray();
                long se = stacked.Length;
                string router = Plain(block.Router, e, h);
                string bias = block.RouterBias is { } rb ? Plain(rb, e) : g.ConstFloat([e], new float[e]);
                string[] Experts(FfnProjection part) => stacked.Select(i => block.ExpertWeight(i, part)).ToArray();
                string stackName = block.StackPrefix;
                var moeMask = new List<bool> { int4 };
                var moeInputs = new List<string> { xn2, router, bias };
                if (int4)
                {
                    moeInputs.AddRange(Int4Parts(stackName + "fc1.weight", [.. Experts(FfnProjection.Gate), .. Experts(FfnProjection.Up)], se, 2 * mi, h,
                        InitializerSource.Int4CodesFc1, matMulNBits: false));
                    moeInputs.AddRange(Int4Parts(stackName + "fc2.weight", Experts(FfnProjection.Down), se, h, mi, InitializerSource.Int4Codes, matMulNBits: false));
                }
                else if (fp8 && IsFp8Weight(block.ExpertWeight(stacked[0], FfnProjection.Gate)))
                {
                    string gate = DequantStacked(stackName + "gate_proj.weight", Experts(FfnProjection.Gate), se, mi, h);
                    string up = DequantStacked(stackName + "up_proj.weight", Experts(FfnProjection.Up), se, mi, h);
                    // Interleave rows (gate i, up i): com.microsoft.MoE's swiglu_fusion=1 layout.
                    moeInputs.Add(g.Reshape(g.Concat(2, g.Unsqueeze(gate, 2), g.Unsqueeze(up, 2)), se, 2 * mi, h));
                    moeInputs.Add(DequantStacked(stackName + "down_proj.weight", Experts(FfnProjection.Down), se, h, mi));
                }
                else
                {
                    // fp8 export of experts the official layout keeps in another block format (DeepSeek-V4's FP4): their
                    // exact values as float32.
                    moeInputs.Add(Init(stackName + "fc1.weight", DataType.Float, [se, 2 * mi, h], InitializerSource.StackedFc1Float32,
                        [.. Experts(FfnProjection.Gate), .. Experts(FfnProjection.Up)], official: fp8));
                    moeInputs.Add(Init(stackName + "fc2.weight", DataType.Float, [se, h, mi], InitializerSource.StackedFloat32, Experts(FfnProjection.Down), official: fp8));
                }
                if (local != null)
                {
                    moeInputs.Add(g.ConstInt64(Array.ConvertAll(local.Experts, x => (long)x)));
                    moeInputs.Add(g.ConstFloat([se], local.Shares));
                }
                var shape = new OnnxMoeShape(h, mi, block.Shared?.Intermediate ?? 0, block.Routing, block.SwigluLimit, block.SharedSwigluLimit);
                if (block.Shared is { } sh)
                {
                    moeInputs.AddRange(Proj(sh.Gate, sh.Intermediate, h, moeMask));
                    moeInputs.AddRange(Proj(sh.Up, sh.Intermediate, h, moeMask));
                    moeInputs.AddRange(Proj(sh.Down, h, sh.Intermediate, moeMask));
                }
                if (block.Routing.Hashed)
                {
                    // The experts of each token come from the table row of its id.
                    if (InputIds.Length == 0)
                        throw new NotSupportedException($"MoE layer {layer} routes by token id: a slice without input_ids cannot compute it");
                    moeInputs.Add(Integers(block.HashTable ?? throw new InvalidOperationException($"MoE layer {layer} is hashed but names no table"), arch.VocabSize, block.TopK));
                    moeInputs.Add(InputIds);
                }
                string route = g.Reserve(N.Routing(layer));
                if (local != null)
                {
                    // This rank's routed partial, plus the other ranks' (an input that defaults to zeros), plus the
                    // shared experts once: summed over ranks in graph order, the layer's output is the whole model's.
                    int localK = Math.Min(block.TopK, stacked.Length);
                    string rankFn = Function($"{OnnxFeedForwardFunctions.MoeRankName}_k{localK}", moeMask.ToArray(),
                        (n, mk) => OnnxFeedForwardFunctions.Moe(Model, shape, n, scheme, mk, null, rankLocal: true, localK: localK), shape.ToString());
                    string shared = g.Fresh($"layer{layer}.shared");
                    string partial = g.Reserve(N.Partial(layer));
                    g.OpNamed(rankFn, moeInputs, [shared, partial, route], N.Domain);
                    string peer = g.Input(N.PeerSum(layer), DataType.Float, null, null, h);
                    _plan.Add(new OnnxInitializerPlan(peer, DataType.Float, [1, 1, h], InitializerSource.Computed, [], new float[h]));
                    g.OpNamed("Add", [shared, g.Add(partial, peer)], [mlpOut]);
                    partialOutputs.Add(partial);
                    routingOutputs.Add(route);
                    rankLayers.Add(layer);
                }
                else
                {
                    string moeFn = Function(OnnxFeedForwardFunctions.MoeName, moeMask.ToArray(),
                        (n, mk) => OnnxFeedForwardFunctions.Moe(Model, shape, n, scheme, mk, options.Comm is { Any: true } ? options.Comm : null), shape.ToString());
                    g.OpNamed(moeFn, moeInputs, [mlpOut, route], N.Domain);
                    routingOutputs.Add(route);
                }
            }
            else
            {
                var mlp = arch.DenseMlp(layer);
                long inter = mlp.Intermediate;
                var mlpMask = new List<bool>();
                var mlpInputs = new List<string> { xn2 };
                mlpInputs.AddRange(Proj(mlp.Gate, inter, h, mlpMask));
                mlpInputs.AddRange(Proj(mlp.Up, inter, h, mlpMask));
                mlpInputs.AddRange(Proj(mlp.Down, h, inter, mlpMask));
                string mlpFn = Function(OnnxFeedForwardFunctions.MlpName, mlpMask.ToArray(),
                    (n, mk) => OnnxFeedForwardFunctions.Mlp(Model, h, inter, n, scheme, mk), $"{h}x{inter}");
                g.OpNamed(mlpFn, mlpInputs, [mlpOut], N.Domain);
            }
            string layerOut = g.Reserve(N.Layer(layer));
            hidden = residual.Merge(this, layer, OnnxSublayer.FeedForward, hidden, ffnSplit, mlpOut, layerOut);
            if (layer < layers - 1) hiddenOutputs.Add(layerOut);
            residualStates.Add(layerOut);
        }

        if (head)
        {
            string final = g.Reserve(N.FinalNorm);
            g.OpNamed("RMSNormalization", [residual.Head(this, hidden), Plain(names.FinalNorm, h)], [final], "", Float("epsilon", Epsilon), Int("axis", -1));
            hiddenOutputs.Add(final);
            string lmHead = Plain(names.LmHead, v, h);
            string flatLogits = g.Linear(g.Reshape(final, -1, h), lmHead);
            g.OpNamed("Reshape", [flatLogits, g.Concat(0, batchSeq, g.ConstInt64(v))], [N.Logits]);
            g.Output(N.Logits, DataType.Float, "batch", "sequence", v);
            if (!whole) Model.Metadata[N.SliceKey] = $"{slice.First},{slice.End}";
        }
        else
        {
            g.Output(N.Layer(slice.End - 1), DataType.Float, stateDims);
            hiddenOutputs.Remove(N.Layer(slice.End - 1));
            Model.Metadata[N.SliceKey] = $"{slice.First},{slice.End}";
            Model.DocString += $", {slice} only";
        }
        foreach (var name in partialOutputs) g.Output(name, DataType.Float, "batch", "sequence", h);
        foreach (var c in caches)
        {
            g.Output(c.PresentKey, DataType.Float, "batch", _family.KvCache.Heads, "total_sequence_length", _family.KvCache.HeadSize);
            g.Output(c.PresentValue, DataType.Float, "batch", _family.KvCache.Heads, "total_sequence_length", _family.KvCache.HeadSize);
        }

        if (options.DiagnosticOutputs)
        {
            foreach (var name in hiddenOutputs) g.Output(name, DataType.Float, name == N.FinalNorm ? ["batch", "sequence", h] : stateDims);
            if (head && !hiddenOutputs.Contains(N.Layer(layers - 1))) g.Output(N.Layer(layers - 1), DataType.Float, stateDims);
            foreach (var name in routingOutputs) g.Output(name, DataType.Int64, null, topK);
            foreach (var name in moeInputValues) g.Output(name, DataType.Float, "batch", "sequence", h);
            foreach (var name in _selections) g.Output(name, DataType.Int64, "batch", "sequence", null);
        }

        Model.Metadata[N.HiddenStatesKey] = string.Join(",", hiddenOutputs);
        if (streams) Model.Metadata[N.ResidualStatesKey] = string.Join(",", residualStates);
        if (_selections.Count > 0) Model.Metadata[N.SelectionsKey] = string.Join(",", _selections);
        Model.Metadata[N.RoutingKey] = string.Join(",", routingOutputs);
        Model.Metadata[N.MoeInputsKey] = string.Join(",", moeInputValues);
        if (options.Comm is { Any: true } comm) Model.Metadata["converter.simulate_comm"] = comm.ToString();
        if (rank != null)
        {
            Model.Metadata[N.RankKey] = rank.Rank.ToString(System.Globalization.CultureInfo.InvariantCulture);
            Model.Metadata[N.RanksKey] = rank.Ranks.ToString(System.Globalization.CultureInfo.InvariantCulture);
            Model.Metadata[N.ShardLayersKey] = string.Join(",", rankLayers);
            Model.Metadata[N.PlacementKey] = rank.Placement;
            foreach (var l in rankLayers)
            {
                var le = rank.Layers[l];
                Model.Metadata[N.ShardLayerKey(l)] = string.Join(",", le.Experts.Select((x, i) =>
                    $"{x}:{le.Shares[i].ToString("R", System.Globalization.CultureInfo.InvariantCulture)}"));
            }
            Model.DocString += $", expert-parallel rank {rank.Rank} of {rank.Ranks}";
        }
        Model.Metadata["converter.model_type"] = arch.ModelType;
        Model.Metadata["converter.weights"] = options.Weights.ToString().ToLowerInvariant();
        if (int4) Model.Metadata["converter.int4"] = $"group {scheme!.Value.GroupSize}, {(scheme.Value.Symmetric ? "symmetric" : "asymmetric")}, {_denseInt4.Count} dense projection(s) MatMulNBits";
        return new OnnxDecoderExport(Model.Build(g), _plan, hiddenOutputs, routingOutputs);
    }
}
