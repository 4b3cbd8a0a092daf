namespace Converter.Models;

/// <summary>The three projections of a SwiGLU feed-forward block.</summary>
public enum FfnProjection { Gate, Up, Down }

/// <summary>A SwiGLU block's weights: <c>down(silu(gate(x)) * up(x))</c>, gate/up [Intermediate, hidden], down [hidden, Intermediate].</summary>
public sealed record FeedForwardWeights(string Gate, string Up, string Down, long Intermediate)
{
    public string this[FfnProjection p] => p switch { FfnProjection.Gate => Gate, FfnProjection.Up => Up, _ => Down };
}

/// <summary>
/// One MoE layer as the pipelines see it, whatever the family calls its tensors: the router (and its selection
/// bias), the routed experts' SwiGLU weights by index, the shared expert block if any, and the routing rule.
/// <paramref name="StackPrefix"/> names the experts stacked into one tensor (ONNX fc1/fc2: "model.layers.3.mlp.experts.").
/// </summary>
public sealed record MoeBlock(int Layer, string Router, string? RouterBias, Func<int, FfnProjection, string> ExpertWeight,
    long ExpertIntermediate, FeedForwardWeights? Shared, RoutingRule Routing, string StackPrefix)
{
    public int Experts => Routing.Experts;
    public int TopK => Routing.TopK;

    /// <summary>A <see cref="RoutingRule.Hashed"/> layer's table [vocab, k] of expert ids per token id (integer tensor).</summary>
    public string? HashTable { get; init; }

    /// <summary>Clamped SwiGLU of the routed experts: <c>silu(min(gate, L)) * clamp(up, -L, L)</c>; null: plain SwiGLU.</summary>
    public double? SwigluLimit { get; init; }

    /// <summary>The same clamp for the shared experts; null: plain SwiGLU.</summary>
    public double? SharedSwigluLimit { get; init; }
}

/// <summary>The tensors every decoder-only family has around its layers.</summary>
public sealed record DecoderTensorNames(string Embedding, string FinalNorm, string LmHead, Func<int, string> InputNorm, Func<int, string> PostAttentionNorm)
{
    /// <summary>Hugging Face's Llama-style names (<c>model.embed_tokens</c>, <c>model.layers.L.input_layernorm</c>, ...).</summary>
    public static DecoderTensorNames HuggingFace { get; } = new("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight",
        l => $"model.layers.{l}.input_layernorm.weight", l => $"model.layers.{l}.post_attention_layernorm.weight");
}

/// <summary>One line of <c>inspect</c>'s architecture section: a label and its value.</summary>
public sealed record ArchitectureFact(string Label, string Value);
