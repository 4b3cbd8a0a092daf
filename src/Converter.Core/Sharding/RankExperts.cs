namespace Converter.Sharding;

/// <summary>
/// What one rank computes of an MoE layer: the logical expert in each of its local slots and the share of that
/// expert's routing weight the slot carries. A rank's routed partial is sum over slots s of
/// w[expert(s)] * share(s) * expert(s)(x); since each expert's replica shares sum to 1, the ranks' partials sum to
/// the layer's routed output.
/// </summary>
public static class RankExperts
{
    /// <summary>The local slots of <paramref name="rank"/> in <paramref name="layer"/>: logical expert and share per slot.</summary>
    public static (int[] Experts, double[] Shares) Slots(LayerPlacement layer, int rank)
    {
        if ((uint)rank >= (uint)layer.RankSlots.Length)
            throw new ArgumentOutOfRangeException(nameof(rank), $"layer {layer.Layer}: rank {rank} of {layer.RankSlots.Length}");
        var experts = layer.RankSlots[rank];
        var shares = new double[experts.Length];
        for (int s = 0; s < experts.Length; s++)
        {
            var replica = Array.Find(layer.Replicas[experts[s]], r => r.Rank == rank && r.Slot == s)
                ?? throw new InvalidDataException($"layer {layer.Layer}: rank {rank} slot {s} lists expert {experts[s]}, which has no replica there");
            shares[s] = replica.Share;
        }
        return (experts, shares);
    }

    /// <summary>
    /// Scalar reference of a rank graph's slot weights: local[t, s] = dense[t, experts[s]] * shares[s] for
    /// <paramref name="dense"/> [tokens, routedExperts] (zero for unselected experts) and local [tokens, S].
    /// </summary>
    public static void LocalWeights(ReadOnlySpan<float> dense, int routedExperts, ReadOnlySpan<int> experts, ReadOnlySpan<float> shares, Span<float> local)
    {
        int tokens = dense.Length / routedExperts, slots = experts.Length;
        if (local.Length != tokens * slots) throw new ArgumentException($"local has {local.Length} values, expected {tokens} x {slots}");
        for (int t = 0; t < tokens; t++)
            for (int s = 0; s < slots; s++)
                local[t * slots + s] = dense[t * routedExperts + experts[s]] * shares[s];
    }
}
