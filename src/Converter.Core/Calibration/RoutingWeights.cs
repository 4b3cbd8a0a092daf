namespace Converter.Calibration;

/// <summary>
/// The weight g_t with which a selected routed expert's output enters the MoE output (DeepSeek-V3 routing):
/// score = sigmoid(x . w_e) (or the softmax over all experts), the selected experts' scores normalised to sum 1 when
/// norm_topk_prob, times routed_scaling_factor. The selection itself (correction bias, group limit) is given: these
/// weights use the raw scores, as the model does. An expert's contribution to the layer output is g_t * y_e(x_t),
/// so GPTQ's error objective for its linears is sum_t g_t^2 ||dW x_t||^2: calibration weights each row by g_t^2.
/// </summary>
public sealed class RoutingWeights
{
    private readonly float[] _router;
    private readonly int _experts, _hidden, _k;
    private readonly bool _softmax, _normalize;
    private readonly double _scale;

    /// <param name="router">The router weight [experts, hidden] (PyTorch layout).</param>
    public RoutingWeights(float[] router, int experts, int hidden, int k, string scoringFunc, bool normTopkProb, double routedScalingFactor)
    {
        if (router.Length != (long)experts * hidden)
            throw new ArgumentException($"router weight has {router.Length} elements, expected [{experts}, {hidden}]");
        _softmax = scoringFunc switch
        {
            "sigmoid" => false,
            "softmax" => true,
            _ => throw new NotSupportedException($"routing scoring function '{scoringFunc}' is not supported (sigmoid, softmax)"),
        };
        (_router, _experts, _hidden, _k, _normalize, _scale) = (router, experts, hidden, k, normTopkProb, routedScalingFactor);
    }

    /// <summary>x [rows, hidden] and the selected experts [rows, k] -> the routing weights [rows, k].</summary>
    public float[] Compute(ReadOnlySpan<float> x, ReadOnlySpan<long> route, int rows)
    {
        var g = new float[rows * _k];
        var logits = new double[_experts];
        for (int r = 0; r < rows; r++)
        {
            var xr = x.Slice(r * _hidden, _hidden);
            double max = double.NegativeInfinity, z = 0;
            if (_softmax)
            {
                for (int e = 0; e < _experts; e++) max = Math.Max(max, logits[e] = ExpertForward.Dot(xr, _router.AsSpan(e * _hidden, _hidden)));
                for (int e = 0; e < _experts; e++) z += Math.Exp(logits[e] - max);
            }
            double sum = 0;
            for (int j = 0; j < _k; j++)
            {
                int e = checked((int)route[r * _k + j]);
                double l = _softmax ? logits[e] : ExpertForward.Dot(xr, _router.AsSpan(e * _hidden, _hidden));
                double s = _softmax ? Math.Exp(l - max) / z : 1 / (1 + Math.Exp(-l));
                g[r * _k + j] = (float)s;
                sum += s;
            }
            double f = (_normalize ? 1 / (sum + 1e-20) : 1) * _scale;
            for (int j = 0; j < _k; j++) g[r * _k + j] = (float)(g[r * _k + j] * f);
        }
        return g;
    }
}
