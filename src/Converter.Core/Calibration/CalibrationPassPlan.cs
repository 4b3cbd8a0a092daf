using System.Globalization;
using System.Text;

namespace Converter.Calibration;

/// <summary>The routed experts [First, End) of one MoE layer that one calibration pass accumulates.</summary>
public readonly record struct ExpertRange(int Layer, int First, int End)
{
    public int Count => End - First;
    public override string ToString() => Count == 1 ? $"layer {Layer} expert {First}" : $"layer {Layer} experts {First}-{End - 1}";
}

/// <summary>
/// How `converter calibrate` splits its accumulators into passes over the calibration tokens under a memory budget.
/// Each pass holds some (layer, expert range) pieces; a layer's ranges are contiguous, in expert order and in
/// consecutive passes, so one writer per layer can stream finished experts. Memory of a pass, estimated as
/// <c>sum over its layers (LayerBytes + experts x ExpertBytes)</c>:
/// <list type="bullet">
/// <item><see cref="ExpertBytes"/>: an expert's float64 Hessians (hidden² for gate/up, moe_intermediate² for down) and its
/// float32 gate/up/down weights (3 x hidden x moe_intermediate);</item>
/// <item><see cref="LayerBytes"/>: what a layer holds from its first to its last pass: the float64 pooled Hessian (hidden²)
/// and every expert's absmax (hidden + moe_intermediate floats).</item>
/// </list>
/// Pieces are packed greedily in (layer, expert) order; a pass always takes at least one expert, even over the budget.
/// </summary>
public sealed class CalibrationPassPlan
{
    public IReadOnlyList<IReadOnlyList<ExpertRange>> Passes { get; }
    public long ExpertBytes { get; }
    public long LayerBytes { get; }
    public long BudgetBytes { get; }

    private CalibrationPassPlan(List<IReadOnlyList<ExpertRange>> passes, long expertBytes, long layerBytes, long budget) =>
        (Passes, ExpertBytes, LayerBytes, BudgetBytes) = (passes, expertBytes, layerBytes, budget);

    /// <summary>Per routed expert: Hessians (when recorded) and float32 weights (needed for Hessians or the combine traffic).</summary>
    public static long ExpertBytesFor(int hidden, int intermediate, bool hessians, bool comm) =>
        (hessians ? ((long)hidden * hidden + (long)intermediate * intermediate) * 8 : 0) +
        (hessians || comm ? 3L * hidden * intermediate * 4 : 0);

    /// <summary>Per layer, once, whatever its ranges: the pooled Hessian and the absmax of every expert.</summary>
    public static long LayerBytesFor(int hidden, int intermediate, int experts, bool hessians) =>
        hessians ? (long)hidden * hidden * 8 + ((long)experts * (hidden + intermediate) + hidden) * 4 : 0;

    /// <summary>Splits <paramref name="layers"/> (each with <paramref name="experts"/> routed experts) into passes.</summary>
    public static CalibrationPassPlan Create(IReadOnlyList<int> layers, int experts, long expertBytes, long layerBytes, long budgetBytes)
    {
        if (experts < 1) throw new ArgumentOutOfRangeException(nameof(experts), experts, "at least one routed expert");
        if (expertBytes < 0 || layerBytes < 0) throw new ArgumentOutOfRangeException(nameof(expertBytes), "negative size");
        var passes = new List<IReadOnlyList<ExpertRange>>();
        var current = new List<ExpertRange>();
        long used = 0;
        foreach (var layer in layers)
        {
            int next = 0;
            while (next < experts)
            {
                long room = budgetBytes - used - layerBytes;
                int n = expertBytes == 0 ? experts - next : (int)Math.Clamp(room / expertBytes, 0, experts - next);
                if (room < 0) n = 0;
                if (n == 0)
                {
                    if (current.Count > 0)
                    {
                        passes.Add(current);
                        current = new List<ExpertRange>();
                        used = 0;
                        continue;
                    }
                    n = 1; // one expert alone is over the budget: it still has to be calibrated
                }
                current.Add(new ExpertRange(layer, next, next + n));
                used += layerBytes + n * expertBytes;
                next += n;
            }
        }
        if (current.Count > 0) passes.Add(current);
        return new CalibrationPassPlan(passes, expertBytes, layerBytes, budgetBytes);
    }

    /// <summary>The estimated bytes of one pass.</summary>
    public long PassBytes(int pass)
    {
        long b = 0;
        foreach (var r in Passes[pass]) b += LayerBytes + r.Count * ExpertBytes;
        return b;
    }

    /// <summary>One line: the passes and what each holds (the first and last few when there are many).</summary>
    public string Describe(int show = 6)
    {
        var inv = CultureInfo.InvariantCulture;
        var sb = new StringBuilder();
        sb.Append(Passes.Count.ToString(inv)).Append(" pass(es) over the tokens");
        if (ExpertBytes > 0)
            sb.Append(inv, $" (estimate: {ExpertBytes / 1e6:0.###} MB per routed expert + {LayerBytes / 1e6:0.###} MB per layer, budget {BudgetBytes / 1e6:0.###} MB)");
        sb.Append(": ");
        for (int p = 0; p < Passes.Count; p++)
        {
            if (Passes.Count > 2 * show && p == show)
            {
                sb.Append(inv, $"... ({Passes.Count - 2 * show} more); ");
                p = Passes.Count - show - 1;
                continue;
            }
            sb.Append(inv, $"{p + 1}: {string.Join(", ", Passes[p])}");
            if (p < Passes.Count - 1) sb.Append("; ");
        }
        return sb.ToString();
    }
}
