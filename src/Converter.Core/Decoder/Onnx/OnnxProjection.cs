using Converter.Formats.Onnx;
using Converter.Numerics.Int4;
using static Converter.Formats.Onnx.OnnxAttr;

namespace Converter.Decoder.Onnx;

/// <summary>
/// One projection weight [N, K] as a function body receives it: a float32 input (Gemm with transB), or the parts of
/// a <c>com.microsoft.MatMulNBits</c> 4-bit weight: B uint8 [N, K/block, block/2] (low nibble first, code = q + 8),
/// scales float32 [N, K/block] and, when asymmetric, zero points uint8 [N, ceil(K/block / 2)] (low nibble = even
/// block, zp + 8). MatMulNBits computes (code - zero) * scale, which equals compressed-tensors' (q - zp) * scale.
/// </summary>
internal sealed record Proj(string Weight, string? Scales, string? Zeros, long N, long K, int Block)
{
    public static Proj In(OnnxFunctionBuilder f, string name, bool int4, Int4Scheme? scheme, long n, long k)
    {
        string w = f.Input(name);
        if (!int4) return new Proj(w, null, null, n, k, 0);
        var s = scheme ?? throw new ArgumentException($"projection '{name}' is INT4 but no scheme was given");
        string scales = f.Input(name + "_scales");
        string? zeros = s.Symmetric ? null : f.Input(name + "_zero_points");
        return new Proj(w, scales, zeros, n, k, s.GroupSize);
    }

    /// <summary>x2 [tokens, K] times the weight transposed: [tokens, N].</summary>
    public string Apply(OnnxNodeBuilder f, string x2)
    {
        if (Scales == null) return f.Linear(x2, Weight);
        string[] inputs = Zeros == null ? [x2, Weight, Scales] : [x2, Weight, Scales, Zeros];
        // accuracy_level 0: float32 activations (level 4 would quantize them to int8).
        return f.Op("MatMulNBits", inputs, 1, OnnxModelBuilder.MicrosoftDomain,
            Int("K", K), Int("N", N), Int("bits", 4), Int("block_size", Block), Int("accuracy_level", 0))[0];
    }
}
