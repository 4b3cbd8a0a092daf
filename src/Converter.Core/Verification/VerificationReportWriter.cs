using System.Globalization;
using System.Text;
using System.Text.Json;

namespace Converter.Verification;

/// <summary>
/// Renders a <see cref="VerificationReport"/> as one JSON object (explicit <see cref="Utf8JsonWriter"/>: key
/// names fixed here, no reflection) or as a readable table. JSON has no NaN or infinity: such values are
/// written as null, and a metric that does not apply (routing without routing data) is null too.
/// </summary>
public static class VerificationReportWriter
{
    /// <summary>The fixed top-level keys, in output order; detail objects follow them.</summary>
    public static IReadOnlyList<string> MetricKeys { get; } =
    [
        "positions", "stable_positions", "max_abs_logit_diff", "max_abs_logit_diff_stable", "mean_abs_logit_diff",
        "top1_agreement", "top1_agreement_stable", "kl_mean", "kl_p99", "kl_max", "nll_mean", "golden_nll_mean",
        "ppl_ratio", "routing_agreement", "selection_agreement", "passed", "status",
    ];

    public static string ToJson(VerificationReport r, bool indented = true)
    {
        using var ms = new MemoryStream();
        WriteJson(r, ms, indented);
        return Encoding.UTF8.GetString(ms.ToArray());
    }

    public static void WriteJson(VerificationReport r, Stream stream, bool indented = true)
    {
        using var w = new Utf8JsonWriter(stream, new JsonWriterOptions
        {
            Indented = indented,
            Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping, // "<=" stays readable; never embedded in HTML
        });
        w.WriteStartObject();
        w.WriteNumber("positions", r.Positions);
        w.WriteNumber("stable_positions", r.StablePositions);
        Num(w, "max_abs_logit_diff", r.MaxAbsLogitDiff);
        Num(w, "max_abs_logit_diff_stable", r.MaxAbsLogitDiffStable);
        Num(w, "mean_abs_logit_diff", r.MeanAbsLogitDiff);
        Num(w, "top1_agreement", r.Top1Agreement);
        Num(w, "top1_agreement_stable", r.Top1AgreementStable);
        Num(w, "kl_mean", r.KlMean);
        Num(w, "kl_p99", r.KlP99);
        Num(w, "kl_max", r.KlMax);
        Num(w, "nll_mean", r.NllMean);
        Num(w, "golden_nll_mean", r.GoldenNllMean);
        Num(w, "ppl_ratio", r.PplRatio);
        Num(w, "routing_agreement", r.RoutingAgreement);
        Num(w, "selection_agreement", r.SelectionAgreement);
        if (r.ReportOnly) w.WriteNull("passed"); // a preset without limits judges nothing: neither passed nor failed
        else w.WriteBoolean("passed", r.Passed);
        w.WriteString("status", r.Status);

        w.WriteStartObject("unstable");
        var u = r.Unstable;
        w.WriteNumber("count", u.Count);
        Num(w, "max_abs_logit_diff", u.MaxAbsLogitDiff);
        Num(w, "mean_abs_logit_diff", u.MeanAbsLogitDiff);
        Num(w, "top1_agreement", u.Top1Agreement);
        Num(w, "kl_max", u.KlMax);
        Num(w, "routing_agreement", u.RoutingAgreement);
        if (r.GoldenHasSelections) Num(w, "selection_agreement", u.SelectionAgreement);
        w.WriteStartArray("worst");
        foreach (var p in u.Worst)
        {
            w.WriteStartObject();
            w.WriteNumber("batch", p.Batch);
            w.WriteNumber("position", p.Position);
            Num(w, "min_routing_margin", p.MinRoutingMargin);
            if (r.GoldenHasSelections) Num(w, "min_selection_margin", p.MinSelectionMargin);
            Num(w, "max_abs_logit_diff", p.MaxAbsLogitDiff);
            Num(w, "kl", p.Kl);
            w.WriteBoolean("top1_match", p.Top1Match);
            w.WriteNumber("golden_top1", p.GoldenTop1);
            w.WriteNumber("artifact_top1", p.ArtifactTop1);
            w.WriteEndObject();
        }
        w.WriteEndArray();
        w.WriteEndObject();

        w.WriteStartArray("checks");
        foreach (var c in r.Checks)
        {
            w.WriteStartObject();
            w.WriteString("metric", c.Metric);
            w.WriteString("comparison", c.Comparison);
            Num(w, "limit", c.Limit);
            Num(w, "actual", c.Actual);
            w.WriteBoolean("passed", c.Passed);
            Num(w, "excess", c.Excess);
            if (c.Note != null) w.WriteString("note", c.Note);
            w.WriteEndObject();
        }
        w.WriteEndArray();
        w.WriteStartArray("failures");
        foreach (var c in r.Failures) w.WriteStringValue(c.Metric);
        if (r.NonFiniteLogits > 0) w.WriteStringValue("nonfinite_logits");
        w.WriteEndArray();
        w.WriteNumber("nonfinite_logits", r.NonFiniteLogits);
        w.WriteString("preset", r.Preset);
        if (r.PresetReason != null) w.WriteString("preset_reason", r.PresetReason);
        w.WriteString("golden", r.Golden);
        if (r.Compact is { } cs)
        {
            w.WriteStartObject("compact_golden");
            w.WriteNumber("top_k", cs.K);
            w.WriteNumber("tail_samples", cs.M);
            Num(w, "tail_mass_mean", cs.TailMassMean);
            Num(w, "kl_mean_lower_bound", cs.KlMeanLowerBound);
            Num(w, "kl_mean_stderr", cs.KlMeanStdErr);
            w.WriteString("note", "KL: top-k entries exact (a lower bound), tail estimated without bias from samples; logit differences over the stored entries");
            w.WriteEndObject();
        }
        if (r.Artifact != null) w.WriteString("artifact", r.Artifact);
        else w.WriteNull("artifact");

        if (r.Layers is { } lr)
        {
            w.WriteStartObject("layers");
            Num(w, "threshold", lr.Threshold);
            if (lr.FirstDivergentIndex is int fi) w.WriteNumber("first_divergent_index", fi);
            else w.WriteNull("first_divergent_index");
            if (lr.FirstDivergentName != null) w.WriteString("first_divergent", lr.FirstDivergentName);
            else w.WriteNull("first_divergent");
            w.WriteStartArray("per_layer");
            foreach (var l in lr.Layers)
            {
                w.WriteStartObject();
                w.WriteNumber("index", l.Index);
                w.WriteString("name", l.Name);
                Num(w, "max_abs_diff", l.MaxAbsDiff);
                Num(w, "relative_error", l.RelativeError);
                Num(w, "max_abs_diff_stable", l.MaxAbsDiffStable);
                w.WriteEndObject();
            }
            w.WriteEndArray();
            w.WriteEndObject();
        }
        w.WriteEndObject();
    }

    private static void Num(Utf8JsonWriter w, string name, double? value)
    {
        if (value is double v && double.IsFinite(v)) w.WriteNumber(name, v);
        else w.WriteNull(name);
    }

    /// <summary>A readable report: metric table with limits, failures with margins, unstable positions, layers.</summary>
    public static string ToText(VerificationReport r)
    {
        var sb = new StringBuilder();
        sb.Append("golden:   ").AppendLine(r.Golden);
        if (r.Artifact != null) sb.Append("artifact: ").AppendLine(r.Artifact);
        sb.Append("preset:   ").AppendLine(r.PresetReason != null ? $"{r.Preset} ({r.PresetReason})" : r.Preset);
        if (r.Compact is { } cs)
            sb.AppendLine($"compact golden: top-{cs.K} + {cs.M} tail samples per position (mean tail mass {F(cs.TailMassMean)}); " +
                          $"kl_mean >= {F(cs.KlMeanLowerBound)} (top-k part), standard error {F(cs.KlMeanStdErr)}; logit differences over stored entries");
        sb.AppendLine();
        var limits = r.Checks.ToDictionary(c => c.Metric);
        sb.AppendLine($"{"metric",-27} {"value",14}  {"limit",-14} status");
        sb.AppendLine(new string('-', 66));
        Row(sb, "positions", r.Positions.ToString(CultureInfo.InvariantCulture), limits);
        Row(sb, "stable_positions", r.StablePositions.ToString(CultureInfo.InvariantCulture), limits);
        Row(sb, "max_abs_logit_diff", F(r.MaxAbsLogitDiff), limits);
        Row(sb, "max_abs_logit_diff_stable", F(r.MaxAbsLogitDiffStable), limits);
        Row(sb, "mean_abs_logit_diff", F(r.MeanAbsLogitDiff), limits);
        Row(sb, "top1_agreement", F(r.Top1Agreement), limits);
        Row(sb, "top1_agreement_stable", F(r.Top1AgreementStable), limits);
        Row(sb, "kl_mean", F(r.KlMean), limits);
        Row(sb, "kl_p99", F(r.KlP99), limits);
        Row(sb, "kl_max", F(r.KlMax), limits);
        Row(sb, "nll_mean", F(r.NllMean), limits);
        Row(sb, "golden_nll_mean", F(r.GoldenNllMean), limits);
        Row(sb, "ppl_ratio", F(r.PplRatio), limits);
        Row(sb, "routing_agreement", r.RoutingAgreement is double ra ? F(ra) : "n/a", limits);
        Row(sb, "selection_agreement", r.SelectionAgreement is double sa ? F(sa) : "n/a", limits);
        sb.AppendLine();

        var u = r.Unstable;
        if (u.Count == 0)
            sb.AppendLine("unstable positions (near-tie routing): none");
        else
        {
            sb.AppendLine($"unstable positions (near-tie {(r.GoldenHasSelections ? "routing or selection" : "routing")}): {u.Count}, excluded from *_stable metrics");
            sb.AppendLine($"  max_abs_logit_diff {F(u.MaxAbsLogitDiff)}, mean_abs_logit_diff {F(u.MeanAbsLogitDiff)}, top1_agreement {F(u.Top1Agreement)}, kl_max {F(u.KlMax)}, routing_agreement {(u.RoutingAgreement is double x ? F(x) : "n/a")}" +
                (r.GoldenHasSelections ? $", selection_agreement {(u.SelectionAgreement is double y ? F(y) : "n/a")}" : ""));
            sb.AppendLine($"  {"batch",5} {"pos",5} {"margin",12}{(r.GoldenHasSelections ? $" {"sel_margin",12}" : "")} {"max_abs_diff",14} {"kl",12} top1");
            foreach (var p in u.Worst)
                sb.AppendLine($"  {p.Batch,5} {p.Position,5} {F(p.MinRoutingMargin),12}{(r.GoldenHasSelections ? $" {F(p.MinSelectionMargin),12}" : "")} {F(p.MaxAbsLogitDiff),14} {F(p.Kl),12} {(p.Top1Match ? "same" : $"{p.GoldenTop1}->{p.ArtifactTop1}")}");
        }

        if (r.Layers is { } lr)
        {
            sb.AppendLine();
            sb.AppendLine($"{(r.GoldenHasSelections || lr.Layers.Any(l => l.Name.EndsWith("streams", StringComparison.Ordinal)) ? "residual streams" : "hidden states")} of sequence 0 (diverging: relative error > {F(lr.Threshold)})");
            sb.AppendLine($"  {"layer",-24} {"max_abs_diff",14} {"rel_error",12} {"max_abs_stable",14}");
            foreach (var l in lr.Layers)
                sb.AppendLine($"  {l.Name,-24} {F(l.MaxAbsDiff),14} {F(l.RelativeError),12} {F(l.MaxAbsDiffStable),14}{(l.Index == lr.FirstDivergentIndex ? "  <- first divergent" : "")}");
            sb.AppendLine(lr.FirstDivergentName is { } name ? $"  first divergent: {name}" : "  no layer diverges");
        }

        sb.AppendLine();
        if (r.NonFiniteLogits > 0) sb.AppendLine($"FAIL: {r.NonFiniteLogits} artifact logits are NaN or infinite");
        foreach (var c in r.Checks)
        {
            if (c.Skipped) sb.AppendLine($"skipped: {c.Metric} {c.Comparison} {F(c.Limit)} ({c.Note})");
            else if (!c.Passed)
                sb.AppendLine($"FAIL: {c.Metric} = {F(c.Actual!.Value)}, limit {c.Comparison} {F(c.Limit)} (off by {F(c.Excess)}{(c.Note != null ? "; " + c.Note : "")})");
        }
        sb.AppendLine(r.ReportOnly ? $"REPORTED (preset '{r.Preset}' sets no limits: nothing was judged)" : r.Passed ? "PASSED" : "FAILED");
        return sb.ToString();
    }

    private static void Row(StringBuilder sb, string metric, string value, Dictionary<string, LimitCheck> limits)
    {
        string limit = "", status = "";
        if (limits.TryGetValue(metric, out var c))
        {
            limit = $"{c.Comparison} {F(c.Limit)}";
            status = c.Skipped ? "skipped" : c.Passed ? "ok" : "FAIL";
        }
        sb.AppendLine($"{metric,-27} {value,14}  {limit,-14} {status}".TrimEnd());
    }

    private static string F(double v) => double.IsNaN(v) ? "NaN" : v == 0 ? "0" :
        Math.Abs(v) is >= 1e-3 and < 1e6 ? v.ToString("0.######", CultureInfo.InvariantCulture) : v.ToString("0.###e+0", CultureInfo.InvariantCulture);
}
