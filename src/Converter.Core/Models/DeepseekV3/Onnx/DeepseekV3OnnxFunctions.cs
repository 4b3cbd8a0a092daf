using Converter.Decoder.Onnx;
using Converter.Formats.Onnx;
using Converter.Numerics.Int4;
using static Converter.Formats.Onnx.OnnxAttr;

namespace Converter.Models.DeepseekV3.Onnx;

/// <summary>
/// Bodies of the model-local functions (domain <c>converter.ai</c>). Each is generated for one config, so head
/// counts and widths are constants in the body; weights come in as inputs (a body cannot see initializers).
/// Layouts: hidden states [batch, seq, hidden]; inside a body tokens are flattened to [tokens, hidden] for Gemm
/// against PyTorch-layout [out, in] weights.
/// </summary>
internal static class DeepseekV3OnnxFunctions
{
    public const string MlaName = "MLA", MlaCachedName = "MLA_cached";

    /// <summary>
    /// MLA, expanded form. Inputs: x, additive mask [b|1, 1, s, s], position_ids, cos, sin, then the projections
    /// (q_a, q_a_norm, q_b or q), kv_a, kv_a_norm, kv_b, o. Rope runs interleaved on the rope slice of q and on
    /// the single shared k_pe head, which is then broadcast to every head; the softmax scale carries YaRN's mscale².
    /// </summary>
    public static void Mla(OnnxModelBuilder model, DeepseekV3Config c, string name = MlaName, Int4Scheme? int4Scheme = null, bool[]? int4 = null)
    {
        var f = model.Function(OnnxDecoderNames.Domain, name);
        f.DocString = "DeepSeek-V3 multi-head latent attention (expanded), causal, interleaved rope on the rope slice";
        var m = Common(f, c, int4Scheme, int4, floatKvB: false);
        int nh = c.NumAttentionHeads, nope = c.QkNopeHeadDim, vd = c.VHeadDim;
        string kv4 = f.Transpose(f.Reshape(m.KvB.Apply(f, m.CNorm), f.Concat(0, m.Bs, f.ConstInt64(nh, nope + vd))), 0, 2, 1, 3); // [b, nh, s, nope+v]
        var kvSplit = f.Split(kv4, 3, nope, vd);
        string kPeAll = f.Op("Expand", [m.KPe, f.ConstInt64(1, nh, 1, 1)]);

        string qFull = f.Concat(3, m.QNope, m.QPe);
        string kFull = f.Concat(3, kvSplit[0], kPeAll);
        // The 4-D (batch, heads, seq, head) layout: the 3-D one loses V's width inside a function body.
        string attn = f.Op("Attention", [qFull, kFull, kvSplit[1], m.Mask], Float("scale", (float)c.SoftmaxScale));
        string merged = f.Reshape(f.Transpose(attn, 0, 2, 1, 3), -1, nh * vd);
        f.Output(f.Reshape(m.O.Apply(f, merged), f.Shape(m.X)));
    }

    /// <summary>
    /// MLA over the latent cache (absorbed form). Inputs as <see cref="Mla"/>, then past_key and past_value [b, 1, P, half]:
    /// the two halves of the latent (normalised c_kv, then the roped k_pe, zero-padded to 2 x half). Outputs: y,
    /// present_key, present_value (past and this call's tokens). Scores are q_nope W_UK . c_kv + q_pe . k_pe, with
    /// W_UK (kv_b's key rows) absorbed into the query per head; the values c_kv are mixed first and W_UV (kv_b's value
    /// rows) applied after: the same products as the expanded form, in another order.
    /// </summary>
    public static void MlaCached(OnnxModelBuilder model, DeepseekV3Config c, string name, long half, Int4Scheme? int4Scheme = null, bool[]? int4 = null)
    {
        var f = model.Function(OnnxDecoderNames.Domain, name);
        f.DocString = "DeepSeek multi-head latent attention over the latent KV cache (absorbed), causal, interleaved rope";
        var m = Common(f, c, int4Scheme, int4, floatKvB: true);
        int nh = c.NumAttentionHeads, nope = c.QkNopeHeadDim, rope = c.QkRopeHeadDim, vd = c.VHeadDim, kvr = c.KvLoraRank;
        string pastKey = f.Input("past_key"), pastValue = f.Input("past_value");
        string x = m.X, mask = m.Mask, bs = m.Bs, cNorm = m.CNorm, qPe = m.QPe, kPe = m.KPe, kvb = m.KvB.Weight;
        var o = m.O;
        string c4 = f.Transpose(f.Reshape(cNorm, f.Concat(0, bs, f.ConstInt64(1, kvr))), 0, 2, 1, 3);           // [b, 1, s, kvr]
        string latent = f.Concat(3, c4, kPe);
        if (2 * half > kvr + rope)
            latent = f.Concat(3, latent, f.Mul(f.Op("Slice", [kPe, f.ConstInt64(0), f.ConstInt64(1), f.ConstInt64(3)]), f.ScalarFloat(0f)));
        string Cols(string t, long from, long to) => f.Op("Slice", [t, f.ConstInt64(from), f.ConstInt64(to), f.ConstInt64(3)]);
        // Each half grows by this call's tokens; the halves are never joined into one [T, 2 half] copy.
        string presentKey = f.Concat(2, pastKey, Cols(latent, 0, half));                                     // [b, 1, T, half]
        string presentValue = f.Concat(2, pastValue, Cols(latent, half, 2 * half));

        var w = f.Split(f.Reshape(kvb, nh, nope + vd, kvr), 1, nope, vd);                                    // [nh, nope|v, kvr]
        string qLat = f.Op("MatMul", [m.QNope, w[0]]);                                                       // [b, nh, s, kvr]
        string qCat = f.Concat(3, qLat, qPe);                                                                 // [b, nh, s, kvr + rope]
        if (2 * half > kvr + rope) qCat = f.Concat(3, qCat, f.Mul(Cols(qPe, 0, 1), f.ScalarFloat(0f)));
        // One latent "head" serves every query head: fold the heads into the query rows ([b, 1, nh s, 2 half]) so each
        // cache half is read once per step by one matrix product, not once per head (nor copied per head by Expand).
        string b0 = f.Shape(x, 0, 1), sLen = f.Shape(x, 1, 2), tLen = f.Shape(presentKey, 2, 3);
        string qFold = f.Reshape(qCat, f.Concat(0, b0, f.ConstInt64(1, -1, 2 * half)));
        var qHalves = f.Split(qFold, 3, half, half);
        string scores = f.Add(f.Op("MatMul", [qHalves[0], f.Transpose(presentKey, 0, 1, 3, 2)]),
                              f.Op("MatMul", [qHalves[1], f.Transpose(presentValue, 0, 1, 3, 2)]));           // [b, 1, nh s, T]
        string perHeadScores = f.Reshape(scores, f.Concat(0, b0, f.ConstInt64(nh), sLen, tLen));              // [b, nh, s, T]
        string probs = f.Op("Softmax", [f.Add(f.Mul(perHeadScores, f.ScalarFloat((float)c.SoftmaxScale)), mask)], Int("axis", -1));
        string pFold = f.Reshape(probs, f.Concat(0, b0, f.ConstInt64(1, -1), tLen));                          // [b, 1, nh s, T]
        // probabilities x c_kv: c_kv is the key half and the value half's first kvr - half columns
        string mixed = Cols(f.Concat(3, f.Op("MatMul", [pFold, presentKey]), f.Op("MatMul", [pFold, presentValue])), 0, kvr);
        string attn = f.Reshape(mixed, f.Concat(0, b0, f.ConstInt64(nh), sLen, f.ConstInt64(kvr)));           // [b, nh, s, kvr]
        string perHead = f.Op("MatMul", [attn, f.Transpose(w[1], 0, 2, 1)]);                                   // [b, nh, s, v]
        string merged = f.Reshape(f.Transpose(perHead, 0, 2, 1, 3), -1, nh * vd);
        f.Output(f.Reshape(o.Apply(f, merged), f.Shape(x)));
        f.Output(presentKey);
        f.Output(presentValue);
    }

    /// <summary>What both MLA forms declare and compute first: every input up to o_proj (in the function's input
    /// order), the query split into its nope part and its roped rope part [b, nh, s, .], the normalised c_kv
    /// [tokens, kv_lora_rank] and the roped shared k_pe [b, 1, s, rope].</summary>
    private sealed record MlaCommon(string X, string Mask, string Bs, string QNope, string QPe, string CNorm, string KPe, Proj KvB, Proj O);

    /// <param name="floatKvB">kv_b as a plain float input (the absorbed form reshapes it) whatever the INT4 mask says.</param>
    private static MlaCommon Common(OnnxFunctionBuilder f, DeepseekV3Config c, Int4Scheme? int4Scheme, bool[]? int4, bool floatKvB)
    {
        int slot = 0;
        bool Q(int i) => int4 != null && int4[i];
        int nh = c.NumAttentionHeads, nope = c.QkNopeHeadDim, rope = c.QkRopeHeadDim, vd = c.VHeadDim, kvr = c.KvLoraRank, h = c.HiddenSize;
        float eps = (float)c.RmsNormEps;
        string x = f.Input("x"), mask = f.Input("mask"), pos = f.Input("position_ids"), cos = f.Input("cos"), sin = f.Input("sin");
        long qk = nh * (nope + rope);
        Proj? qa = null, qb = null, qw = null;
        string? qaNorm = null;
        if (c.QLoraRank is { } ql)
        {
            qa = Proj.In(f, "q_a_proj", Q(slot++), int4Scheme, ql, h); qaNorm = f.Input("q_a_layernorm"); qb = Proj.In(f, "q_b_proj", Q(slot++), int4Scheme, qk, ql);
        }
        else
        {
            qw = Proj.In(f, "q_proj", Q(slot++), int4Scheme, qk, h);
        }
        var kva = Proj.In(f, "kv_a_proj_with_mqa", Q(slot++), int4Scheme, kvr + rope, h);
        string kvaNorm = f.Input("kv_a_layernorm");
        bool kvbInt4 = Q(slot++) && !floatKvB;
        var kvb = Proj.In(f, "kv_b_proj", kvbInt4, int4Scheme, nh * (nope + vd), kvr);
        var o = Proj.In(f, "o_proj", Q(slot++), int4Scheme, h, nh * vd);

        string bs = f.Shape(x, 0, 2);
        string x2 = f.Reshape(x, -1, h);
        string q = qw != null
            ? qw.Apply(f, x2)
            : qb!.Apply(f, f.Op("RMSNormalization", [qa!.Apply(f, x2), qaNorm!], Float("epsilon", eps), Int("axis", -1)));
        string q4 = f.Transpose(f.Reshape(q, f.Concat(0, bs, f.ConstInt64(nh, nope + rope))), 0, 2, 1, 3); // [b, nh, s, qk]
        var qParts = f.Split(q4, 3, nope, rope);
        string qPe = f.Op("RotaryEmbedding", [qParts[1], cos, sin, pos], Int("interleaved", 1));

        var kvParts = f.Split(kva.Apply(f, x2), 1, kvr, rope);
        string cNorm = f.Op("RMSNormalization", [kvParts[0], kvaNorm], Float("epsilon", eps), Int("axis", -1));
        string kPe = f.Transpose(f.Reshape(kvParts[1], f.Concat(0, bs, f.ConstInt64(1, rope))), 0, 2, 1, 3); // [b, 1, s, rope]
        kPe = f.Op("RotaryEmbedding", [kPe, cos, sin, pos], Int("interleaved", 1));
        return new MlaCommon(x, mask, bs, qParts[0], qPe, cNorm, kPe, kvb, o);
    }
}
