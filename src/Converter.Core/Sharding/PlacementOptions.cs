namespace Converter.Sharding;

/// <summary>
/// How to place experts: <paramref name="Ranks"/> in nodes of <paramref name="RanksPerNode"/> (0: all on one node),
/// the method, <paramref name="Redundant"/> extra replicas per layer, and whether balanced placement keeps each
/// expert group on one node when there are several nodes and groups (on by default).
/// </summary>
public sealed record PlacementOptions(int Ranks, int RanksPerNode = 0, PlacementMethod Method = PlacementMethod.Contiguous,
    int Redundant = 0, bool GroupAware = true)
{
    public int EffectiveRanksPerNode => RanksPerNode <= 0 ? Ranks : RanksPerNode;
}
