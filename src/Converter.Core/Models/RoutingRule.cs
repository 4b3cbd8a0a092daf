namespace Converter.Models;

/// <summary>How router logits become selection scores.</summary>
public enum RouterScoring
{
    /// <summary>sigmoid(logit) per expert (DeepSeek-V3).</summary>
    Sigmoid,
    /// <summary>softmax over all experts (DeepSeek-V2, Qwen3-MoE).</summary>
    Softmax,
    /// <summary>sqrt(softplus(logit)) per expert (DeepSeek-V4's <c>sqrtsoftplus</c>).</summary>
    SqrtSoftplus,
}

/// <summary>How an expert group is scored for group-limited selection.</summary>
public enum GroupScoring
{
    /// <summary>The sum of the group's two best selection scores (DeepSeek-V3's noaux_tc).</summary>
    TopTwoSum,
    /// <summary>The group's best selection score (DeepSeek-V2's group_limited_greedy).</summary>
    Max,
}

/// <summary>
/// One family's MoE routing, declared once and read by every consumer: the ONNX MoE function, the GGUF metadata,
/// calibration's routing weights and the tests' reference forward. Selection: scores from the logits, plus the
/// selection bias where the model has one (for selection only); with groups active, only the best
/// <see cref="TopkGroups"/> groups (scored by <see cref="GroupScore"/>) stay eligible; then the top
/// <see cref="TopK"/>, lowest index first among equals (as ONNX TopK). <see cref="Hashed"/> layers skip the selection:
/// their experts come from a per-token table (DeepSeek-V4's <c>tid2eid[input_id]</c>, <see cref="MoeBlock.HashTable"/>).
/// Weights: the unbiased scores of the selected experts, divided by their sum (+ <see cref="NormalizeEpsilon"/>) when
/// <see cref="NormalizeTopK"/>, times <see cref="Scale"/>.
/// </summary>
public sealed record RoutingRule(
    int Experts,
    int TopK,
    RouterScoring Scoring,
    bool SelectionBias = false,
    int Groups = 1,
    int TopkGroups = 1,
    GroupScoring GroupScore = GroupScoring.TopTwoSum,
    bool NormalizeTopK = false,
    double NormalizeEpsilon = 0,
    double Scale = 1,
    bool Hashed = false)
{
    /// <summary>True where the group stage can exclude an expert (more than one group, fewer of them kept).</summary>
    public bool GroupingActive => Groups > 1 && TopkGroups < Groups;

    public int ExpertsPerGroup => Experts / Groups;

    /// <summary>Selection scores (before the bias) from router logits, in float64.</summary>
    public void Scores(ReadOnlySpan<double> logits, Span<double> scores)
    {
        if (Scoring == RouterScoring.Sigmoid)
        {
            for (int e = 0; e < logits.Length; e++) scores[e] = 1 / (1 + Math.Exp(-logits[e]));
            return;
        }
        if (Scoring == RouterScoring.SqrtSoftplus)
        {
            // softplus(x) = max(x, 0) + log1p(exp(-|x|)), stable for large |x|
            for (int e = 0; e < logits.Length; e++) scores[e] = Math.Sqrt(Math.Max(logits[e], 0) + Math.Log(1 + Math.Exp(-Math.Abs(logits[e]))));
            return;
        }
        double max = double.NegativeInfinity, z = 0;
        foreach (var l in logits) max = Math.Max(max, l);
        for (int e = 0; e < logits.Length; e++) z += scores[e] = Math.Exp(logits[e] - max);
        for (int e = 0; e < logits.Length; e++) scores[e] /= z;
    }

    /// <summary>
    /// The reference selection in float64: <paramref name="selected"/> gets the top-k experts (best first),
    /// <paramref name="weights"/> their mixing weights; returns the smallest selection margin (group stage and expert
    /// stage: the gap between the last kept and the first dropped score).
    /// </summary>
    public double Select(ReadOnlySpan<double> logits, ReadOnlySpan<double> bias, Span<int> selected, Span<double> weights)
    {
        if (logits.Length != Experts) throw new ArgumentException($"{logits.Length} router logits, expected {Experts}");
        if (Hashed) throw new InvalidOperationException("a hashed layer's experts come from its table: use Weigh with the token's row");
        var scores = new double[Experts];
        Scores(logits, scores);
        var choice = new double[Experts];
        for (int e = 0; e < Experts; e++) choice[e] = scores[e] + (SelectionBias && bias.Length > 0 ? bias[e] : 0);
        double margin = double.PositiveInfinity;
        var eligible = new bool[Experts];
        if (GroupingActive)
        {
            int per = ExpertsPerGroup;
            var groupScore = new double[Groups];
            for (int g = 0; g < Groups; g++)
            {
                var s = choice.AsSpan(g * per, per).ToArray();
                Array.Sort(s);
                Array.Reverse(s);
                groupScore[g] = GroupScore == GroupScoring.Max ? s[0] : s[0] + (per > 1 ? s[1] : 0);
            }
            var keptGroups = TopIndices(groupScore, TopkGroups, out double gm);
            margin = Math.Min(margin, gm);
            foreach (var g in keptGroups)
                for (int i = 0; i < per; i++) eligible[g * per + i] = true;
        }
        else
        {
            Array.Fill(eligible, true);
        }
        var masked = new double[Experts];
        // transformers zeroes the choice of excluded experts (masked_fill 0.0), so an excluded expert can still
        // tie with or beat a negative kept one; the same here.
        for (int e = 0; e < Experts; e++) masked[e] = eligible[e] ? choice[e] : 0;
        var top = TopIndices(masked, TopK, out double em);
        margin = Math.Min(margin, em);
        double sum = 0;
        for (int j = 0; j < TopK; j++)
        {
            selected[j] = top[j];
            sum += weights[j] = scores[top[j]];
        }
        double f = (NormalizeTopK ? 1 / (sum + NormalizeEpsilon) : 1) * Scale;
        for (int j = 0; j < TopK; j++) weights[j] *= f;
        return margin;
    }

    /// <summary>
    /// The mixing weights of given experts (a hashed layer's table row, best-first order irrelevant), in float64: their
    /// unbiased scores, normalised and scaled as <see cref="Select"/> does.
    /// </summary>
    public void Weigh(ReadOnlySpan<double> logits, ReadOnlySpan<int> selected, Span<double> weights)
    {
        if (logits.Length != Experts) throw new ArgumentException($"{logits.Length} router logits, expected {Experts}");
        var scores = new double[Experts];
        Scores(logits, scores);
        double sum = 0;
        for (int j = 0; j < selected.Length; j++) sum += weights[j] = scores[selected[j]];
        double f = (NormalizeTopK ? 1 / (sum + NormalizeEpsilon) : 1) * Scale;
        for (int j = 0; j < selected.Length; j++) weights[j] *= f;
    }

    /// <summary>Indices of the k largest values, best first, lowest index first among equals; the gap k-th to (k+1)-th.</summary>
    private static int[] TopIndices(double[] values, int k, out double margin)
    {
        var order = new int[values.Length];
        for (int i = 0; i < order.Length; i++) order[i] = i;
        Array.Sort(order, (a, b) => values[b] != values[a] ? values[b].CompareTo(values[a]) : a.CompareTo(b));
        margin = k < values.Length ? values[order[k - 1]] - values[order[k]] : double.PositiveInfinity;
        return order[..k];
    }
}
