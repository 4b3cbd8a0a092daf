using Converter.Formats.Onnx;
using Converter.Models;
using Converter.Formats.Onnx.Proto;
using Converter.Numerics.Int4;
using DataType = Converter.Formats.Onnx.Proto.TensorProto.Types.DataType;
using static Converter.Formats.Onnx.OnnxAttr;

namespace Converter.Decoder.Onnx;

/// <summary>
/// Bodies of the model-local functions (domain <c>converter.ai</c>). Each is generated for one config, so head
/// counts and widths are constants in the body; weights come in as inputs (a body cannot see initializers).
/// Layouts: hidden states [batch, seq, hidden]; inside a body tokens are flattened to [tokens, hidden] for Gemm
/// against PyTorch-layout [out, in] weights.
/// </summary>
/// <summary>A MoE function's constants: widths, the routing rule, and the SwiGLU clamps of the routed and shared
/// experts (<see cref="MoeBlock.SwigluLimit"/>; null: plain SwiGLU).</summary>
public sealed record OnnxMoeShape(long Hidden, long Intermediate, long SharedIntermediate, RoutingRule Routing,
    double? SwigluLimit = null, double? SharedSwigluLimit = null);

internal static class OnnxFeedForwardFunctions
{
    public const string MoeName = "MoE", MoeRankName = "MoE_rank", MlpName = "MLP", DequantName = "DequantizeFp8Block",
        DequantCastName = "DequantizeFp8BlockCast";

    /// <summary>silu(x Wg^T) * (x Wu^T) Wd^T on [tokens, hidden]; with <paramref name="limit"/> L the clamped form
    /// silu(min(x Wg^T, L)) * clamp(x Wu^T, -L, L).</summary>
    public static string SwiGlu(OnnxNodeBuilder f, string x2, Proj gate, Proj up, Proj down, double? limit = null)
    {
        string g = gate.Apply(f, x2);
        if (limit is { } l) g = f.Op("Min", [g, f.ScalarFloat((float)l)]);
        string act = f.Mul(g, f.Op("Sigmoid", [g]));
        string u = up.Apply(f, x2);
        if (limit is { } m) u = f.Op("Clip", [u, f.ScalarFloat(-(float)m), f.ScalarFloat((float)m)]);
        return down.Apply(f, f.Mul(act, u));
    }

    /// <summary>Dense MLP: inputs x, gate, up, down.</summary>
    public static void Mlp(OnnxModelBuilder model, long h, long inter, string name = MlpName, Int4Scheme? int4Scheme = null, bool[]? int4 = null)
    {
        var f = model.Function(OnnxDecoderNames.Domain, name);
        f.DocString = "SwiGLU MLP";
        bool Q(int i) => int4 != null && int4[i];
        string x = f.Input("x");
        var gate = Proj.In(f, "gate_proj", Q(0), int4Scheme, inter, h);
        var up = Proj.In(f, "up_proj", Q(1), int4Scheme, inter, h);
        var down = Proj.In(f, "down_proj", Q(2), int4Scheme, h, inter);
        string x2 = f.Reshape(x, -1, h);
        f.Output(f.Reshape(SwiGlu(f, x2, gate, up, down), f.Shape(x)));
    }

    /// <summary>
    /// MoE with top-k routing. Inputs: x, router weight [E, hidden], selection bias [E] (zeros where the model has
    /// none), fc1 [E, 2I, hidden] (gate and up rows interleaved), fc2 [E, hidden, I], then shared gate/up/down when
    /// the block has shared experts, then for a hashed rule the table [vocab, k] (int64) and the token ids [batch, sequence]
    /// (the experts of token t are table[id_t]). Outputs: y, top-k expert ids [tokens, k] (int64). Clamped SwiGLU
    /// (<see cref="OnnxMoeShape.SwigluLimit"/>) is the operators' own swiglu_limit: silu(min(gate, L)) * clamp(up, -L, L).
    /// Routing as <see cref="RoutingRule"/> states it (<see cref="OnnxRouting"/>): scores, bias for selection only,
    /// optional group stage, top-k; weights = unbiased scores (normalised when asked) times the scale. Experts run sparsely in com.microsoft.MoE: the exact weights
    /// go in as log(w) over -inf so its softmax returns w / sum(w), and the output is multiplied by sum(w).
    /// INT4 variant (int4 mask [0]): fc1/fc2 are 4-bit codes [E, N, K/2] with float32 block scales [E, N, K/group]
    /// (and zero points [E, N, ceil(K/group/2)] when asymmetric) for com.microsoft.QMoE; selection is by a -inf
    /// masked router_probs and the mixing weights are w itself through input 14 (router_weights). Shared-expert
    /// projections flagged in the mask [1..3] run as MatMulNBits.
    /// </summary>
    /// <remarks>
    /// With <paramref name="comm"/>: the dispatch format quantize-dequantizes the input of the routed experts only
    /// (router and shared experts read the exact input). The combine format needs each selected expert's output,
    /// which com.microsoft.MoE (and QMoE) keep internal: the routed part then runs as k calls with k=1, call j routing
    /// every token to its j-th selected expert with weight 1, so each call returns exactly that expert's output; it
    /// is quantize-dequantized, multiplied by w_j and summed. Still sparse, about as costly.
    /// <para>With <paramref name="rankLocal"/> (an expert-parallel rank's graph): fc1/fc2 hold only the S local slots
    /// and two inputs follow them, slot_experts (int64 [S], the logical expert of each slot) and slot_shares (float
    /// [S]). Routing is computed over all experts exactly as above; slot s then gets the dense weight
    /// w[expert(s)] * share(s), and com.microsoft.MoE runs the S local experts with those weights (same log trick).
    /// A token that selected no local expert gets a finite dummy row (all zeros, not all -inf whose softmax is NaN)
    /// and its output is multiplied by its weight sum, 0, so its partial is exactly 0. <paramref name="localK"/> is
    /// min(top-k, S) (the function is made once per distinct value). Outputs: shared experts' output
    /// (zeros without shared experts), the routed partial, top-k ids: the caller adds the other ranks' partials.</para>
    /// </remarks>
    public static void Moe(OnnxModelBuilder model, OnnxMoeShape c, string name = MoeName, Int4Scheme? int4Scheme = null, bool[]? int4 = null,
        CommSimulation? comm = null, bool rankLocal = false, int localK = 0)
    {
        if (rankLocal && comm != null)
            throw new NotSupportedException("an expert-parallel rank's MoE is exported without simulated traffic");
        model.Import(OnnxModelBuilder.MicrosoftDomain, 1);
        var f = model.Function(OnnxDecoderNames.Domain, name);
        // int4 mask: [0] routed experts (QMoE), [1..3] shared gate/up/down (MatMulNBits).
        bool Q(int i) => int4 != null && int4[i];
        bool qmoe = Q(0);
        var rule = c.Routing;
        long si = c.SharedIntermediate;
        f.DocString = $"{rule.Scoring} top-{rule.TopK} routing{(rule.GroupingActive ? " (group-limited)" : "")} over com.microsoft.MoE{(si > 0 ? ", plus shared experts" : "")}";
        int k = rule.TopK;
        long h = c.Hidden;
        string x = f.Input("x"), router = f.Input("gate"), bias = f.Input("e_score_correction_bias");
        string fc1 = f.Input("fc1");
        string? fc1Scales = qmoe ? f.Input("fc1_scales") : null, fc1Zeros = qmoe && !int4Scheme!.Value.Symmetric ? f.Input("fc1_zero_points") : null;
        string fc2 = f.Input("fc2");
        string? fc2Scales = qmoe ? f.Input("fc2_scales") : null, fc2Zeros = qmoe && !int4Scheme!.Value.Symmetric ? f.Input("fc2_zero_points") : null;
        string? slotExperts = rankLocal ? f.Input("slot_experts") : null, slotShares = rankLocal ? f.Input("slot_shares") : null;
        Proj? sg = null, su = null, sd = null;
        if (si > 0)
        {
            sg = Proj.In(f, "shared_gate_proj", Q(1), int4Scheme, si, h);
            su = Proj.In(f, "shared_up_proj", Q(2), int4Scheme, si, h);
            sd = Proj.In(f, "shared_down_proj", Q(3), int4Scheme, h, si);
        }
        string? given = null;
        if (rule.Hashed)
        {
            string table = f.Input("tid2eid"), ids = f.Input("input_ids");
            given = f.Op("Gather", [table, f.Reshape(ids, -1)], Int("axis", 0)); // [t, k]
        }

        string x2 = f.Reshape(x, -1, h);
        var (scores, topIdx, w) = OnnxRouting.Emit(f, rule, f.Linear(x2, router), bias, given);
        string negInf = f.Op("Expand", [f.ScalarFloat(float.NegativeInfinity), f.Shape(scores)]);
        string xRouted = comm?.Dispatch is { } dispatch ? OnnxCommQdq.Emit(f, x2, dispatch, h) : x2;
        string? zerosTE = null;
        string ZerosTE() => zerosTE ??= f.Mul(scores, f.ScalarFloat(0f)); // [t, E] of 0, made where a graph needs it
        // The SwiGLU attributes of both operators; swiglu_limit clamps as transformers' clamped SwiGLU does.
        AttributeProto[] Swiglu(params AttributeProto[] more)
        {
            var a = new List<AttributeProto> { String("activation_type", "swiglu"), Int("swiglu_fusion", 1),
                Float("activation_alpha", 1f), Float("activation_beta", 0f), Int("normalize_routing_weights", 0) };
            if (c.SwigluLimit is { } limit) a.Add(Float("swiglu_limit", (float)limit));
            a.AddRange(more);
            return a.ToArray();
        }
        // com.microsoft.QMoE over the 4-bit experts: selects kk experts by probs, mixes them with weights as given.
        string QMoe(string probs, string weights, int kk) =>
            f.Op("QMoE", [xRouted, probs, fc1, fc1Scales!, "", fc2, fc2Scales!, "", "", "", "", fc1Zeros ?? "", fc2Zeros ?? "", "", weights],
                1, OnnxModelBuilder.MicrosoftDomain,
                [Int("k", kk), .. Swiglu(Int("expert_weight_bits", 4), Int("block_size", int4Scheme!.Value.GroupSize))])[0];
        // com.microsoft.MoE over float experts: softmax of logProbs over the kk selected, as weights.
        string Moe(string logProbs, int kk) =>
            f.Op("MoE", [xRouted, logProbs, fc1, "", fc2], 1, OnnxModelBuilder.MicrosoftDomain, [Int("k", kk), .. Swiglu()])[0];
        // sum_j weights[:, j] * expert_{idx[:, j]}(xRouted), exactly, for idx/weights [t, kk].
        string Routed(string idx, string weights, int kk, bool unitWeights = false)
        {
            if (qmoe)
            {
                // QMoE selects by router_probs (-inf masks every expert but the chosen kk) and mixes with input 14
                // router_weights as given (normalize_routing_weights=0): the exact DeepSeek weights, no log trick.
                string probs = f.Op("ScatterElements", [negInf, idx, weights], Int("axis", 1));
                return QMoe(probs, f.Op("ScatterElements", [ZerosTE(), idx, weights], Int("axis", 1)), kk);
            }
            // com.microsoft.MoE: log(w) over -inf, its softmax returns w / sum(w); times sum(w).
            string moe = Moe(f.Op("ScatterElements", [negInf, idx, f.Op("Log", [weights])], Int("axis", 1)), kk);
            return unitWeights ? moe : f.Mul(moe, f.Op("ReduceSum", [weights, f.ConstInt64(1)], Int("keepdims", 1)));
        }
        if (rankLocal)
        {
            string dense = f.Op("ScatterElements", [ZerosTE(), topIdx, w], Int("axis", 1));            // [t, E]
            string local = f.Mul(f.Op("Gather", [dense, slotExperts!], Int("axis", 1)), slotShares!);  // [t, S]
            // k = min(top-k, S): a token selects at most that many local slots (one replica of an expert per rank).
            string partial;
            if (qmoe)
            {
                // QMoE selects by router_probs and mixes with router_weights as given: the slots' weights x shares
                // themselves; unselected slots are -inf to the selection and weigh 0 (a token with none gives 0).
                string probs = f.Op("Where", [f.Op("Greater", [local, f.ScalarFloat(0f)]), local, f.ScalarFloat(float.NegativeInfinity)]);
                partial = QMoe(probs, local, localK);
            }
            else
            {
                string localSum = f.Op("ReduceSum", [local, f.ConstInt64(1)], Int("keepdims", 1));    // [t, 1]
                string any = f.Op("Greater", [localSum, f.ScalarFloat(0f)]);
                // log(0) = -inf masks the slots this token did not select; a row with none gets zeros (finite softmax).
                string logProbs = f.Op("Where", [any, f.Op("Log", [local]), f.ScalarFloat(0f)]);
                partial = f.Mul(Moe(logProbs, localK), localSum);
            }
            string shared = sg != null ? SwiGlu(f, x2, sg, su!, sd!, c.SharedSwigluLimit) : f.Mul(x2, f.ScalarFloat(0f));
            f.Output(f.Reshape(shared, f.Shape(x)));
            f.Output(f.Reshape(partial, f.Shape(x)));
            f.Output(topIdx);
            return;
        }
        string y;
        if (comm?.Combine is { } combine)
        {
            y = "";
            string one = f.Op("ConstantOfShape", [f.Shape(topIdx, 0, 1)], Tensor("value", OnnxTensors.Float("", [1], 1f)));
            string unit = f.Unsqueeze(one, 1); // [t, 1] of 1
            for (int j = 0; j < k; j++)
            {
                string idx = f.Op("Slice", [topIdx, f.ConstInt64(j), f.ConstInt64(j + 1), f.ConstInt64(1)]);  // [t, 1]
                string wj = f.Op("Slice", [w, f.ConstInt64(j), f.ConstInt64(j + 1), f.ConstInt64(1)]);
                string part = f.Mul(OnnxCommQdq.Emit(f, Routed(idx, unit, 1, unitWeights: true), combine, h), wj);
                y = j == 0 ? part : f.Add(y, part);
            }
        }
        else
        {
            y = Routed(topIdx, w, k);
        }
        if (sg != null) y = f.Add(y, SwiGlu(f, x2, sg, su!, sd!, c.SharedSwigluLimit));
        f.Output(f.Reshape(y, f.Shape(x)));
        f.Output(topIdx);
    }

    /// <summary>
    /// float = e4m3 codes * scale for DeepSeek's 128x128 blocks, any leading dims: the scale [..., R, C] is
    /// repeated 128 times along rows (trimmed to the weight's rows) and DequantizeLinear runs blocked along the
    /// last axis with block 128 (ONNX blocking is one-dimensional).
    /// </summary>
    public static void DequantizeFp8Block(OnnxModelBuilder model)
    {
        var f = model.Function(OnnxDecoderNames.Domain, DequantName);
        f.DocString = "DeepSeek FP8 128x128 block dequantization";
        string w = f.Input("w"), s = f.Input("scale_inv");
        string rep = f.Op("Expand", [f.Unsqueeze(s, -2), f.ConstInt64(128, 1)]);           // [..., R, 128, C]
        string shape = f.Concat(0, f.Shape(s, 0, -2), f.ConstInt64(-1), f.Shape(s, -1));
        string rows = f.Shape(w, -2, -1);
        string full = f.Op("Slice", [f.Reshape(rep, shape), f.ConstInt64(0), rows, f.ConstInt64(-2)]);
        f.Output(f.Op("DequantizeLinear", [w, full], Int("axis", -1), Int("block_size", 128)));
    }

    /// <summary>
    /// The same dequantization for weights whose column count is a multiple of 128, as Cast + Mul: codes viewed as
    /// [..., N, C, 128] times the row-repeated scale [..., N, C, 1]; the values are identical (code * scale in
    /// float32). Unlike DequantizeLinear, ONNX Runtime constant-folds this at load (fast runs, fp32 memory).
    /// </summary>
    public static void DequantizeFp8BlockCast(OnnxModelBuilder model)
    {
        var f = model.Function(OnnxDecoderNames.Domain, DequantCastName);
        f.DocString = "DeepSeek FP8 128x128 block dequantization (columns a multiple of 128)";
        string w = f.Input("w"), s = f.Input("scale_inv");
        string rep = f.Op("Expand", [f.Unsqueeze(s, -2), f.ConstInt64(128, 1)]);           // [..., R, 128, C]
        string shape = f.Concat(0, f.Shape(s, 0, -2), f.ConstInt64(-1), f.Shape(s, -1));
        string rows = f.Shape(w, -2, -1);
        string full = f.Op("Slice", [f.Reshape(rep, shape), f.ConstInt64(0), rows, f.ConstInt64(-2)]); // [..., N, C]
        string wShape = f.Shape(w);
        string blocks = f.Reshape(f.Cast(w, DataType.Float), f.Concat(0, f.Shape(w, 0, -1), f.ConstInt64(-1, 128)));
        f.Output(f.Reshape(f.Mul(blocks, f.Unsqueeze(full, -1)), wShape));
    }
}
