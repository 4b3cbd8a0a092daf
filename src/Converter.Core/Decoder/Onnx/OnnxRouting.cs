using Converter.Formats.Onnx;
using Converter.Models;
using DataType = Converter.Formats.Onnx.Proto.TensorProto.Types.DataType;
using static Converter.Formats.Onnx.OnnxAttr;

namespace Converter.Decoder.Onnx;

/// <summary>
/// A <see cref="RoutingRule"/> as ONNX nodes inside a MoE function body, the graph twin of
/// <see cref="RoutingRule.Select"/>: scores, selection bias, the group stage where it is active, top-k (ONNX TopK
/// breaks ties lowest index first), weights from the unbiased scores. A hashed rule takes its experts as given
/// (the table lookup of the token ids) instead of selecting them.
/// </summary>
public static class OnnxRouting
{
    /// <param name="logits">Router logits [tokens, E].</param>
    /// <param name="bias">Selection bias [E] (zeros where the model has none).</param>
    /// <param name="given">A hashed rule's experts [tokens, k] (int64).</param>
    /// <returns>The scores [tokens, E], the selected experts [tokens, k] (int64) and their weights [tokens, k].</returns>
    public static (string Scores, string TopIdx, string Weights) Emit(OnnxNodeBuilder f, RoutingRule rule, string logits, string bias, string? given = null)
    {
        int e = rule.Experts, k = rule.TopK;
        string scores = rule.Scoring switch
        {
            RouterScoring.Sigmoid => f.Op("Sigmoid", [logits]),
            RouterScoring.SqrtSoftplus => f.Op("Sqrt", [f.Op("Softplus", [logits])]),
            _ => f.Op("Softmax", [logits], Int("axis", -1)),
        };
        if (rule.Hashed)
        {
            if (given == null) throw new ArgumentException("a hashed routing rule needs the experts of each token");
            return (scores, given, Weights(f, rule, scores, given));
        }
        if (given != null) throw new ArgumentException("experts are given only to a hashed routing rule");
        string choice = rule.SelectionBias ? f.Add(scores, bias) : scores;
        if (rule.GroupingActive)
        {
            int g = rule.Groups, perGroup = rule.ExpertsPerGroup;
            string grouped = f.Reshape(choice, -1, g, perGroup);
            string groupScores = rule.GroupScore == GroupScoring.Max
                ? f.Op("ReduceMax", [grouped, f.ConstInt64(-1)], Int("keepdims", 0))
                : f.Op("ReduceSum", [f.Op("TopK", [grouped, f.ConstInt64(Math.Min(2, perGroup))], 2, "", Int("axis", -1))[0], f.ConstInt64(-1)],
                    Int("keepdims", 0)); // [t, G]
            string groupIdx = f.Op("TopK", [groupScores, f.ConstInt64(rule.TopkGroups)], 2, "", Int("axis", -1))[1];
            string zeros = f.Mul(groupScores, f.ScalarFloat(0f));
            string ones = f.Op("ConstantOfShape", [f.Shape(groupIdx)], Tensor("value", OnnxTensors.Float("", [1], 1f)));
            string groupMask = f.Op("ScatterElements", [zeros, groupIdx, ones], Int("axis", 1));
            string expertMask = f.Reshape(f.Op("Expand", [f.Unsqueeze(groupMask, 2), f.ConstInt64(1, 1, perGroup)]), -1, e);
            // Excluded experts' choice becomes 0 (transformers' masked_fill), not -inf.
            choice = f.Op("Where", [f.Cast(expertMask, DataType.Bool), choice, f.ScalarFloat(0f)]);
        }
        string topIdx = f.Op("TopK", [choice, f.ConstInt64(k)], 2, "", Int("axis", -1))[1]; // [t, k]
        return (scores, topIdx, Weights(f, rule, scores, topIdx));
    }

    /// <summary>The selected experts' unbiased scores, normalised and scaled as the rule says.</summary>
    private static string Weights(OnnxNodeBuilder f, RoutingRule rule, string scores, string topIdx)
    {
        string w = f.Op("GatherElements", [scores, topIdx], Int("axis", 1));
        if (rule.NormalizeTopK)
        {
            string sum = f.Op("ReduceSum", [w, f.ConstInt64(1)], Int("keepdims", 1));
            if (rule.NormalizeEpsilon != 0) sum = f.Add(sum, f.ScalarFloat((float)rule.NormalizeEpsilon));
            w = f.Op("Div", [w, sum]);
        }
        if (rule.Scale != 1) w = f.Mul(w, f.ScalarFloat((float)rule.Scale));
        return w;
    }
}
