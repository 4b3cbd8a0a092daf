using Converter.Decoder.Onnx;
using Converter.Formats.Onnx;
using Converter.Numerics.Int4;
using DataType = Converter.Formats.Onnx.Proto.TensorProto.Types.DataType;
using static Converter.Formats.Onnx.OnnxAttr;

namespace Converter.Models.DeepseekV4.Onnx;

/// <summary>The constants of DeepSeek-V4's ONNX functions (one config's widths, counts and rotary frequencies).</summary>
/// <param name="MainInvFreq">Rotary inverse frequencies of the sliding layers (rope_theta, no scaling) [rope / 2].</param>
/// <param name="CompressInvFreq">Those of the compressed layers, their compressors and the indexer (compress_rope_theta,
/// YaRN where configured; cos/sin are never scaled: V4 forces attention_factor 1).</param>
internal sealed record V4OnnxShape(
    int Hidden, int Heads, int HeadDim, int RopeDim, int QLoraRank, int OGroups, int OLoraRank, int Window, double Eps,
    int HcMult, int SinkhornIters, double HcEps, int IndexHeads, int IndexHeadDim, int IndexTopK,
    float[] MainInvFreq, float[] CompressInvFreq)
{
    public long InPerGroup => (long)Heads * HeadDim / OGroups;

    /// <summary>The function signature (widths and counts; the frequencies follow from them and the config).</summary>
    public string Signature => $"{Hidden}/{Heads}x{HeadDim}/r{RopeDim}/q{QLoraRank}/o{OGroups}x{OLoraRank}/w{Window}/hc{HcMult}x{SinkhornIters}/i{IndexHeads}x{IndexHeadDim}k{IndexTopK}";
}

/// <summary>
/// Bodies of DeepSeek-V4's model-local functions (domain <c>converter.ai</c>), written from transformers'
/// <c>modeling_deepseek_v4.py</c> (the reference of the goldens), in standard ONNX operators only:
/// <list type="bullet">
/// <item><c>HyperConnection</c> / <c>HyperMerge</c> / <c>HyperHead</c>: the hyper-connection streams (pre / post / comb
/// weights with the Sinkhorn normalisation unrolled, the collapse into the sublayer input, the merge back, the head's
/// collapse before the final norm);</item>
/// <item><c>V4Attention</c> (sliding window), <c>V4AttentionHCA</c>, <c>V4AttentionCSA</c>: MQA with one shared K=V head,
/// unweighted per-head q norm, interleaved rope on each head's trailing rope dims (inverse rope on the output), per-head
/// sinks as an extra softmax column, grouped low-rank output; the compressed entries of the compressor (HCA: windows of
/// m tokens; CSA: overlapping windows of 2m slots) and, for CSA, the lightning indexer's top-k selection (ONNX TopK:
/// equal scores lowest index first).</item>
/// </list>
/// The attention is computed sparsely: the sliding window in blocks of <c>sliding_window</c> queries against their own
/// and the previous block's keys (cost S x 2W, not S x S), HCA and CSA against their S/m compressed entries (CSA masked
/// to the indexer's picks, as transformers masks them); one softmax spans the window, the compressed entries and the sink.
/// </summary>
internal static class DeepseekV4OnnxFunctions
{
    public const string HyperConnectionName = "HyperConnection", HyperMergeName = "HyperMerge", HyperHeadName = "HyperHead",
        SlidingName = "V4Attention", HcaName = "V4AttentionHCA", CsaName = "V4AttentionCSA", FullName = "V4AttentionFull";

    private static string Ones(OnnxNodeBuilder f, long n) =>
        f.Op("ConstantOfShape", [f.ConstInt64(n)], Tensor("value", OnnxTensors.Float("", [1], 1f)));

    /// <summary>x * rsqrt(mean(x^2) + eps) over the last axis (transformers' unweighted RMSNorm).</summary>
    private static string UnweightedRms(OnnxNodeBuilder f, string x, long width, double eps) =>
        f.Op("RMSNormalization", [x, Ones(f, width)], Float("epsilon", (float)eps), Int("axis", -1));

    private static string Rms(OnnxNodeBuilder f, string x, string weight, double eps) =>
        f.Op("RMSNormalization", [x, weight], Float("epsilon", (float)eps), Int("axis", -1));

    private static string Slice(OnnxNodeBuilder f, string x, string start, string end, long axis) =>
        f.Op("Slice", [x, start, end, f.ConstInt64(axis)]);

    /// <summary>cos and sin [.., half] of position * inv_freq (float32, as transformers' rotary computes them).</summary>
    private static (string Cos, string Sin) Angles(OnnxNodeBuilder f, string positions, float[] inv)
    {
        string a = f.Mul(f.Unsqueeze(f.Cast(positions, DataType.Float), -1), f.ConstFloat([inv.Length], inv));
        return (f.Op("Cos", [a]), f.Op("Sin", [a]));
    }

    /// <summary>
    /// transformers' V4 rope on the trailing <paramref name="rope"/> dims of x [..., width]: pairs (2i, 2i+1) rotated,
    /// out_2i = x_2i cos_i - x_2i+1 sin_i, out_2i+1 = x_2i+1 cos_i + x_2i sin_i; cos/sin broadcast to [..., rope / 2].
    /// </summary>
    private static string Rope(OnnxNodeBuilder f, string x, long width, long rope, string cos, string sin)
    {
        string nope = "", r = x;
        if (rope < width)
        {
            var parts = f.Split(x, -1, width - rope, rope);
            nope = parts[0];
            r = parts[1];
        }
        string rShape = f.Shape(r);
        string pairs = f.Reshape(r, f.Concat(0, f.Shape(r, 0, -1), f.ConstInt64(rope / 2, 2)));
        var xs = f.Split(pairs, -1, 1, 1);
        string c = f.Unsqueeze(cos, -1), s = f.Unsqueeze(sin, -1);
        string o0 = f.Op("Sub", [f.Mul(xs[0], c), f.Mul(xs[1], s)]);
        string o1 = f.Add(f.Mul(xs[1], c), f.Mul(xs[0], s));
        string rotated = f.Reshape(f.Concat(-1, o0, o1), rShape);
        return rope < width ? f.Concat(-1, nope, rotated) : rotated;
    }

    /// <summary>
    /// The pre / post / comb weights of one hyper-connection and the collapsed sublayer input. Inputs: H [b, s, hc, D],
    /// fn [(2 + hc) hc, hc D], base [(2 + hc) hc], scale [3]. Outputs: post [b s, hc], comb [b s, hc, hc] (comb[j, k]
    /// weighs input stream j into output stream k), collapsed [b, s, D].
    /// </summary>
    public static void HyperConnection(OnnxModelBuilder model, V4OnnxShape c, string name)
    {
        var f = model.Function(OnnxDecoderNames.Domain, name);
        f.DocString = $"DeepSeek-V4 hyper-connection ({c.HcMult} streams, {c.SinkhornIters} Sinkhorn iterations)";
        long hc = c.HcMult, d = c.Hidden;
        float eps = (float)c.HcEps;
        string h = f.Input("hidden_streams"), fn = f.Input("fn"), bias = f.Input("base"), scale = f.Input("scale");
        string flat = UnweightedRms(f, f.Reshape(h, -1, hc * d), hc * d, c.Eps);   // [t, hc D]
        var m = f.Split(f.Linear(flat, fn), 1, hc, hc, hc * hc);
        var b = f.Split(bias, 0, hc, hc, hc * hc);
        var s = f.Split(scale, 0, 1, 1, 1);
        string pre = f.Add(f.Op("Sigmoid", [f.Add(f.Mul(m[0], s[0]), b[0])]), f.ScalarFloat(eps));
        string post = f.Mul(f.Op("Sigmoid", [f.Add(f.Mul(m[1], s[1]), b[1])]), f.ScalarFloat(2f));
        string comb = f.Add(f.Op("Softmax", [f.Reshape(f.Add(f.Mul(m[2], s[2]), b[2]), -1, hc, hc)], Int("axis", -1)), f.ScalarFloat(eps));
        string Normalise(string x, long axis) =>
            f.Op("Div", [x, f.Add(f.Op("ReduceSum", [x, f.ConstInt64(axis)], Int("keepdims", 1)), f.ScalarFloat(eps))]);
        comb = Normalise(comb, -2);
        for (int i = 1; i < c.SinkhornIters; i++) comb = Normalise(Normalise(comb, -1), -2);
        string streams = f.Reshape(h, -1, hc, d);
        string collapsed = f.Op("MatMul", [f.Unsqueeze(pre, 1), streams]);                             // [t, 1, D]: sum_j pre_j H_j
        f.Output(post);
        f.Output(comb);
        f.Output(f.Reshape(collapsed, f.Concat(0, f.Shape(h, 0, 2), f.ConstInt64(d))));
    }

    /// <summary>The streams after a sublayer: H'_k = post_k y + sum_j comb[j, k] H_j. Inputs: H [b, s, hc, D], post
    /// [b s, hc], comb [b s, hc, hc], y [b, s, D].</summary>
    public static void HyperMerge(OnnxModelBuilder model, V4OnnxShape c, string name)
    {
        var f = model.Function(OnnxDecoderNames.Domain, name);
        f.DocString = "DeepSeek-V4 hyper-connection merge of a sublayer's output into the streams";
        long hc = c.HcMult, d = c.Hidden;
        string h = f.Input("hidden_streams"), post = f.Input("post"), comb = f.Input("comb"), y = f.Input("y");
        string streams = f.Reshape(h, -1, hc, d);
        string mixed = f.Op("MatMul", [f.Transpose(comb, 0, 2, 1), streams]);                       // [t, hc, D]
        string added = f.Add(f.Mul(f.Unsqueeze(post, -1), f.Reshape(y, -1, 1, d)), mixed);
        f.Output(f.Reshape(added, f.Shape(h)));
    }

    /// <summary>The hyper-head: streams [b, s, hc, D] collapsed with sigmoid weights (no Sinkhorn, no post) into [b, s, D].
    /// Inputs: H, hc_fn [hc, hc D], hc_base [hc], hc_scale [1].</summary>
    public static void HyperHead(OnnxModelBuilder model, V4OnnxShape c, string name)
    {
        var f = model.Function(OnnxDecoderNames.Domain, name);
        f.DocString = "DeepSeek-V4 hyper-head: the streams collapsed before the final norm";
        long hc = c.HcMult, d = c.Hidden;
        string h = f.Input("hidden_streams"), fn = f.Input("hc_fn"), bias = f.Input("hc_base"), scale = f.Input("hc_scale");
        string flat = UnweightedRms(f, f.Reshape(h, -1, hc * d), hc * d, c.Eps);
        string pre = f.Add(f.Op("Sigmoid", [f.Add(f.Mul(f.Linear(flat, fn), scale), bias)]), f.ScalarFloat((float)c.HcEps));
        string collapsed = f.Op("MatMul", [f.Unsqueeze(pre, 1), f.Reshape(h, -1, hc, d)]);            // [t, 1, D]
        f.Output(f.Reshape(collapsed, f.Concat(0, f.Shape(h, 0, 2), f.ConstInt64(d))));
    }

    /// <summary>The kind of attention a function computes.</summary>
    public enum V4OnnxAttention { Sliding, Hca, Csa, Full }

    /// <summary>
    /// One layer's attention. Inputs: x [b, s, D] (the normed collapsed streams), position_ids [b, s], attention_mask
    /// [b, s] (when <paramref name="masked"/>; 1 = a real key), wq_a, q_norm, wq_b, wkv, kv_norm, wo_a (float, grouped),
    /// wo_b, sinks [heads]; HCA/CSA: the compressor's wkv, wgate, ape, norm; CSA: the indexer's wq_b, weights_proj and its
    /// compressor's wkv, wgate, ape, norm. Outputs: y [b, s, D]; CSA also the indexer's selection [b, s, k] (int64, -1 where
    /// the pick is not attendable).
    /// </summary>
    /// <param name="mainRope">The layer's rope is the sliding layers' (rope_theta), else the compressed layers' (with YaRN).</param>
    public static void Attention(OnnxModelBuilder model, V4OnnxShape c, V4OnnxAttention kind, int ratio, bool masked, bool mainRope, string name,
        Int4Scheme? scheme, bool[]? int4)
    {
        var f = model.Function(OnnxDecoderNames.Domain, name);
        f.DocString = kind switch
        {
            V4OnnxAttention.Sliding => $"DeepSeek-V4 sliding-window attention (window {c.Window}), shared K=V head, sinks",
            V4OnnxAttention.Hca => $"DeepSeek-V4 heavily compressed attention (windows of {ratio}) plus the sliding window",
            V4OnnxAttention.Csa => $"DeepSeek-V4 compressed sparse attention (overlapping windows of {ratio}, indexer top-{c.IndexTopK}) plus the sliding window",
            _ => "DeepSeek-V4 layer with full causal attention (benchmark baseline)",
        };
        int slot = 0;
        bool Q(int i) => int4 != null && int4[i];
        long d = c.Hidden, nh = c.Heads, hd = c.HeadDim, rd = c.RopeDim, w = c.Window;
        string x = f.Input("x"), pos = f.Input("position_ids");
        string? keyMask = masked ? f.Input("attention_mask") : null;
        var qa = Proj.In(f, "wq_a", Q(slot++), scheme, c.QLoraRank, d);
        string qNorm = f.Input("q_norm");
        var qb = Proj.In(f, "wq_b", Q(slot++), scheme, nh * hd, c.QLoraRank);
        var wkv = Proj.In(f, "wkv", Q(slot++), scheme, hd, d);
        string kvNorm = f.Input("kv_norm");
        slot++; // wo_a is always float: it is applied per group
        string woa = f.Input("wo_a");
        var wob = Proj.In(f, "wo_b", Q(slot++), scheme, d, (long)c.OGroups * c.OLoraRank);
        string sinks = f.Input("sinks");
        Proj? cKv = null, cGate = null, iq = null, iw = null, icKv = null, icGate = null;
        string? cApe = null, cNorm = null, icApe = null, icNorm = null;
        bool overlap = kind == V4OnnxAttention.Csa;
        long cw = overlap ? 2 * hd : hd;
        if (kind is V4OnnxAttention.Hca or V4OnnxAttention.Csa)
        {
            cKv = Proj.In(f, "compressor_wkv", Q(slot++), scheme, cw, d);
            cGate = Proj.In(f, "compressor_wgate", Q(slot++), scheme, cw, d);
            cApe = f.Input("compressor_ape");
            cNorm = f.Input("compressor_norm");
        }
        if (kind == V4OnnxAttention.Csa)
        {
            long ih = c.IndexHeadDim;
            iq = Proj.In(f, "indexer_wq_b", Q(slot++), scheme, c.IndexHeads * ih, c.QLoraRank);
            iw = Proj.In(f, "indexer_weights_proj", Q(slot++), scheme, c.IndexHeads, d);
            icKv = Proj.In(f, "indexer_compressor_wkv", Q(slot++), scheme, 2 * ih, d);
            icGate = Proj.In(f, "indexer_compressor_wgate", Q(slot++), scheme, 2 * ih, d);
            icApe = f.Input("indexer_compressor_ape");
            icNorm = f.Input("indexer_compressor_norm");
        }

        string bs = f.Shape(x, 0, 2), batch = f.Shape(x, 0, 1), seq = f.Shape(x, 1, 2);
        string x2 = f.Reshape(x, -1, d);
        float[] inv = mainRope ? c.MainInvFreq : c.CompressInvFreq;
        var (cos, sin) = Angles(f, pos, inv);                                                          // [b, s, rd / 2]
        string cosH = f.Unsqueeze(cos, 1), sinH = f.Unsqueeze(sin, 1);                                 // [b, 1, s, rd / 2]

        string qr = Rms(f, qa.Apply(f, x2), qNorm, c.Eps);                                             // [t, q_lora]
        string q = f.Reshape(qb.Apply(f, qr), f.Concat(0, bs, f.ConstInt64(nh, hd)));
        q = f.Transpose(UnweightedRms(f, q, hd, c.Eps), 0, 2, 1, 3);                                   // [b, nh, s, hd]
        q = Rope(f, q, hd, rd, cosH, sinH);
        string kv = f.Reshape(Rms(f, wkv.Apply(f, x2), kvNorm, c.Eps), f.Concat(0, bs, f.ConstInt64(hd)));
        kv = Rope(f, kv, hd, rd, cos, sin);                                                            // [b, s, hd]
        string scale = f.ScalarFloat((float)(1.0 / Math.Sqrt(hd)));
        string negInf = f.ScalarFloat(float.NegativeInfinity);
        string sinkCol = f.Op("Expand", [f.Reshape(sinks, 1, nh, 1, 1), f.Concat(0, batch, f.ConstInt64(nh), seq, f.ConstInt64(1))]);
        string keyOk = keyMask != null
            ? f.Cast(keyMask, DataType.Int64)
            : f.Op("ConstantOfShape", [bs], Tensor("value", OnnxTensors.Int64("", [1], 1L)));      // [b, s]

        string attn;
        if (kind == V4OnnxAttention.Full)
        {
            // Every earlier token: [b, nh, s, s] logits, causal, key padding; the sink column as in every layer.
            string logits = f.Mul(f.Op("MatMul", [q, f.Transpose(f.Unsqueeze(kv, 1), 0, 1, 3, 2)]), scale);
            string range = f.Op("Range", [f.ScalarInt64(0), f.Reshape(seq, f.ConstInt64()), f.ScalarInt64(1)]);
            string causal = f.Op("LessOrEqual", [f.Unsqueeze(range, 0), f.Unsqueeze(range, 1)]);      // [s, s]
            string allowed = f.Op("And", [f.Unsqueeze(causal, 0, 1), f.Unsqueeze(f.Cast(keyOk, DataType.Bool), 1, 2)]);
            string p = f.Op("Softmax", [f.Concat(-1, f.Op("Where", [allowed, logits, negInf]), sinkCol)], Int("axis", -1));
            string pk = Slice(f, p, f.ConstInt64(0), f.ConstInt64(-1), -1);
            attn = f.Op("MatMul", [pk, f.Unsqueeze(kv, 1)]);                                          // [b, nh, s, hd]
        }
        else
        {
            // Sliding window in blocks of w queries: block i sees keys [(i - 1) w, (i + 1) w), the first w padding zeros.
            string wc = f.ConstInt64(w);
            string nb = f.Op("Div", [f.Add(seq, f.ConstInt64(w - 1)), wc]);                           // [1]
            string sp = f.Mul(nb, wc);
            string pad = f.Op("Sub", [sp, seq]);
            string zero = f.ScalarFloat(0f);
            string kp = f.Op("Pad", [kv, f.Concat(0, wc, pad), zero, f.ConstInt64(1)]);               // [b, w + sp, hd]
            string Blocks(string t, long width)
            {
                string prev = Slice(f, t, f.ConstInt64(0), sp, 1), cur = Slice(f, t, wc, f.Add(sp, wc), 1);
                string shape = width > 0 ? f.Concat(0, batch, nb, f.ConstInt64(w, width)) : f.Concat(0, batch, nb, f.ConstInt64(w));
                return f.Concat(2, f.Reshape(prev, shape), f.Reshape(cur, shape));
            }
            string kBlocks = f.Unsqueeze(Blocks(kp, hd), 1);                                         // [b, 1, nb, 2w, hd]
            string qp = f.Op("Pad", [q, f.Concat(0, f.ConstInt64(0), pad), zero, f.ConstInt64(2)]);
            string qBlocks = f.Reshape(qp, f.Concat(0, batch, f.ConstInt64(nh), nb, f.ConstInt64(w, hd)));
            string lw = f.Mul(f.Op("MatMul", [qBlocks, f.Transpose(kBlocks, 0, 1, 2, 4, 3)]), scale);  // [b, nh, nb, w, 2w]
            // Query a of a block sees block key c iff a < c <= a + w (key within the last w tokens, not after the query),
            // and the key is a real token (not the front padding, not past the end, not masked out).
            string ra = f.Unsqueeze(f.Op("Range", [f.ScalarInt64(0), f.ScalarInt64(w), f.ScalarInt64(1)]), 1);
            string rc = f.Unsqueeze(f.Op("Range", [f.ScalarInt64(0), f.ScalarInt64(2 * w), f.ScalarInt64(1)]), 0);
            string band = f.Op("And", [f.Op("Greater", [rc, ra]), f.Op("LessOrEqual", [rc, f.Add(ra, f.ScalarInt64(w))])]); // [w, 2w]
            string okp = f.Op("Pad", [keyOk, f.Concat(0, wc, pad), f.ScalarInt64(0), f.ConstInt64(1)]); // [b, w + sp]
            string keyBlocks = f.Cast(Blocks(okp, 0), DataType.Bool);                                 // [b, nb, 2w]
            string valid = f.Unsqueeze(f.Op("And", [f.Unsqueeze(band, 0, 1), f.Unsqueeze(keyBlocks, 2)]), 1); // [b, 1, nb, w, 2w]
            lw = f.Op("Where", [valid, lw, negInf]);
            string lwSeq = Slice(f, f.Reshape(lw, f.Concat(0, batch, f.ConstInt64(nh), sp, f.ConstInt64(2 * w))), f.ConstInt64(0), seq, 2);

            string? lc = null, entries = null;
            string? selection = null;
            if (kind != V4OnnxAttention.Sliding)
            {
                string threshold = f.Op("Div", [f.Add(pos, f.ScalarInt64(1)), f.ScalarInt64(ratio)]);  // [b, s]
                entries = Compressor(f, x2, bs, batch, seq, cKv!, cGate!, cApe!, cNorm!, ratio, hd, rd, overlap, c, out string count);
                string l = f.Mul(f.Op("MatMul", [q, f.Transpose(f.Unsqueeze(entries, 1), 0, 1, 3, 2)]), scale); // [b, nh, s, n + 1]
                string vis;                                                                            // [b, s, n + 1]
                if (kind == V4OnnxAttention.Hca)
                {
                    vis = Visible(f, entries, threshold, count);
                }
                else
                {
                    // transformers' block bias: -inf except at the indexer's attendable picks (scattered into n + 2
                    // columns, the last one taking the -1 picks, then dropped). Dense over the s / m entries: on ONNX
                    // Runtime this beat gathering k entries per query (s x k x head_dim rows) at every length measured.
                    selection = Indexer(f, x2, qr, pos, bs, batch, seq, threshold, iq!, iw!, icKv!, icGate!, icApe!, icNorm!, ratio, c);
                    string n1 = f.Shape(entries, 1, 2);
                    string target = f.Op("Where", [f.Op("GreaterOrEqual", [selection, f.ScalarInt64(0)]), selection, f.Reshape(n1, f.ConstInt64())]);
                    string zeros = f.Op("ConstantOfShape", [f.Concat(0, bs, f.Add(n1, f.ConstInt64(1)))], Tensor("value", OnnxTensors.Float("", [1], 0f)));
                    string ones = f.Op("ConstantOfShape", [f.Shape(selection)], Tensor("value", OnnxTensors.Float("", [1], 1f)));
                    string picked = f.Op("ScatterElements", [zeros, target, ones], Int("axis", 2));      // [b, s, n + 2]
                    vis = f.Cast(Slice(f, picked, f.ConstInt64(0), n1, 2), DataType.Bool);
                }
                lc = f.Op("Where", [f.Unsqueeze(vis, 1), l, negInf]);
            }
            string logitsAll = lc != null ? f.Concat(-1, lwSeq, lc, sinkCol) : f.Concat(-1, lwSeq, sinkCol);
            string p = f.Op("Softmax", [logitsAll], Int("axis", -1));
            string pw = Slice(f, p, f.ConstInt64(0), f.ConstInt64(2 * w), -1);                          // [b, nh, s, 2w]
            string pwBlocks = f.Reshape(f.Op("Pad", [pw, f.Concat(0, f.ConstInt64(0), pad), zero, f.ConstInt64(2)]),
                f.Concat(0, batch, f.ConstInt64(nh), nb, f.ConstInt64(w, 2 * w)));
            string ow = f.Reshape(f.Op("MatMul", [pwBlocks, kBlocks]), f.Concat(0, batch, f.ConstInt64(nh), sp, f.ConstInt64(hd)));
            attn = Slice(f, ow, f.ConstInt64(0), seq, 2);                                              // [b, nh, s, hd]
            if (lc != null)
            {
                string pc = Slice(f, p, f.ConstInt64(2 * w), f.ConstInt64(-1), -1);
                attn = f.Add(attn, f.Op("MatMul", [pc, f.Unsqueeze(entries!, 1)]));
            }
            Finish(f, c, attn, cosH, sinH, woa, wob, x);
            if (selection != null) f.Output(selection);
            return;
        }
        Finish(f, c, attn, cosH, sinH, woa, wob, x);
    }

    /// <summary>Inverse rope on the output's rope dims at the query positions, then the grouped low-rank output projection.</summary>
    private static void Finish(OnnxFunctionBuilder f, V4OnnxShape c, string attn, string cosH, string sinH, string woa, Proj wob, string x)
    {
        long nh = c.Heads, hd = c.HeadDim, g = c.OGroups, inG = c.InPerGroup;
        string o = Rope(f, attn, hd, c.RopeDim, cosH, f.Op("Neg", [sinH]));                           // [b, nh, s, hd]
        string grouped = f.Transpose(f.Reshape(f.Transpose(o, 0, 2, 1, 3), -1, g, inG), 1, 0, 2);     // [g, t, in]
        string wa = f.Transpose(f.Reshape(woa, g, c.OLoraRank, inG), 0, 2, 1);                          // [g, in, o_lora]
        string low = f.Reshape(f.Transpose(f.Op("MatMul", [grouped, wa]), 1, 0, 2), -1, g * c.OLoraRank); // [t, g o_lora]
        f.Output(f.Reshape(wob.Apply(f, low), f.Shape(x)));
    }

    /// <summary>Entry e is visible to query (b, s) iff e &lt; (position + 1) / m (its window is complete) and e is one
    /// of the n complete windows (not the padding entry).</summary>
    private static string Visible(OnnxNodeBuilder f, string entries, string threshold, string count)
    {
        string e = f.Op("Range", [f.ScalarInt64(0), f.Reshape(f.Shape(entries, 1, 2), f.ConstInt64()), f.ScalarInt64(1)]); // [n + 1]
        string before = f.Op("Less", [f.Unsqueeze(e, 0, 1), f.Unsqueeze(threshold, 2)]);               // [b, s, n + 1]
        return f.Op("And", [before, f.Unsqueeze(f.Op("Less", [e, count]), 0, 1)]);
    }

    /// <summary>
    /// The compressor: n = s / m complete windows of m tokens (plus one padding window so that no tensor is empty; its
    /// entry is never visible). Per window the kv rows are pooled with a softmax over the window's slots of gate +
    /// position bias (per feature), then kv-normed and roped (compress rope) at the window's first position w m.
    /// HCA (no overlap): the m slots of the window. CSA (<paramref name="overlap"/>): kv and gate are 2 x width wide
    /// (Ca | Cb); window w pools window w-1's Ca slots and its own Cb slots (window 0's Ca slots are kv 0, gate -inf).
    /// Returns the entries [b, n + 1, width]; <paramref name="count"/> is n ([1], int64).
    /// </summary>
    private static string Compressor(OnnxNodeBuilder f, string x2, string bs, string batch, string seq, Proj wkv, Proj wgate, string ape,
        string norm, long m, long width, long rope, bool overlap, V4OnnxShape c, out string count)
    {
        long dd = overlap ? 2 * width : width;
        string kv = f.Reshape(wkv.Apply(f, x2), f.Concat(0, bs, f.ConstInt64(dd)));
        string gate = f.Reshape(wgate.Apply(f, x2), f.Concat(0, bs, f.ConstInt64(dd)));
        string mc = f.ConstInt64(m);
        count = f.Op("Div", [seq, mc]);                                                                 // [1]
        string n1 = f.Add(count, f.ConstInt64(1));
        string pad = f.Op("Sub", [f.Mul(n1, mc), seq]);                                                 // 1..m
        string windows = f.Concat(0, batch, n1, f.ConstInt64(m, dd));
        string zero = f.ScalarFloat(0f);
        string kvw = f.Reshape(f.Op("Pad", [kv, f.Concat(0, f.ConstInt64(0), pad), zero, f.ConstInt64(1)]), windows); // [b, n+1, m, dd]
        string gw = f.Add(f.Reshape(f.Op("Pad", [gate, f.Concat(0, f.ConstInt64(0), pad), zero, f.ConstInt64(1)]), windows), ape);
        string pooledKv = kvw, pooledGate = gw;
        if (overlap)
        {
            var kvParts = f.Split(kvw, 3, width, width);
            var gParts = f.Split(gw, 3, width, width);
            // Window w's first m slots: window w-1's Ca (shifted by one window; window 0 gets kv 0 / gate -inf).
            string Shift(string t, float fill)
            {
                string head = f.Op("ConstantOfShape", [f.Concat(0, batch, f.ConstInt64(1, m, width))], Tensor("value", OnnxTensors.Float("", [1], fill)));
                string body = Slice(f, t, f.ConstInt64(0), f.ConstInt64(-1), 1);
                return f.Concat(1, head, body);
            }
            pooledKv = f.Concat(2, Shift(kvParts[0], 0f), kvParts[1]);                                // [b, n+1, 2m, width]
            pooledGate = f.Concat(2, Shift(gParts[0], float.NegativeInfinity), gParts[1]);
        }
        string weights = f.Op("Softmax", [pooledGate], Int("axis", 2));
        string pooled = f.Op("ReduceSum", [f.Mul(pooledKv, weights), f.ConstInt64(2)], Int("keepdims", 0)); // [b, n+1, width]
        string normed = Rms(f, pooled, norm, c.Eps);
        string starts = f.Mul(f.Op("Range", [f.ScalarInt64(0), f.Reshape(n1, f.ConstInt64()), f.ScalarInt64(1)]), f.ScalarInt64(m));
        var (cos, sin) = Angles(f, starts, c.CompressInvFreq);                                          // [n+1, rope / 2]
        return Rope(f, normed, width, rope, cos, sin);
    }

    /// <summary>
    /// The lightning indexer: its own compressor (overlapping, index_head_dim wide), queries from the q residual roped at
    /// the token positions, score[s, e] = sum_h w_h relu(q_h . K_e) / sqrt(index_head_dim), w = weights_proj(x) /
    /// sqrt(index_heads); entries not yet complete (e &gt;= (position + 1) / m, or the padding entry) are -inf; top
    /// min(index_topk, n + 1) by ONNX TopK (equal scores: lowest index first), picks that are not attendable become -1.
    /// Returns [b, s, k] int64.
    /// </summary>
    private static string Indexer(OnnxNodeBuilder f, string x2, string qr, string pos, string bs, string batch, string seq, string threshold,
        Proj wq, Proj weightsProj, Proj ckv, Proj cgate, string ape, string norm, long m, V4OnnxShape c)
    {
        long ih = c.IndexHeadDim, ni = c.IndexHeads, rd = c.RopeDim;
        string keys = Compressor(f, x2, bs, batch, seq, ckv, cgate, ape, norm, m, ih, rd, overlap: true, c, out string count); // [b, n+1, ih]
        var (cos, sin) = Angles(f, pos, c.CompressInvFreq);                                             // [b, s, rd / 2]
        string q = f.Reshape(wq.Apply(f, qr), f.Concat(0, bs, f.ConstInt64(ni, ih)));                   // [b, s, ni, ih]
        q = Rope(f, q, ih, rd, f.Unsqueeze(cos, 2), f.Unsqueeze(sin, 2));
        string dots = f.Op("MatMul", [q, f.Transpose(f.Unsqueeze(keys, 1), 0, 1, 3, 2)]);              // [b, s, ni, n+1]
        // sum_h (w_h / sqrt(ni)) relu(dot_h) / sqrt(ih) as one [1, ni] x [ni, n+1] product per query (both scales positive:
        // folded into the weights); an exact zero stays zero, so ties keep their lowest-index order.
        string w = f.Mul(f.Reshape(weightsProj.Apply(f, x2), f.Concat(0, bs, f.ConstInt64(1, ni))), f.ScalarFloat((float)(1.0 / Math.Sqrt(ni) / Math.Sqrt(ih))));
        string index = f.Op("Squeeze", [f.Op("MatMul", [w, f.Op("Relu", [dots])]), f.ConstInt64(2)]);   // [b, s, n+1]
        string vis = Visible(f, keys, threshold, count);
        index = f.Op("Where", [vis, index, f.ScalarFloat(float.NegativeInfinity)]);
        string k = f.Op("Min", [f.ConstInt64(c.IndexTopK), f.Shape(keys, 1, 2)]);
        string picks = f.Op("TopK", [index, k], 2, "", Int("axis", -1))[1];                             // [b, s, k]
        string ok = f.Op("And", [f.Op("Less", [picks, f.Unsqueeze(threshold, 2)]), f.Op("Less", [picks, count])]);
        return f.Op("Where", [ok, picks, f.ScalarInt64(-1)]);
    }
}
