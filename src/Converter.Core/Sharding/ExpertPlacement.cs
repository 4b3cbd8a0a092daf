namespace Converter.Sharding;

public enum PlacementMethod { Contiguous, Balanced }

/// <summary>One physical copy of a logical expert: the rank holding it, its slot there, and the fraction of the expert's tokens it serves.</summary>
public sealed record ExpertReplica(int Rank, int Slot, double Share);

/// <summary>The model a placement was made for: enough to refuse a placement from another config and to size wire traffic.</summary>
public sealed record PlacementModel(string ModelType, string ConfigFingerprint, int RoutedExperts, int ExpertsPerToken,
    int ExpertGroups, int TopkGroups, int HiddenSize);

/// <summary>Where the experts of one MoE layer live.</summary>
public sealed class LayerPlacement
{
    public required int Layer { get; init; }
    /// <summary>"calibration" when loads came from routing counts, "uniform" when the layer had none (e.g. an MTP layer), "none" for contiguous.</summary>
    public required string LoadSource { get; init; }
    /// <summary>Tokens routed to each logical expert in the calibration (all ones when uniform).</summary>
    public required double[] ExpertLoad { get; init; }
    /// <summary>Per logical expert, every replica (the first is the primary).</summary>
    public required ExpertReplica[][] Replicas { get; init; }
    /// <summary>Per rank, the logical expert in each local slot.</summary>
    public required int[][] RankSlots { get; init; }

    /// <summary>Expected tokens per rank from the calibration loads and replica shares.</summary>
    public double[] ExpectedRankLoad()
    {
        var load = new double[RankSlots.Length];
        for (int e = 0; e < Replicas.Length; e++)
            foreach (var r in Replicas[e]) load[r.Rank] += ExpertLoad[e] * r.Share;
        return load;
    }
}

/// <summary>
/// A whole model's expert-parallel layout: every MoE layer's logical experts mapped to (rank, slot, share) for
/// every replica. Ranks are numbered node-major: rank r sits on node r / RanksPerNode.
/// </summary>
public sealed class ExpertPlacement
{
    public required PlacementModel Model { get; init; }
    public required int Ranks { get; init; }
    public required int RanksPerNode { get; init; }
    public int Nodes => Ranks / RanksPerNode;
    public required PlacementMethod Method { get; init; }
    /// <summary>True when each expert group (and its replicas) was kept on one node.</summary>
    public required bool GroupAware { get; init; }
    public required int Redundant { get; init; }
    /// <summary>The most experts any rank holds in any layer: E/N, plus one or more when R replicas do not spread evenly.</summary>
    public int SlotsPerRank
    {
        get
        {
            int max = 0;
            foreach (var l in Layers) foreach (var s in l.RankSlots) max = Math.Max(max, s.Length);
            return max;
        }
    }
    /// <summary>How a token's share of a replicated expert is split between its replicas.</summary>
    public string TokenSplit => "even";
    /// <summary>Fingerprint and size of the calibration the loads came from; null for contiguous.</summary>
    public string? CalibrationFingerprint { get; init; }
    public long CalibrationTokens { get; init; }
    public required IReadOnlyList<LayerPlacement> Layers { get; init; }

    public int NodeOf(int rank) => rank / RanksPerNode;

    public LayerPlacement? Layer(int layer)
    {
        foreach (var l in Layers) if (l.Layer == layer) return l;
        return null;
    }

    /// <summary>A short name for tables: contiguous, balanced, balanced+grouped, with +R for replicas.</summary>
    public string Label => (Method == PlacementMethod.Contiguous ? "contiguous" : GroupAware ? "balanced, group-aware" : "balanced")
        + (Redundant > 0 ? $", +{Redundant} redundant" : "");
}
