namespace Converter.Decoder.Onnx;

/// <summary>How projection weights are stored in the ONNX file.</summary>
public enum OnnxWeightFormat
{
    /// <summary>float32 initializers.</summary>
    Fp32,
    /// <summary>float8e4m3fn initializers with DeepSeek's 128x128 block scales, dequantized in the graph.</summary>
    Fp8,
    /// <summary>
    /// 4-bit group-quantized weights: routed experts through com.microsoft.QMoE (block-wise), the projections named in
    /// <see cref="OnnxDecoderOptions.DenseInt4"/> through com.microsoft.MatMulNBits, everything else float32.
    /// </summary>
    Int4,
}

/// <summary>Choices for the exported graph.</summary>
/// <param name="Weights">fp32 or fp8 projection weights.</param>
/// <param name="AttentionMaskInput">Declare an <c>attention_mask</c> int64 [batch, sequence] input (Optimum convention).</param>
/// <param name="PositionIdsInput">Declare a <c>position_ids</c> int64 [batch, sequence] input.</param>
/// <param name="DiagnosticOutputs">Also output every hidden state and each MoE layer's top-k expert ids.</param>
/// <param name="Fp8CastDequantize">fp8 only: dequantize weights whose column count is a multiple of 128 with
/// Cast + Mul instead of blocked DequantizeLinear. Same values; ONNX Runtime constant-folds Cast + Mul at load, so
/// the session runs at fp32 speed but holds fp32 weights (at real DeepSeek shapes, 2 layers / 16 experts, loading
/// peaked at ~24 GB). Off by default: DequantizeLinear is not folded, keeps memory low and is slower per run.</param>
/// <param name="Int4">int4 only: group size and symmetry of every INT4 weight (one scheme per model).</param>
/// <param name="DenseInt4">int4 only: projection weights outside the routed experts that become MatMulNBits
/// (attention, dense MLP, shared experts); null or empty keeps them float32.</param>
/// <param name="Comm">Simulated expert-parallel traffic (quantize-dequantize of dispatch and/or combine in the MoE function).</param>
/// <param name="Rank">Expert-parallel rank graph: each MoE layer computes only this rank's local experts (see <see cref="OnnxRankExperts"/>).</param>
/// <param name="Slice">Only decoder layers [First, End) (see <see cref="OnnxLayerSlice"/>); null: the whole model.</param>
public sealed record OnnxDecoderOptions(
    OnnxWeightFormat Weights = OnnxWeightFormat.Fp32,
    bool AttentionMaskInput = true,
    bool PositionIdsInput = true,
    bool DiagnosticOutputs = false,
    bool Fp8CastDequantize = false,
    Converter.Numerics.Int4.Int4Scheme? Int4 = null,
    IReadOnlySet<string>? DenseInt4 = null,
    CommSimulation? Comm = null,
    OnnxRankExperts? Rank = null,
    OnnxLayerSlice? Slice = null)
{
    /// <summary>A decoder with a cache (<see cref="OnnxDecoderNames.PastKey"/> in, <see cref="OnnxDecoderNames.PresentKey"/>
    /// out per layer) that runs prefill and single-token decode in one graph; attention_mask then spans past and new tokens.</summary>
    public bool KvCache { get; init; }

    /// <summary>Benchmark baseline only: a family whose attention is sparse or compressed (DeepSeek-V4's sliding window,
    /// compressed entries and top-k selection) attends instead to every earlier token, all else unchanged: the cost the
    /// sparse attention avoids. Families with dense attention ignore it.</summary>
    public bool FullAttentionBaseline { get; init; }
}

/// <summary>
/// A graph of decoder layers [First, End) only, so that a runtime holds one piece of a model too large for one session
/// (layer-by-layer calibration). A slice starting at layer 0 takes <c>input_ids</c> and includes the embedding; a later
/// one takes the previous slice's output as <see cref="OnnxDecoderNames.SliceInput"/> float32 [batch, sequence, hidden].
/// Its output is <see cref="OnnxDecoderNames.Layer"/>(End - 1); the final norm and lm_head are not included, except in
/// a last slice (End = the layer count) with <paramref name="Head"/>, whose output is <c>logits</c> as in a whole model.
/// </summary>
public sealed record OnnxLayerSlice(int First, int End, bool Head = false)
{
    public override string ToString() => End - First == 1 ? $"layer {First}" : $"layers {First}-{End - 1}";
}

/// <summary>The routed experts one rank holds in one MoE layer: the logical expert in each local slot and the
/// share of that expert's routing weight the slot carries (a replicated expert's shares sum to 1 over its replicas).</summary>
public sealed record OnnxLocalExperts(int[] Experts, float[] Shares);

/// <summary>
/// What makes an exported graph one expert-parallel rank's: per MoE layer, the local slots. Routing stays over all
/// logical experts (identical on every rank); the routed experts' output is then this rank's partial sum only. Per
/// MoE layer L the graph gains an input <c>moe_peer_sum.L</c> (the other ranks' partials, added to the local one;
/// defaults to zeros) and an output <c>moe_partial.L</c> (the local partial), so the ranks' outputs sum to the
/// whole model's without collective operators.
/// </summary>
public sealed record OnnxRankExperts(int Rank, int Ranks, IReadOnlyDictionary<int, OnnxLocalExperts> Layers, string Placement = "");

/// <summary>Stable value names of the exported graph (diagnostic outputs refer to them).</summary>
public static class OnnxDecoderNames
{
    public const string Domain = "converter.ai";
    public const string InputIds = "input_ids";
    public const string AttentionMask = "attention_mask";
    public const string PositionIds = "position_ids";
    public const string Logits = "logits";
    /// <summary>KV-cache decoder inputs and outputs, onnxruntime-genai's names: [batch, heads, sequence, head size] per layer.</summary>
    public static string PastKey(int layer) => $"past_key_values.{layer}.key";
    public static string PastValue(int layer) => $"past_key_values.{layer}.value";
    public static string PresentKey(int layer) => $"present.{layer}.key";
    public static string PresentValue(int layer) => $"present.{layer}.value";
    /// <summary>Model metadata key of a KV-cache decoder: "heads,head_size" of every layer's key and value.</summary>
    public const string KvCacheKey = "converter.kv_cache";
    /// <summary>A layer slice's input when it does not start at layer 0: the hidden state after layer First - 1.</summary>
    public const string SliceInput = "hidden.in";
    /// <summary>Model metadata key of a layer slice: "First,End".</summary>
    public const string SliceKey = "converter.layer_slice";
    public const string Embedding = "hidden.embed";
    public const string FinalNorm = "hidden.final_norm";
    public static string Layer(int layer) => $"hidden.layer.{layer}";
    public static string Routing(int layer) => $"routing.layer.{layer}.topk";
    /// <summary>An MoE layer's input (post_attention_layernorm output) [batch, sequence, hidden]: the dispatch traffic.</summary>
    public static string MoeInput(int layer) => $"moe.layer.{layer}.input";

    /// <summary>A rank graph's input: the other ranks' routed partial sums of MoE layer <paramref name="layer"/> [batch|1, sequence|1, hidden].</summary>
    public static string PeerSum(int layer) => $"moe_peer_sum.{layer}";
    /// <summary>A rank graph's output: its own routed partial sum of MoE layer <paramref name="layer"/> [batch, sequence, hidden].</summary>
    public static string Partial(int layer) => $"moe_partial.{layer}";

    /// <summary>Rank graphs' metadata: this rank, the rank count, the MoE layers (comma-separated, in order), the placement label.</summary>
    public const string RankKey = "converter.shard.rank", RanksKey = "converter.shard.ranks", ShardLayersKey = "converter.shard.moe_layers",
        PlacementKey = "converter.shard.placement";
    /// <summary>Rank graphs' metadata, per MoE layer: "converter.shard.layer.L" = the local slots as expert:share pairs.</summary>
    public static string ShardLayerKey(int layer) => $"converter.shard.layer.{layer}";

    /// <summary>Model metadata key: comma-separated hidden-state values (embedding, layers 0..L-2, final norm).</summary>
    public const string HiddenStatesKey = "converter.hidden_states";
    /// <summary>Model metadata key of a family with several residual streams: comma-separated residual states
    /// [batch, sequence, streams, hidden] (the expanded embedding, then every layer's output, the last one included).</summary>
    public const string ResidualStatesKey = "converter.residual_states";
    /// <summary>Model metadata key: comma-separated sparse-attention selections (<see cref="Selection"/>), one per layer
    /// that selects its keys by a top-k (DeepSeek-V4's lightning indexer), in layer order.</summary>
    public const string SelectionsKey = "converter.attention_selections";
    /// <summary>Layer <paramref name="layer"/>'s sparse-attention selection: the picked key entries [batch, sequence, k], -1 where not attendable.</summary>
    public static string Selection(int layer) => $"selection.layer.{layer}.topk";
    /// <summary>Model metadata key: comma-separated top-k expert-id values, one per MoE layer in order.</summary>
    public const string RoutingKey = "converter.routing";
    /// <summary>Model metadata key: comma-separated MoE-input values, one per MoE layer in order.</summary>
    public const string MoeInputsKey = "converter.moe_inputs";
}
