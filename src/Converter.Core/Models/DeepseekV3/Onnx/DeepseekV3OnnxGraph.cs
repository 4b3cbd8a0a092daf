using Converter.Formats.Onnx;
using Converter.Formats.Onnx.Proto;
using DataType = Converter.Formats.Onnx.Proto.TensorProto.Types.DataType;
using static Converter.Formats.Onnx.OnnxAttr;
using N = Converter.Models.DeepseekV3.Onnx.DeepseekV3OnnxNames;

namespace Converter.Models.DeepseekV3.Onnx;

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
}

/// <summary>One initializer of the exported model: its name, type, shape and source tensors.</summary>
/// <param name="Interleaved">INT4 scales and zero points of fc1: Tensors are the gate then the up projections, rows interleaved.</param>
public sealed record OnnxInitializerPlan(string Name, DataType Type, long[] Dims, InitializerSource Source,
    string[] Tensors, float[]? Values = null, bool Interleaved = false)
{
    public long ByteLength => OnnxTensors.ByteLength(Type, Dims);
}

/// <summary>The graph (no initializer data yet) and the ordered list of initializers to stream into it.</summary>
public sealed record DeepseekV3OnnxExport(ModelProto Model, IReadOnlyList<OnnxInitializerPlan> Initializers,
    IReadOnlyList<string> HiddenStateOutputs, IReadOnlyList<string> RoutingOutputs);

/// <summary>
/// Builds the deepseek_v3 forward graph: embedding, per layer RMSNorm + MLA + residual, RMSNorm + MoE/MLP +
/// residual, final norm, lm_head. Inputs input_ids (and optionally attention_mask, position_ids) int64
/// [batch, sequence]; output logits float32 [batch, sequence, vocab]. The MTP layers are not part of it.
/// With <see cref="DeepseekV3OnnxOptions.Slice"/> only a range of decoder layers (<see cref="OnnxLayerSlice"/>).
/// </summary>
public static class DeepseekV3OnnxGraph
{
    public static DeepseekV3OnnxExport Build(DeepseekV3Config c, DeepseekV3OnnxOptions options)
    {
        bool fp8 = options.Weights == OnnxWeightFormat.Fp8;
        var model = new OnnxModelBuilder { DocString = $"deepseek_v3 ({c.NumHiddenLayers} layers) exported by converter, weights {options.Weights}" };
        model.Import(N.Domain, 1);
        bool int4 = options.Weights == OnnxWeightFormat.Int4;
        var scheme = options.Int4;
        if (int4 && scheme == null) throw new ArgumentException("int4 export needs an INT4 scheme (options.Int4)");
        if (int4) model.Import(OnnxModelBuilder.MicrosoftDomain, 1);
        var denseInt4 = options.DenseInt4 ?? new HashSet<string>();
        var rank = options.Rank;
        if (rank != null && options.Comm is { Any: true })
            throw new NotSupportedException("an expert-parallel rank graph is exported without simulated traffic");
        // One function per distinct set of INT4 inputs (all float32 in the other formats): "MLA", "MLA_int4", "MLA_int4_0110".
        var made = new HashSet<string>(StringComparer.Ordinal);
        string Fn(string baseName, bool[] mask, Action<string, bool[]?> create)
        {
            string name = !mask.Any(b => b) ? baseName
                : mask.All(b => b) ? baseName + "_int4"
                : baseName + "_int4_" + string.Concat(mask.Select(b => b ? '1' : '0'));
            if (made.Add(name)) create(name, mask.Any(b => b) ? mask : null);
            return name;
        }
        if (fp8)
        {
            DeepseekV3OnnxFunctions.DequantizeFp8Block(model);
            if (options.Fp8CastDequantize) DeepseekV3OnnxFunctions.DequantizeFp8BlockCast(model);
        }
        string DequantFor(long cols) => options.Fp8CastDequantize && cols % 128 == 0 ? DeepseekV3OnnxFunctions.DequantCastName : DeepseekV3OnnxFunctions.DequantName;

        var g = new OnnxGraphBuilder("deepseek_v3");
        var plan = new List<OnnxInitializerPlan>();
        long h = c.HiddenSize, v = c.VocabSize;

        string Init(string name, DataType type, long[] dims, InitializerSource src, string[] tensors, float[]? values = null, bool interleaved = false)
        {
            plan.Add(new OnnxInitializerPlan(name, type, dims, src, tensors, values, interleaved));
            return g.Initializer(name);
        }
        string Plain(string name, params long[] dims) => Init(name, DataType.Float, dims, InitializerSource.Float32, [name]);
        // A projection weight [out, in] as float32 for the function bodies (dequantized in the graph for fp8).
        // A projection's function inputs: one float32 value, or INT4 codes, scales (and zero points) for MatMulNBits.
        string[] Proj(string name, long rows, long cols, List<bool> mask)
        {
            bool q = int4 && denseInt4.Contains(name);
            mask.Add(q);
            return q ? Int4Parts(name, [name], null, rows, cols, InitializerSource.Int4Codes, matMulNBits: true) : [Linear(name, rows, cols)];
        }
        string[] Int4Parts(string name, string[] tensors, long? experts, long rows, long cols, InitializerSource codes, bool matMulNBits)
        {
            int block = scheme!.Value.GroupSize;
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
            if (!scheme.Value.Symmetric)
                parts.Add(Init(name + "_zero_points", DataType.Uint8, [.. lead, rows, (groups + 1) / 2], InitializerSource.Int4Zeros, tensors, interleaved: fc1));
            return parts.ToArray();
        }
        string Linear(string name, long rows, long cols)
        {
            if (!fp8) return Plain(name, rows, cols);
            string w = Init(name, DataType.Float8E4M3Fn, [rows, cols], InitializerSource.Fp8Codes, [name]);
            string s = Init(name + "_scale_inv", DataType.Float, [(rows + 127) / 128, (cols + 127) / 128], InitializerSource.Fp8Scales, [name]);
            return g.Op(DequantFor(cols), [w, s], 1, N.Domain)[0];
        }
        string DequantStacked(string name, string[] tensors, long e, long rows, long cols)
        {
            string w = Init(name, DataType.Float8E4M3Fn, [e, rows, cols], InitializerSource.Fp8Codes, tensors);
            string s = Init(name + "_scale_inv", DataType.Float, [e, (rows + 127) / 128, (cols + 127) / 128], InitializerSource.Fp8Scales, tensors);
            return g.Op(DequantFor(cols), [w, s], 1, N.Domain)[0];
        }

        var slice = options.Slice ?? new OnnxLayerSlice(0, c.NumHiddenLayers);
        bool whole = options.Slice == null;
        if (slice.First < 0 || slice.End > c.NumHiddenLayers || slice.First >= slice.End)
            throw new ArgumentException($"layer slice [{slice.First}, {slice.End}) is not within the model's {c.NumHiddenLayers} layers");
        if (!whole && rank != null) throw new NotSupportedException("an expert-parallel rank graph is exported whole, not as a layer slice");

        // Inputs, embedding (or the previous slice's hidden state), mask, positions.
        string hidden, batchSeq; // batchSeq: the int64 shape [batch, sequence]
        var hiddenOutputs = new List<string>();
        if (slice.First == 0)
        {
            string ids = g.Input(N.InputIds, DataType.Int64, "batch", "sequence");
            batchSeq = g.Shape(ids);
            string embed = Plain("model.embed_tokens.weight", v, h);
            hidden = g.Reserve(N.Embedding);
            g.OpNamed("Gather", [embed, ids], [hidden]);
            hiddenOutputs.Add(N.Embedding);
        }
        else
        {
            hidden = g.Input(N.SliceInput, DataType.Float, "batch", "sequence", h);
            batchSeq = g.Shape(hidden, 0, 2);
        }
        string? attentionMask = options.AttentionMaskInput ? g.Input(N.AttentionMask, DataType.Int64, "batch", "sequence") : null;
        string? positionIds = options.PositionIdsInput ? g.Input(N.PositionIds, DataType.Int64, "batch", "sequence") : null;

        string seq = g.Reshape(g.Shape(hidden, 1, 2), g.ConstInt64());
        string range = g.Op("Range", [g.ScalarInt64(0), seq, g.ScalarInt64(1)]);
        string causal = g.Op("LessOrEqual", [g.Unsqueeze(range, 0), g.Unsqueeze(range, 1)]);   // [s, s]: key <= query
        string allowed = attentionMask == null
            ? g.Unsqueeze(causal, 0, 1)
            : g.Op("And", [causal, g.Unsqueeze(g.Cast(attentionMask, DataType.Bool), 1, 2)]);  // [b, 1, s, s]
        // A large finite bias (not -inf) keeps fully padded rows finite.
        string mask = g.Op("Where", [allowed, g.ScalarFloat(0f), g.ScalarFloat(-1e9f)]);
        string positions = positionIds ?? g.Op("Expand", [g.Unsqueeze(range, 0), batchSeq]);

        int maxPos = c.MaxPositionEmbeddings;
        var (cosT, sinT) = DeepseekV3Rope.Tables(c, maxPos);
        long half = c.QkRopeHeadDim / 2;
        string cos = Init("rope.cos_cache", DataType.Float, [maxPos, half], InitializerSource.Computed, [], cosT);
        string sin = Init("rope.sin_cache", DataType.Float, [maxPos, half], InitializerSource.Computed, [], sinT);

        float eps = (float)c.RmsNormEps;
        var routingOutputs = new List<string>();
        var moeInputValues = new List<string>();
        var partialOutputs = new List<string>();
        var rankLayers = new List<int>();
        for (int layer = slice.First; layer < slice.End; layer++)
        {
            string p = $"model.layers.{layer}.";
            string RmsNorm(string x, string weight, long dim) =>
                g.Op("RMSNormalization", [x, Plain(weight, dim)], Float("epsilon", eps), Int("axis", -1));

            string xn = RmsNorm(hidden, p + "input_layernorm.weight", h);
            var mlaInputs = new List<string> { xn, mask, positions, cos, sin };
            var mlaMask = new List<bool>();
            string a = p + "self_attn.";
            long nh = c.NumAttentionHeads;
            if (c.QLoraRank is { } q)
            {
                mlaInputs.AddRange(Proj(a + "q_a_proj.weight", q, h, mlaMask));
                mlaInputs.Add(Plain(a + "q_a_layernorm.weight", q));
                mlaInputs.AddRange(Proj(a + "q_b_proj.weight", nh * c.QkHeadDim, q, mlaMask));
            }
            else
            {
                mlaInputs.AddRange(Proj(a + "q_proj.weight", nh * c.QkHeadDim, h, mlaMask));
            }
            mlaInputs.AddRange(Proj(a + "kv_a_proj_with_mqa.weight", c.KvLoraRank + c.QkRopeHeadDim, h, mlaMask));
            mlaInputs.Add(Plain(a + "kv_a_layernorm.weight", c.KvLoraRank));
            mlaInputs.AddRange(Proj(a + "kv_b_proj.weight", nh * (c.QkNopeHeadDim + c.VHeadDim), c.KvLoraRank, mlaMask));
            mlaInputs.AddRange(Proj(a + "o_proj.weight", h, nh * c.VHeadDim, mlaMask));
            string attn = g.Fresh($"layer{layer}.attn");
            string mlaFn = Fn(DeepseekV3OnnxFunctions.MlaName, mlaMask.ToArray(), (n, m) => DeepseekV3OnnxFunctions.Mla(model, c, n, scheme, m));
            g.OpNamed(mlaFn, mlaInputs, [attn], N.Domain);
            hidden = g.Add(hidden, attn);

            string xn2 = RmsNorm(hidden, p + "post_attention_layernorm.weight", h);
            string mlpOut = g.Fresh($"layer{layer}.mlp");
            if (c.IsMoeLayer(layer))
            {
                string moeIn = g.Reserve(N.MoeInput(layer));
                g.OpNamed("Identity", [xn2], [moeIn]); // a stable name for calibration (ORT removes the node)
                xn2 = moeIn;
                moeInputValues.Add(moeIn);
                long e = c.NRoutedExperts, mi = c.MoeIntermediateSize;
                string m = p + "mlp.";
                OnnxLocalExperts? local = null;
                if (rank != null && !rank.Layers.TryGetValue(layer, out local))
                    throw new ArgumentException($"rank {rank.Rank}: no local experts given for MoE layer {layer}");
                // The experts stacked into fc1/fc2: all of them, or a rank's local slots in slot order.
                int[] stacked = local?.Experts ?? Enumerable.Range(0, (int)e).ToArray();
                long se = stacked.Length;
                string router = Plain(m + "gate.weight", e, h);
                string bias = c.TopkMethod == "noaux_tc"
                    ? Plain(m + "gate.e_score_correction_bias", e)
                    : g.ConstFloat([e], new float[e]);
                string[] Experts(string part) => stacked.Select(i => $"{m}experts.{i}.{part}.weight").ToArray();
                var moeMask = new List<bool> { int4 };
                var moeInputs = new List<string> { xn2, router, bias };
                if (int4)
                {
                    moeInputs.AddRange(Int4Parts(m + "experts.fc1.weight", [.. Experts("gate_proj"), .. Experts("up_proj")], se, 2 * mi, h,
                        InitializerSource.Int4CodesFc1, matMulNBits: false));
                    moeInputs.AddRange(Int4Parts(m + "experts.fc2.weight", Experts("down_proj"), se, h, mi, InitializerSource.Int4Codes, matMulNBits: false));
                }
                else if (fp8)
                {
                    string gate = DequantStacked(m + "experts.gate_proj.weight", Experts("gate_proj"), se, mi, h);
                    string up = DequantStacked(m + "experts.up_proj.weight", Experts("up_proj"), se, mi, h);
                    // Interleave rows (gate i, up i): com.microsoft.MoE's swiglu_fusion=1 layout.
                    moeInputs.Add(g.Reshape(g.Concat(2, g.Unsqueeze(gate, 2), g.Unsqueeze(up, 2)), se, 2 * mi, h));
                    moeInputs.Add(DequantStacked(m + "experts.down_proj.weight", Experts("down_proj"), se, h, mi));
                }
                else
                {
                    moeInputs.Add(Init(m + "experts.fc1.weight", DataType.Float, [se, 2 * mi, h], InitializerSource.StackedFc1Float32,
                        [.. Experts("gate_proj"), .. Experts("up_proj")]));
                    moeInputs.Add(Init(m + "experts.fc2.weight", DataType.Float, [se, h, mi], InitializerSource.StackedFloat32, Experts("down_proj")));
                }
                if (local != null)
                {
                    moeInputs.Add(g.ConstInt64(Array.ConvertAll(local.Experts, x => (long)x)));
                    moeInputs.Add(g.ConstFloat([se], local.Shares));
                }
                if (c.NSharedExperts > 0)
                {
                    long si = mi * c.NSharedExperts;
                    moeInputs.AddRange(Proj(m + "shared_experts.gate_proj.weight", si, h, moeMask));
                    moeInputs.AddRange(Proj(m + "shared_experts.up_proj.weight", si, h, moeMask));
                    moeInputs.AddRange(Proj(m + "shared_experts.down_proj.weight", h, si, moeMask));
                }
                string route = g.Reserve(N.Routing(layer));
                if (local != null)
                {
                    // This rank's routed partial, plus the other ranks' (an input that defaults to zeros), plus the
                    // shared experts once: summed over ranks in graph order, the layer's output is the whole model's.
                    int localK = Math.Min(c.NumExpertsPerTok, stacked.Length);
                    string rankFn = Fn($"{DeepseekV3OnnxFunctions.MoeRankName}_k{localK}", moeMask.ToArray(),
                        (n, mk) => DeepseekV3OnnxFunctions.Moe(model, c, n, scheme, mk, null, rankLocal: true, localK: localK));
                    string shared = g.Fresh($"layer{layer}.shared");
                    string partial = g.Reserve(N.Partial(layer));
                    g.OpNamed(rankFn, moeInputs, [shared, partial, route], N.Domain);
                    string peer = g.Input(N.PeerSum(layer), DataType.Float, null, null, h);
                    plan.Add(new OnnxInitializerPlan(peer, DataType.Float, [1, 1, h], InitializerSource.Computed, [], new float[h]));
                    g.OpNamed("Add", [shared, g.Add(partial, peer)], [mlpOut]);
                    partialOutputs.Add(partial);
                    routingOutputs.Add(route);
                    rankLayers.Add(layer);
                }
                else
                {
                    string moeFn = Fn(DeepseekV3OnnxFunctions.MoeName, moeMask.ToArray(), (n, mk) => DeepseekV3OnnxFunctions.Moe(model, c, n, scheme, mk, options.Comm is { Any: true } ? options.Comm : null));
                    g.OpNamed(moeFn, moeInputs, [mlpOut, route], N.Domain);
                    routingOutputs.Add(route);
                }
            }
            else
            {
                long inter = c.IntermediateSize;
                var mlpMask = new List<bool>();
                var mlpInputs = new List<string> { xn2 };
                mlpInputs.AddRange(Proj(p + "mlp.gate_proj.weight", inter, h, mlpMask));
                mlpInputs.AddRange(Proj(p + "mlp.up_proj.weight", inter, h, mlpMask));
                mlpInputs.AddRange(Proj(p + "mlp.down_proj.weight", h, inter, mlpMask));
                string mlpFn = Fn(DeepseekV3OnnxFunctions.MlpName, mlpMask.ToArray(), (n, mk) => DeepseekV3OnnxFunctions.Mlp(model, c, n, scheme, mk));
                g.OpNamed(mlpFn, mlpInputs, [mlpOut], N.Domain);
            }
            string layerOut = g.Reserve(N.Layer(layer));
            g.OpNamed("Add", [hidden, mlpOut], [layerOut]);
            hidden = layerOut;
            if (layer < c.NumHiddenLayers - 1) hiddenOutputs.Add(layerOut);
        }

        if (whole)
        {
            string final = g.Reserve(N.FinalNorm);
            g.OpNamed("RMSNormalization", [hidden, Plain("model.norm.weight", h)], [final], "", Float("epsilon", eps), Int("axis", -1));
            hiddenOutputs.Add(final);
            string lmHead = Plain("lm_head.weight", v, h);
            string flatLogits = g.Linear(g.Reshape(final, -1, h), lmHead);
            g.OpNamed("Reshape", [flatLogits, g.Concat(0, batchSeq, g.ConstInt64(v))], [N.Logits]);
            g.Output(N.Logits, DataType.Float, "batch", "sequence", v);
        }
        else
        {
            g.Output(N.Layer(slice.End - 1), DataType.Float, "batch", "sequence", h);
            hiddenOutputs.Remove(N.Layer(slice.End - 1));
            model.Metadata[N.SliceKey] = $"{slice.First},{slice.End}";
            model.DocString += $", {slice} only";
        }
        foreach (var name in partialOutputs) g.Output(name, DataType.Float, "batch", "sequence", h);

        if (options.DiagnosticOutputs)
        {
            foreach (var name in hiddenOutputs) g.Output(name, DataType.Float, "batch", "sequence", h);
            if (whole && !hiddenOutputs.Contains(N.Layer(c.NumHiddenLayers - 1))) g.Output(N.Layer(c.NumHiddenLayers - 1), DataType.Float, "batch", "sequence", h);
            foreach (var name in routingOutputs) g.Output(name, DataType.Int64, null, c.NumExpertsPerTok);
            foreach (var name in moeInputValues) g.Output(name, DataType.Float, "batch", "sequence", h);
        }

        model.Metadata[N.HiddenStatesKey] = string.Join(",", hiddenOutputs);
        model.Metadata[N.RoutingKey] = string.Join(",", routingOutputs);
        model.Metadata[N.MoeInputsKey] = string.Join(",", moeInputValues);
        if (options.Comm is { Any: true } comm) model.Metadata["converter.simulate_comm"] = comm.ToString();
        if (rank != null)
        {
            model.Metadata[N.RankKey] = rank.Rank.ToString(System.Globalization.CultureInfo.InvariantCulture);
            model.Metadata[N.RanksKey] = rank.Ranks.ToString(System.Globalization.CultureInfo.InvariantCulture);
            model.Metadata[N.ShardLayersKey] = string.Join(",", rankLayers);
            model.Metadata[N.PlacementKey] = rank.Placement;
            foreach (var l in rankLayers)
            {
                var le = rank.Layers[l];
                model.Metadata[N.ShardLayerKey(l)] = string.Join(",", le.Experts.Select((x, i) =>
                    $"{x}:{le.Shares[i].ToString("R", System.Globalization.CultureInfo.InvariantCulture)}"));
            }
            model.DocString += $", expert-parallel rank {rank.Rank} of {rank.Ranks}";
        }
        model.Metadata["converter.model_type"] = "deepseek_v3";
        model.Metadata["converter.weights"] = options.Weights.ToString().ToLowerInvariant();
        if (int4) model.Metadata["converter.int4"] = $"group {scheme!.Value.GroupSize}, {(scheme.Value.Symmetric ? "symmetric" : "asymmetric")}, {denseInt4.Count} dense projection(s) MatMulNBits";
        return new DeepseekV3OnnxExport(model.Build(g), plan, hiddenOutputs, routingOutputs);
    }
}
