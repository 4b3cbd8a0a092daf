using Converter.Models;

namespace Converter.Calibration;

/// <summary>
/// The weight g_t with which a selected routed expert's output enters the MoE output, by the family's
/// <see cref="RoutingRule"/>: the selected experts' unbiased scores, renormalised where the rule says so, times its
/// scale. The selection itself (bias, group limit) is given. An expert's contribution to the layer output is
/// g_t * y_e(x_t), so GPTQ's error objective for its linears is sum_t g_t^2 ||dW x_t||^2: calibration weights each row by g_t^2.
/// </summary>
public sealed class RoutingWeights
{
    private readonly float[] _router;
    private readonly int _hidden;
    private readonly RoutingRule _rule;

    /// <param name="router">The router weight [experts, hidden] (PyTorch layout).</param>
    public RoutingWeights(float[] router, int hidden, RoutingRule rule)
    {
        if (router.Length != (long)rule.Experts * hidden)
            throw new ArgumentException($"router weight has {router.Length} elements, expected [{rule.Experts}, {hidden}]");
        (_router, _hidden, _rule) = (router, hidden, rule);
    }

    /// <summary>x [rows, hidden] and the selected experts [rows, k] -> the routing weights [rows, k].</summary>
    public float[] Compute(ReadOnlySpan<float> x, ReadOnlySpan<long> route, int rows)
    {
        int k = _rule.TopK, experts = _rule.Experts;
        var g = new float[rows * k];
        var logits = new double[experts];
        var scores = new double[experts];
        for (int r = 0; r < rows; r++)
        {
            var xr = x.Slice(r * _hidden, _hidden);
            for (int e = 0; e < experts; e++) logits[e] = ExpertForward.Dot(xr, _router.AsSpan(e * _hidden, _hidden));
            _rule.Scores(logits, scores);
            double sum = 0;
            for (int j = 0; j < k; j++) sum += scores[checked((int)route[r * k + j])];
            double f = (_rule.NormalizeTopK ? 1 / (sum + _rule.NormalizeEpsilon) : 1) * _rule.Scale;
            for (int j = 0; j < k; j++) g[r * k + j] = (float)(scores[checked((int)route[r * k + j])] * f);
        }
        return g;
    }
}
