namespace Converter.Models;

/// <summary>
/// How a checkpoint stores one linear weight [N, K] (N = output rows, K = input columns). The stored dtypes decide
/// it, not the family: an e4m3 weight is FP8 whose scale dtype picks the scale kind, an I8 weight with an [N, K/32]
/// E8M0 scale is FP4. The family only names the scale tensor (<see cref="ModelArchitecture.ScaleTensorName"/>).
/// </summary>
public enum WeightEncoding
{
    /// <summary>BF16 / F16 / F32 / F64 as the values themselves (or a tensor that is not a linear weight).</summary>
    Dense,
    /// <summary>e4m3 [N, K] with a float32 scale per 128x128 block, [ceil(N/128), ceil(K/128)] (DeepSeek-V3's
    /// <c>weight_scale_inv</c>): value = e4m3 x scale.</summary>
    Fp8Block,
    /// <summary>e4m3 [N, K] with a power-of-two E8M0 scale per 128x128 block (<c>F8_E8M0</c>, or <c>U8</c> holding the
    /// same bytes), [ceil(N/128), ceil(K/128)] (DeepSeek-V4's <c>scale_fmt: ue8m0</c>): value = e4m3 x 2^(byte-127).</summary>
    Fp8BlockPow2,
    /// <summary>e2m1 codes two a byte (I8 [N, K/2], element 2k in the low nibble) with an E8M0 scale per 1x32 group,
    /// [N, K/32] (DeepSeek-V4's routed experts): value = e2m1 x 2^(byte-127).</summary>
    Fp4Group32,
    /// <summary>compressed-tensors pack-quantized INT4 (weight_packed / weight_scale / weight_shape).</summary>
    PackedInt4,
}

public static class WeightEncodings
{
    /// <summary>True for the block-scaled encodings (a weight plus one scale tensor).</summary>
    public static bool IsBlockScaled(this WeightEncoding e) => e is WeightEncoding.Fp8Block or WeightEncoding.Fp8BlockPow2 or WeightEncoding.Fp4Group32;

    /// <summary>Rows of one scale row: 128 for the FP8 blocks, 1 for FP4's 1x32 groups.</summary>
    public static int ScaleBlockRows(this WeightEncoding e) => e == WeightEncoding.Fp4Group32 ? 1 : 128;
}
