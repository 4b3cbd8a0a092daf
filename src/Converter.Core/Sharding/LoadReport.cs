using System.Globalization;
using System.Text;

namespace Converter.Sharding;

/// <summary>
/// Held-out load of several placements side by side: a Markdown table (imbalance, ranks and nodes per token), wire
/// bytes per token for dispatch and combine in each activation format, and an SVG of per-rank load per layer.
/// </summary>
public sealed class LoadReport
{
    public const string MarkdownName = "load-report.md";
    public const string SvgName = "load-report.svg";

    public required RoutingTrace Trace { get; init; }
    public required IReadOnlyList<PlacementLoad> Placements { get; init; }
    /// <summary>Index into <see cref="Placements"/> of the one written to disk, or -1.</summary>
    public int Written { get; init; } = -1;

    private static string F(double v, string fmt = "F2") => v.ToString(fmt, CultureInfo.InvariantCulture);

    public string ToMarkdown()
    {
        var first = Placements[0].Placement;
        var sb = new StringBuilder();
        sb.AppendLine($"Held-out routing: {Trace.Source} ({Trace.Tokens} tokens, top-{Trace.ExpertsPerToken}, " +
            $"{Placements[0].Layers.Count} MoE layers); {first.Ranks} ranks, {first.RanksPerNode} per node ({first.Nodes} node(s)).");
        sb.AppendLine("Load = token-expert evaluations per rank; imbalance = max/mean rank load per layer.");
        sb.AppendLine();
        sb.AppendLine("| placement | mean max/mean | worst max/mean | ranks / token | nodes / token |");
        sb.AppendLine("|---|---|---|---|---|");
        for (int i = 0; i < Placements.Count; i++)
        {
            var pl = Placements[i];
            sb.AppendLine($"| {pl.Label}{(i == Written ? " (written)" : "")} | {F(pl.MeanImbalance, "F3")} | {F(pl.WorstImbalance, "F3")} | " +
                $"{F(pl.RanksPerToken)} | {F(pl.NodesPerToken)} |");
        }
        sb.AppendLine();
        int h = first.Model.HiddenSize;
        sb.AppendLine($"Bytes on the wire per token per MoE layer at hidden size {h}. Dispatch sends the token's hidden vector to each " +
            "destination rank; combine returns one partial sum from each (same count and size). Inter-node: one copy per destination " +
            "node (sent once per node, forwarded inside it), each way.");
        sb.AppendLine();
        sb.Append("| placement | traffic |");
        foreach (var f in WireFormats.All) sb.Append($" {f.Name} ({f.BytesPerToken(h)} B/vector) |");
        sb.AppendLine();
        sb.Append("|---|---|");
        foreach (var _ in WireFormats.All) sb.Append("---|");
        sb.AppendLine();
        foreach (var pl in Placements)
        {
            sb.Append($"| {pl.Label} | dispatch = combine |");
            foreach (var f in WireFormats.All) sb.Append($" {F(f.BytesPerToken(h) * pl.RanksPerToken, "F0")} |");
            sb.AppendLine();
            if (first.Nodes > 1)
            {
                sb.Append($"| {pl.Label} | inter-node |");
                foreach (var f in WireFormats.All) sb.Append($" {F(f.BytesPerToken(h) * pl.NodesPerToken, "F0")} |");
                sb.AppendLine();
            }
        }
        sb.AppendLine();
        sb.AppendLine("Per layer, tokens per rank:");
        sb.AppendLine();
        foreach (var pl in Placements)
        {
            sb.AppendLine($"- {pl.Label}:");
            foreach (var l in pl.Layers)
                sb.AppendLine($"  - layer {l.Layer}: [{string.Join(", ", l.RankLoad)}] max/mean {F(l.Imbalance, "F3")}, ranks/token {F(l.RanksPerToken)}, nodes/token {F(l.NodesPerToken)}");
        }
        return sb.ToString();
    }

    public void Write(string folder)
    {
        WriteAtomic(Path.Combine(folder, MarkdownName), ToMarkdown());
        WriteAtomic(Path.Combine(folder, SvgName), LoadChart.Svg(this));
    }

    private static void WriteAtomic(string path, string text)
    {
        File.WriteAllText(path + ".tmp", text);
        File.Move(path + ".tmp", path, overwrite: true);
    }
}
