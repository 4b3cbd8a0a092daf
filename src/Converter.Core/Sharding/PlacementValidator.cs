namespace Converter.Sharding;

/// <summary>The invariants every placement must hold, checked after planning and after reading placement.json.</summary>
public static class PlacementValidator
{
    /// <summary>Throws <see cref="InvalidDataException"/> (prefixed with <paramref name="where"/>) at the first broken invariant.</summary>
    public static void Validate(ExpertPlacement p, string where)
    {
        InvalidDataException Bad(string why) => new($"{where}: {why}");
        int e = p.Model.RoutedExperts;
        if (p.Ranks <= 0 || p.RanksPerNode <= 0 || p.Ranks % p.RanksPerNode != 0)
            throw Bad($"ranks_per_node {p.RanksPerNode} does not divide ranks {p.Ranks}");
        if (e % p.Ranks != 0) throw Bad($"{p.Ranks} ranks do not divide {e} experts");
        int groupSize = p.Model.ExpertGroups > 0 && e % p.Model.ExpertGroups == 0 ? e / p.Model.ExpertGroups : e;
        foreach (var l in p.Layers)
        {
            if (l.Replicas.Length != e || l.ExpertLoad.Length != e)
                throw Bad($"layer {l.Layer}: {l.Replicas.Length} experts listed, the model has {e}");
            if (l.RankSlots.Length != p.Ranks) throw Bad($"layer {l.Layer}: {l.RankSlots.Length} ranks listed, expected {p.Ranks}");
            int total = 0;
            for (int x = 0; x < e; x++)
            {
                var reps = l.Replicas[x];
                if (reps.Length == 0) throw Bad($"layer {l.Layer}: expert {x} is on no rank");
                double share = 0;
                var ranks = new HashSet<int>();
                foreach (var r in reps)
                {
                    if ((uint)r.Rank >= (uint)p.Ranks) throw Bad($"layer {l.Layer}: expert {x} placed on rank {r.Rank} of {p.Ranks}");
                    if (!ranks.Add(r.Rank)) throw Bad($"layer {l.Layer}: expert {x} has two replicas on rank {r.Rank}");
                    if ((uint)r.Slot >= (uint)l.RankSlots[r.Rank].Length || l.RankSlots[r.Rank][r.Slot] != x)
                        throw Bad($"layer {l.Layer}: expert {x} claims slot {r.Slot} of rank {r.Rank}, which holds another expert");
                    if (!(r.Share > 0 && r.Share <= 1)) throw Bad($"layer {l.Layer}: expert {x} replica on rank {r.Rank} has share {r.Share}");
                    share += r.Share;
                    if (p.GroupAware && p.NodeOf(r.Rank) != p.NodeOf(reps[0].Rank))
                        throw Bad($"layer {l.Layer}: group-aware placement but expert {x} has replicas on nodes {p.NodeOf(reps[0].Rank)} and {p.NodeOf(r.Rank)}");
                }
                if (Math.Abs(share - 1) > 1e-9) throw Bad($"layer {l.Layer}: shares of expert {x} sum to {share}, not 1");
                if (p.GroupAware && p.NodeOf(reps[0].Rank) != p.NodeOf(l.Replicas[x / groupSize * groupSize][0].Rank))
                    throw Bad($"layer {l.Layer}: group-aware placement but group {x / groupSize} spans several nodes");
                total += reps.Length;
            }
            for (int rank = 0; rank < p.Ranks; rank++)
            {
                if (l.RankSlots[rank].Length < e / p.Ranks)
                    throw Bad($"layer {l.Layer}: rank {rank} holds {l.RankSlots[rank].Length} experts, fewer than {e / p.Ranks} (experts / ranks)");
                foreach (var x in l.RankSlots[rank])
                    if ((uint)x >= (uint)e || Array.FindIndex(l.Replicas[x], r => r.Rank == rank) < 0)
                        throw Bad($"layer {l.Layer}: rank {rank} lists expert {x} that has no replica there");
            }
            if (total != e + p.Redundant) throw Bad($"layer {l.Layer}: {total} expert copies, expected {e} + {p.Redundant}");
        }
    }
}
