using System.Globalization;
using System.Text;
using Converter.Numerics;
using Converter.Numerics.ActivationFormats;

namespace Converter.Calibration;

/// <summary>Which expert-parallel traffic: dispatch (MoE input sent to the experts) or combine (expert outputs sent back).</summary>
public enum CommSide { Dispatch, Combine }

/// <summary>
/// Error of every wire format on one MoE layer's dispatch and combine activations, accumulated batch by batch
/// in float64 (signal, noise, max relative error), so no activation needs to be kept. Dispatch: each token's MoE
/// input once (every copy sent to its k experts is quantized identically, so the metrics are the same);
/// combine: every (token, selected expert) output before the routing weight. Combine sums are kept per slot (one
/// per routed expert in calibrate) and added in slot order only when read, so the result does not depend on the
/// order in which experts are visited (calibrate may split a layer's experts across passes over the tokens).
/// </summary>
public sealed class CommTrafficStats
{
    /// <summary>BF16, E4M3, E5M2 and LogFMT-4..16.</summary>
    public static IReadOnlyList<ActivationFormat> Formats { get; } =
        new[] { ActivationFormat.Bf16, ActivationFormat.E4M3, ActivationFormat.E5M2 }
            .Concat(Enumerable.Range(Numerics.LogFmt.LogFmtCodec.MinBits, Numerics.LogFmt.LogFmtCodec.MaxBits - Numerics.LogFmt.LogFmtCodec.MinBits + 1)
                .Select(ActivationFormat.LogFmt)).ToArray();

    public int Layer { get; }
    public int Hidden { get; }
    /// <summary>Combine slots (see the class comment); dispatch has one.</summary>
    public int CombineSlots { get; }
    private readonly Acc[] _dispatch = new Acc[Formats.Count];
    private readonly Acc[,] _combine;
    public long[] Rows { get; } = new long[2];

    private struct Acc { public double Signal, Noise, MaxRel; }

    public CommTrafficStats(int layer, int hidden, int combineSlots = 1)
    {
        if (combineSlots < 1) throw new ArgumentOutOfRangeException(nameof(combineSlots), combineSlots, "at least one combine slot");
        (Layer, Hidden, CombineSlots) = (layer, hidden, combineSlots);
        _combine = new Acc[combineSlots, Formats.Count];
    }

    /// <summary>Adds rows [rows, hidden] of one side; <paramref name="name"/> names the tensor in errors (non-finite values);
    /// <paramref name="slot"/>: the combine slot (the routed expert), 0 for dispatch.</summary>
    public void Add(CommSide side, ReadOnlySpan<float> x, int rows, string name, int slot = 0)
    {
        if ((uint)slot >= (uint)(side == CommSide.Dispatch ? 1 : CombineSlots))
            throw new ArgumentOutOfRangeException(nameof(slot), slot, $"{side} has {(side == CommSide.Dispatch ? 1 : CombineSlots)} slot(s)");
        var src = x[..(rows * Hidden)];
        var y = new float[src.Length];
        for (int f = 0; f < Formats.Count; f++)
        {
            ActivationQuantizer.QuantizeDequantize(Formats[f], src, y, Hidden, name);
            ref var a = ref side == CommSide.Dispatch ? ref _dispatch[f] : ref _combine[slot, f];
            var m = ErrorMetrics.Compute(src, y);
            double signal = 0;
            foreach (var v in src) signal += (double)v * v;
            a.Signal += signal;
            a.Noise += m.RelativeRmse * m.RelativeRmse * signal; // noise = rmse² · signal
            if (!(a.MaxRel >= m.MaxRelativeError)) a.MaxRel = m.MaxRelativeError;
        }
        Rows[(int)side] += rows;
    }

    /// <summary>The accumulated metrics of one side and format.</summary>
    public ErrorMetrics Metrics(CommSide side, int formatIndex)
    {
        var a = _dispatch[formatIndex];
        if (side == CommSide.Combine)
        {
            a = default;
            for (int i = 0; i < CombineSlots; i++) // slot order: independent of the order the slots were filled in
            {
                var b = _combine[i, formatIndex];
                a.Signal += b.Signal;
                a.Noise += b.Noise;
                if (!(a.MaxRel >= b.MaxRel)) a.MaxRel = b.MaxRel;
            }
        }
        double rmse = a.Noise == 0 ? 0 : Math.Sqrt(a.Noise / a.Signal);
        double snr = a.Noise == 0 ? double.PositiveInfinity : 10 * Math.Log10(a.Signal / a.Noise);
        return new ErrorMetrics(rmse, a.MaxRel, snr, Rows[(int)side] * Hidden);
    }

    /// <summary>The smallest LogFMT width whose SNR reaches <paramref name="targetDb"/>, or null when even 16 bits do not.</summary>
    public int? MinLogFmtBits(CommSide side, double targetDb)
    {
        for (int f = 0; f < Formats.Count; f++)
            if (Formats[f].Kind == ActivationFormatKind.LogFmt && Metrics(side, f).SnrDb >= targetDb) return Formats[f].Bits;
        return null;
    }
}

/// <summary>comm-report.md and comm-report.svg from the per-layer <see cref="CommTrafficStats"/>.</summary>
public static class CommReportWriter
{
    public const string MarkdownName = "comm-report.md", SvgName = "comm-report.svg";
    public const int ReferenceHidden = 7168;

    private static string F(double v, string fmt) => double.IsPositiveInfinity(v) ? "inf" : v.ToString(fmt, CultureInfo.InvariantCulture);

    public static string Markdown(IReadOnlyList<CommTrafficStats> layers, double targetDb, string modelName)
    {
        var sb = new StringBuilder();
        int hidden = layers.Count > 0 ? layers[0].Hidden : 0;
        sb.AppendLine($"# Expert-parallel traffic: wire formats on {modelName}");
        sb.AppendLine();
        sb.AppendLine("Dispatch = each token's MoE input (post_attention_layernorm output) as sent to its routed experts; combine = each selected");
        sb.AppendLine("expert's output before its routing weight. Every format quantizes per 1x128 tile of the hidden dimension (FP8: one float32");
        sb.AppendLine("scale max(amax,1e-4)/fmax per tile; LogFMT-n: float32 (amin_eff, amax) per tile). Errors are over all elements of the layer:");
        sb.AppendLine("relative RMSE = sqrt(sum (q-x)^2 / sum x^2), SNR = 10 log10(sum x^2 / sum (q-x)^2), max relative error = max |q-x|/|x| over x != 0.");
        sb.AppendLine($"Wire bytes per token are codes plus per-tile metadata, at this model's hidden size ({hidden}) and at DeepSeek-V3's {ReferenceHidden}.");
        sb.AppendLine();
        sb.AppendLine($"## Smallest LogFMT width reaching {F(targetDb, "0.#")} dB SNR");
        sb.AppendLine();
        sb.AppendLine("| layer | dispatch tokens | dispatch min n | combine rows | combine min n |");
        sb.AppendLine("|---:|---:|---:|---:|---:|");
        foreach (var l in layers)
            sb.AppendLine($"| {l.Layer} | {l.Rows[0]} | {l.MinLogFmtBits(CommSide.Dispatch, targetDb)?.ToString() ?? "> 16"} | {l.Rows[1]} | {l.MinLogFmtBits(CommSide.Combine, targetDb)?.ToString() ?? "> 16"} |");
        foreach (var side in new[] { CommSide.Dispatch, CommSide.Combine })
        {
            sb.AppendLine();
            sb.AppendLine($"## {side}: SNR dB / relative RMSE / max relative error per layer");
            sb.AppendLine();
            sb.Append($"| format | bytes/token (h={hidden}) | bytes/token (h={ReferenceHidden}) |");
            foreach (var l in layers) sb.Append($" layer {l.Layer} |");
            sb.AppendLine();
            sb.Append("|---|---:|---:|");
            foreach (var _ in layers) sb.Append("---:|");
            sb.AppendLine();
            for (int f = 0; f < CommTrafficStats.Formats.Count; f++)
            {
                var fmt = CommTrafficStats.Formats[f];
                sb.Append($"| {fmt} | {ActivationQuantizer.WireBytesPerToken(fmt, hidden)} | {ActivationQuantizer.WireBytesPerToken(fmt, ReferenceHidden)} |");
                foreach (var l in layers)
                {
                    var m = l.Metrics(side, f);
                    sb.Append($" {F(m.SnrDb, "0.0")} / {F(m.RelativeRmse, "0.00e0")} / {F(m.MaxRelativeError, "0.00e0")} |");
                }
                sb.AppendLine();
            }
        }
        return sb.ToString();
    }

    /// <summary>
    /// Two panels (dispatch, combine): SNR in dB (y) against the format (x: BF16, E4M3, E5M2, LogFMT-4..16), one
    /// line per layer, the target SNR as a dashed line. Fixed palette, labelled axes, legend.
    /// </summary>
    public static string Svg(IReadOnlyList<CommTrafficStats> layers, double targetDb, string modelName)
    {
        var formats = CommTrafficStats.Formats;
        const int panelW = 560, panelH = 340, left = 60, top = 60, gap = 90, bottom = 70;
        int width = left + 2 * panelW + gap + 140, height = top + panelH + bottom;
        double maxSnr = targetDb + 10;
        foreach (var l in layers)
            for (int f = 0; f < formats.Count; f++)
                foreach (var s in new[] { CommSide.Dispatch, CommSide.Combine })
                {
                    var v = l.Metrics(s, f).SnrDb;
                    if (!double.IsInfinity(v)) maxSnr = Math.Max(maxSnr, v);
                }
        maxSnr = Math.Ceiling(maxSnr / 10) * 10;
        string[] palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"];
        var inv = CultureInfo.InvariantCulture;
        var sb = new StringBuilder();
        sb.AppendLine($"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">");
        sb.AppendLine($"<rect width=\"{width}\" height=\"{height}\" fill=\"white\"/>");
        sb.AppendLine($"<text x=\"{width / 2}\" y=\"24\" text-anchor=\"middle\" font-size=\"16\" font-weight=\"bold\">Expert traffic SNR per wire format and MoE layer ({System.Security.SecurityElement.Escape(modelName)})</text>");
        for (int p = 0; p < 2; p++)
        {
            var side = (CommSide)p;
            int x0 = left + p * (panelW + gap), y0 = top;
            double X(int f) => x0 + (f + 0.5) * panelW / formats.Count;
            double Y(double snr) => y0 + panelH - Math.Clamp(snr, 0, maxSnr) / maxSnr * panelH;
            sb.AppendLine($"<text x=\"{x0 + panelW / 2}\" y=\"{y0 - 10}\" text-anchor=\"middle\" font-size=\"14\">{side} (MoE {(p == 0 ? "input" : "expert outputs")})</text>");
            sb.AppendLine($"<rect x=\"{x0}\" y=\"{y0}\" width=\"{panelW}\" height=\"{panelH}\" fill=\"none\" stroke=\"black\"/>");
            for (double t = 0; t <= maxSnr; t += 10)
            {
                string yy = Y(t).ToString("0.#", inv);
                sb.AppendLine($"<line x1=\"{x0}\" x2=\"{x0 + panelW}\" y1=\"{yy}\" y2=\"{yy}\" stroke=\"#e0e0e0\"/>");
                sb.AppendLine($"<text x=\"{x0 - 6}\" y=\"{yy}\" text-anchor=\"end\" dominant-baseline=\"middle\">{t.ToString(inv)}</text>");
            }
            string ty = Y(targetDb).ToString("0.#", inv);
            sb.AppendLine($"<line x1=\"{x0}\" x2=\"{x0 + panelW}\" y1=\"{ty}\" y2=\"{ty}\" stroke=\"black\" stroke-dasharray=\"6,4\"/>");
            sb.AppendLine($"<text x=\"{x0 + panelW - 4}\" y=\"{Y(targetDb) - 5:0.#}\" text-anchor=\"end\" font-size=\"11\">target {targetDb.ToString(inv)} dB</text>");
            for (int f = 0; f < formats.Count; f++)
            {
                string xx = X(f).ToString("0.#", inv);
                string label = formats[f].Kind == ActivationFormatKind.LogFmt ? $"L{formats[f].Bits}" : formats[f].ToString();
                sb.AppendLine($"<text x=\"{xx}\" y=\"{y0 + panelH + 16}\" text-anchor=\"middle\" font-size=\"11\">{label}</text>");
            }
            sb.AppendLine($"<text x=\"{x0 + panelW / 2}\" y=\"{y0 + panelH + 36}\" text-anchor=\"middle\">format (L n = LogFMT-n)</text>");
            sb.AppendLine($"<text transform=\"translate({x0 - 40},{y0 + panelH / 2}) rotate(-90)\" text-anchor=\"middle\">SNR (dB)</text>");
            for (int i = 0; i < layers.Count; i++)
            {
                string color = palette[i % palette.Length];
                var pts = new StringBuilder();
                for (int f = 3; f < formats.Count; f++) pts.Append($"{X(f).ToString("0.#", inv)},{Y(Snr(layers[i], side, f)).ToString("0.#", inv)} ");
                sb.AppendLine($"<polyline points=\"{pts.ToString().Trim()}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\"/>");
                for (int f = 0; f < formats.Count; f++)
                    sb.AppendLine($"<circle cx=\"{X(f).ToString("0.#", inv)}\" cy=\"{Y(Snr(layers[i], side, f)).ToString("0.#", inv)}\" r=\"{(f < 3 ? 4 : 2.5)}\" fill=\"{color}\"/>");
            }
        }
        int lx = left + 2 * panelW + gap + 15;
        sb.AppendLine($"<text x=\"{lx}\" y=\"{top + 10}\" font-weight=\"bold\">MoE layer</text>");
        for (int i = 0; i < layers.Count; i++)
        {
            int ly = top + 30 + i * 18;
            sb.AppendLine($"<line x1=\"{lx}\" x2=\"{lx + 20}\" y1=\"{ly}\" y2=\"{ly}\" stroke=\"{palette[i % palette.Length]}\" stroke-width=\"3\"/>");
            sb.AppendLine($"<text x=\"{lx + 26}\" y=\"{ly}\" dominant-baseline=\"middle\">layer {layers[i].Layer}</text>");
        }
        sb.AppendLine($"<text x=\"{left}\" y=\"{height - 12}\" font-size=\"11\" fill=\"#555\">Higher is better. Large dots: BF16, E4M3, E5M2; the line joins LogFMT-4..16; layers with equal SNR overlap. Clipped at 0 and {maxSnr.ToString(inv)} dB.</text>");
        sb.AppendLine("</svg>");
        return sb.ToString();
    }

    private static double Snr(CommTrafficStats l, CommSide side, int f)
    {
        var v = l.Metrics(side, f).SnrDb;
        return double.IsPositiveInfinity(v) ? 1e9 : v;
    }
}
