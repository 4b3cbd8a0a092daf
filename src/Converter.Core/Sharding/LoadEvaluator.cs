namespace Converter.Sharding;

/// <summary>One MoE layer of a placement under a routing trace.</summary>
public sealed record LayerLoad(int Layer, long[] RankLoad, double Imbalance, double RanksPerToken, double NodesPerToken);

/// <summary>A placement's loads over every layer the trace covers.</summary>
public sealed record PlacementLoad(ExpertPlacement Placement, string Label, IReadOnlyList<LayerLoad> Layers)
{
    public double MeanImbalance => Layers.Average(l => l.Imbalance);
    public double WorstImbalance => Layers.Max(l => l.Imbalance);
    public double RanksPerToken => Layers.Average(l => l.RanksPerToken);
    public double NodesPerToken => Layers.Average(l => l.NodesPerToken);
}

/// <summary>
/// Replays recorded routing on a placement. Load of a rank = expert evaluations it runs (token-expert pairs), the
/// quantity EPLB balances. A token goes once to each rank holding one of its experts (dispatch) and gets one partial
/// sum back from each (combine); ranks and nodes per token count every destination, the token's own rank included.
/// Tokens of a replicated expert go to its replicas by smooth weighted round robin over the stated shares.
/// </summary>
public static class LoadEvaluator
{
    public static PlacementLoad Evaluate(ExpertPlacement p, RoutingTrace trace, string? label = null)
    {
        var layers = new List<LayerLoad>();
        foreach (var lp in p.Layers)
        {
            if (!trace.TopK.TryGetValue(lp.Layer, out var ids)) continue;
            layers.Add(EvaluateLayer(p, lp, ids, trace.ExpertsPerToken));
        }
        if (layers.Count == 0)
            throw new ArgumentException($"{trace.Source}: routing covers none of the placement's MoE layers [{string.Join(", ", p.Layers.Select(l => l.Layer))}]");
        return new PlacementLoad(p, label ?? p.Label, layers);
    }

    private static LayerLoad EvaluateLayer(ExpertPlacement p, LayerPlacement lp, int[] ids, int k)
    {
        int e = lp.Replicas.Length, tokens = ids.Length / k;
        var load = new long[p.Ranks];
        var credit = new double[e][];
        for (int x = 0; x < e; x++) credit[x] = new double[lp.Replicas[x].Length];
        var rankMark = new int[p.Ranks];
        var nodeMark = new int[p.Nodes];
        long rankSum = 0, nodeSum = 0;
        for (int t = 0; t < tokens; t++)
        {
            int stamp = t + 1;
            for (int j = 0; j < k; j++)
            {
                int x = ids[t * k + j];
                var reps = lp.Replicas[x];
                int pick = 0;
                if (reps.Length > 1)
                {
                    var c = credit[x];
                    for (int i = 0; i < reps.Length; i++)
                    {
                        c[i] += reps[i].Share;
                        if (c[i] > c[pick]) pick = i;
                    }
                    c[pick] -= 1;
                }
                int rank = reps[pick].Rank;
                load[rank]++;
                if (rankMark[rank] != stamp) { rankMark[rank] = stamp; rankSum++; }
                int node = p.NodeOf(rank);
                if (nodeMark[node] != stamp) { nodeMark[node] = stamp; nodeSum++; }
            }
        }
        double mean = (double)tokens * k / p.Ranks;
        long max = load.Max();
        return new LayerLoad(lp.Layer, load, mean > 0 ? max / mean : 1, (double)rankSum / tokens, (double)nodeSum / tokens);
    }
}
