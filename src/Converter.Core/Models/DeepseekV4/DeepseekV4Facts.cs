namespace Converter.Models.DeepseekV4;

/// <summary>What <c>inspect</c> prints about a DeepSeek-V4 config: attention, layer kinds, rope, routing,
/// hyper-connections and the KV cache per token for each layer kind.</summary>
public static class DeepseekV4Facts
{
    /// <summary>Bytes per cached value in the estimate (BF16, what transformers' cache holds for this model).</summary>
    public const int CacheBytesPerValue = 2;

    public static IReadOnlyList<ArchitectureFact> Build(DeepseekV4Config c)
    {
        int n = c.NumHiddenLayers;
        var layers = Enumerable.Range(0, n).ToArray();
        string Layers(IEnumerable<int> ls) => $"[{string.Join(", ", ls)}]";
        var kinds = layers.GroupBy(l => c.AttentionOf(l)).OrderBy(g => g.Key.Kind).ThenBy(g => g.Key.Ratio)
            .Select(g => $"{g.Key} {Layers(g)}");
        var hash = layers.Where(c.IsHashLayer).ToArray();
        var learned = layers.Where(l => !c.IsHashLayer(l)).ToArray();
        var facts = new List<ArchitectureFact>
        {
            new("attention", $"MQA: {c.NumAttentionHeads} query heads of {c.HeadDim} sharing one K=V head, q_lora {c.QLoraRank}, " +
                $"rope on the last {c.QkRopeHeadDim} dims (interleaved pairs), sinks, grouped output {c.OGroups} x {c.OLoraRank}, sliding window {c.SlidingWindow}"),
            new("layer kinds", string.Join("; ", kinds) +
                (c.Attention.Any(a => a.Kind == V4AttentionKind.Csa) ? $"; CSA indexer {c.IndexNHeads} heads x {c.IndexHeadDim}, top-{c.IndexTopk}" : "")),
            new("rope", $"sliding layers theta {c.RopeTheta}; compressed layers theta {c.CompressRopeTheta}" +
                (c.CompressYarn is { } y ? $", YaRN factor {y.Factor} (original {y.OriginalMaxPositionEmbeddings}, beta {y.BetaFast}/{y.BetaSlow}, no mscale)" : "")),
            new("routing", $"{c.ScoringFunc} top-{c.NumExpertsPerTok} of {c.NRoutedExperts}" + (c.NormTopkProb ? ", renormalised" : "") +
                $", x{c.RoutedScalingFactor}; hash-routed (tid2eid) layers {Layers(hash)}, learned (score + bias) layers {Layers(learned)}; " +
                $"{c.NSharedExperts} shared expert(s); swiglu limit {c.SwigluLimit}"),
            new("hyper-conn", $"{c.HcMult} streams, {c.HcSinkhornIters} Sinkhorn iterations, eps {c.HcEps}"),
        };
        // KV cache: every layer keeps its sliding window of single-head K=V entries; compressed layers add one entry of
        // head_dim per `ratio` tokens, CSA layers also the indexer's compressed keys (index_head_dim per `ratio` tokens).
        double perTokenTotal = 0;
        long windowTotal = 0;
        foreach (var g in layers.GroupBy(l => c.AttentionOf(l)).OrderBy(g => g.Key.Kind).ThenBy(g => g.Key.Ratio))
        {
            var a = g.Key;
            double values = a.Kind switch
            {
                V4AttentionKind.Sliding => 0,
                V4AttentionKind.Csa => (double)(c.HeadDim + c.IndexHeadDim) / a.Ratio,
                _ => (double)c.HeadDim / a.Ratio,
            };
            long window = (long)c.SlidingWindow * c.HeadDim * CacheBytesPerValue;
            perTokenTotal += values * CacheBytesPerValue * g.Count();
            windowTotal += window * g.Count();
            string what = a.Kind switch
            {
                V4AttentionKind.Sliding => "the window only",
                V4AttentionKind.Csa => $"{c.HeadDim}/{a.Ratio} compressed KV + {c.IndexHeadDim}/{a.Ratio} indexer key values",
                _ => $"{c.HeadDim}/{a.Ratio} compressed KV values",
            };
            facts.Add(new($"kv {a}", $"{values * CacheBytesPerValue:0.###} bytes per token per layer ({what}, bf16) + a fixed window of {window:N0} bytes; {g.Count()} layer(s)"));
        }
        facts.Add(new("kv cache", $"{perTokenTotal:0.###} bytes per token over {n} layers (bf16), plus {windowTotal:N0} bytes of sliding windows"));
        return facts;
    }
}
