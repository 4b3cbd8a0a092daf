using System.Globalization;
using System.Security;
using System.Text;

namespace Converter.Sharding;

/// <summary>
/// SVG heat maps of per-rank load per layer, one panel per placement: a cell is load / mean (white at 1, red above,
/// blue below); each row ends with its max/mean. Ranks of one node are separated by a gap.
/// </summary>
internal static class LoadChart
{
    private static string F(double v) => v.ToString("0.##", CultureInfo.InvariantCulture);

    public static string Svg(LoadReport report)
    {
        var first = report.Placements[0].Placement;
        int ranks = first.Ranks, layers = report.Placements[0].Layers.Count, nodes = first.Nodes;
        double cell = Math.Clamp(720.0 / ranks, 6, 44), rowH = 24, gap = nodes > 1 ? 4 : 0;
        double left = 70, right = 110, gridW = ranks * cell + (nodes - 1) * gap;
        double panelH = 28 + 14 + layers * rowH + 10;
        double width = Math.Max(left + gridW + right, 820), height = 50 + report.Placements.Count * panelH + 30;
        double maxRatio = report.Placements.Max(p => p.WorstImbalance);
        var sb = new StringBuilder();
        sb.Append(CultureInfo.InvariantCulture, $"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{F(width)}\" height=\"{F(height)}\" font-family=\"sans-serif\" font-size=\"11\">\n");
        sb.Append("<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n");
        sb.Append(CultureInfo.InvariantCulture, $"<text x=\"10\" y=\"20\" font-size=\"14\" font-weight=\"bold\">Tokens per rank / mean, per MoE layer ({ranks} ranks, {nodes} node(s))</text>\n");
        sb.Append(CultureInfo.InvariantCulture, $"<text x=\"10\" y=\"37\" fill=\"#555\">{SecurityElement.Escape(report.Trace.Source)}, {report.Trace.Tokens} tokens; white = mean, red = overloaded, blue = underloaded</text>\n");
        double y = 50;
        for (int pi = 0; pi < report.Placements.Count; pi++)
        {
            var pl = report.Placements[pi];
            string title = pl.Label + (pi == report.Written ? " (written)" : "") + $": mean max/mean {pl.MeanImbalance:F3}, ranks/token {pl.RanksPerToken:F2}, nodes/token {pl.NodesPerToken:F2}";
            sb.Append(CultureInfo.InvariantCulture, $"<text x=\"10\" y=\"{F(y + 16)}\" font-weight=\"bold\">{SecurityElement.Escape(title)}</text>\n");
            double rowY = y + 24 + 14;
            // Rank numbers above the cells (every rank when they fit, else the first rank of each node).
            for (int r = 0; r < ranks; r++)
            {
                if (cell < 16 && r % first.RanksPerNode != 0) continue;
                double x = left + r * cell + first.NodeOf(r) * gap;
                string label = cell >= 16 ? (r == 0 ? "rank 0" : r.ToString(CultureInfo.InvariantCulture)) : $"n{first.NodeOf(r)}";
                if (cell >= 16 && r == 0 && cell < 40) label = "r0";
                sb.Append(CultureInfo.InvariantCulture, $"<text x=\"{F(x + cell / 2 - 0.5)}\" y=\"{F(rowY - 3)}\" text-anchor=\"middle\" font-size=\"9\" fill=\"#555\">{label}</text>\n");
            }
            foreach (var l in pl.Layers)
            {
                double mean = l.RankLoad.Sum() / (double)ranks;
                sb.Append(CultureInfo.InvariantCulture, $"<text x=\"10\" y=\"{F(rowY + rowH / 2 + 4)}\">layer {l.Layer}</text>\n");
                for (int r = 0; r < ranks; r++)
                {
                    double ratio = mean > 0 ? l.RankLoad[r] / mean : 1;
                    double x = left + r * cell + first.NodeOf(r) * gap;
                    sb.Append(CultureInfo.InvariantCulture,
                        $"<rect x=\"{F(x)}\" y=\"{F(rowY)}\" width=\"{F(cell - 1)}\" height=\"{F(rowH - 2)}\" fill=\"{Color(ratio, maxRatio)}\"><title>rank {r}: {l.RankLoad[r]} ({ratio:F2} x mean)</title></rect>\n");
                    if (cell >= 30)
                        sb.Append(CultureInfo.InvariantCulture, $"<text x=\"{F(x + cell / 2 - 0.5)}\" y=\"{F(rowY + rowH / 2 + 3)}\" text-anchor=\"middle\" font-size=\"10\">{ratio:F2}</text>\n");
                }
                sb.Append(CultureInfo.InvariantCulture, $"<text x=\"{F(left + gridW + 8)}\" y=\"{F(rowY + rowH / 2 + 4)}\">max/mean {l.Imbalance:F2}</text>\n");
                rowY += rowH;
            }
            y += panelH;
        }
        sb.Append("</svg>\n");
        return sb.ToString();
    }

    /// <summary>Diverging scale: ratio 1 is white, up to the worst ratio deep red, down to 0 deep blue.</summary>
    private static string Color(double ratio, double maxRatio)
    {
        double t;
        int r, g, b;
        if (ratio >= 1)
        {
            t = maxRatio > 1 ? Math.Min(1, (ratio - 1) / (maxRatio - 1)) : 0;
            (r, g, b) = (255, (int)(255 - 200 * t), (int)(255 - 200 * t));
        }
        else
        {
            t = Math.Min(1, 1 - ratio);
            (r, g, b) = ((int)(255 - 200 * t), (int)(255 - 150 * t), 255);
        }
        return $"#{r:x2}{g:x2}{b:x2}";
    }
}
