namespace Converter.Models;

/// <summary>What a checkpoint tensor is, independent of the architecture's naming.</summary>
public enum TensorKind
{
    Embedding,
    LmHead,
    Norm,
    AttentionProjection,
    Router,
    RouterBias,
    DenseMlp,
    SharedExpert,
    RoutedExpert,
    MtpProjection,
    /// <summary>A parameter of none of the roles above that the family keeps as stored (hyper-connection mixing,
    /// attention sinks, compressor position biases, hash-routing tables).</summary>
    Auxiliary,
    /// <summary>A block-quantization scale (FP8 <c>weight_scale_inv</c>) belonging to another tensor.</summary>
    QuantScale,
    /// <summary>A packed-INT4 component (compressed-tensors weight_packed/scale/shape/zero_point).</summary>
    QuantPacked,
}

/// <summary>
/// The role of one tensor: its kind, its layer (-1 outside layers), expert index (-1 unless routed), the
/// projection within its block (e.g. "gate_proj", "q_a_proj"), and whether it belongs to an MTP layer.
/// </summary>
public readonly record struct TensorRole(TensorKind Kind, int Layer = -1, int Expert = -1, string Part = "", bool IsMtp = false)
{
    public bool IsLinearWeight => Kind is TensorKind.AttentionProjection or TensorKind.DenseMlp or TensorKind.SharedExpert
        or TensorKind.RoutedExpert or TensorKind.MtpProjection;
}
