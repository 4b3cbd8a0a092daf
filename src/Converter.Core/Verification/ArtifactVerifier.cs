namespace Converter.Verification;

/// <summary>Runs an artifact on a golden set's tokens and compares what it computed with the golden.</summary>
public static class ArtifactVerifier
{
    /// <param name="layers">Ask the runner for sequence 0's hidden states and add layer diagnostics.</param>
    public static VerificationReport Verify(IArtifactRunner runner, GoldenSet golden, VerificationTolerances tolerances, bool layers)
        => Verify(runner, golden, tolerances, layers, 0, null);

    /// <summary>
    /// As above, running <paramref name="chunkSequences"/> sequences per call (0: all at once) and reporting
    /// (sequences done, total) after each call.
    /// </summary>
    public static VerificationReport Verify(IArtifactRunner runner, GoldenSet golden, VerificationTolerances tolerances, bool layers,
        int chunkSequences, IProgress<(int Done, int Total)>? progress)
    {
        bool wantHidden = layers && (golden.HiddenStates != null || golden.ResidualStates != null);
        // Residual streams and sparse-attention selections come whole from one call (their goldens are small).
        if (golden.ResidualStates != null || golden.HasSelections) chunkSequences = 0;
        var outputs = Run(runner, golden.Tokens, golden.Batch, golden.Seq, wantHidden, golden.HasRouting || golden.HasSelections, chunkSequences, progress);
        if (!wantHidden && (outputs.HiddenStates != null || outputs.ResidualStates != null)) outputs = outputs with { HiddenStates = null, ResidualStates = null };
        return GoldenComparer.Compare(golden, outputs, tolerances, runner.Description);
    }

    /// <summary>Runs the sequences chunk by chunk and joins the outputs (hidden states come from the chunk holding sequence 0).</summary>
    public static ArtifactOutputs Run(IArtifactRunner runner, int[] tokens, int batch, int seq, bool hiddenStates, bool routing,
        int chunkSequences, IProgress<(int Done, int Total)>? progress)
    {
        if (chunkSequences <= 0 || chunkSequences >= batch)
        {
            var all = runner.Run(tokens, batch, seq, hiddenStates, routing);
            progress?.Report((batch, batch));
            return all;
        }
        var logits = new List<float[]>();
        float[][]? hidden = null;
        List<int[]>[]? route = null;
        bool routeMissing = false;
        for (int b0 = 0; b0 < batch; b0 += chunkSequences)
        {
            int nb = Math.Min(chunkSequences, batch - b0);
            var o = runner.Run(tokens[(b0 * seq)..((b0 + nb) * seq)], nb, seq, hiddenStates && b0 == 0, routing);
            logits.Add(o.Logits);
            if (b0 == 0) hidden = o.HiddenStates;
            if (o.RoutingTopK == null) routeMissing = true;
            else
            {
                route ??= o.RoutingTopK.Select(_ => new List<int[]>()).ToArray();
                if (route.Length != o.RoutingTopK.Length)
                    throw new InvalidDataException($"the artifact returned routing for {o.RoutingTopK.Length} MoE layers, then {route.Length}");
                for (int m = 0; m < route.Length; m++) route[m].Add(o.RoutingTopK[m]);
            }
            progress?.Report((b0 + nb, batch));
        }
        var joined = new float[logits.Sum(l => (long)l.Length)];
        long at = 0;
        foreach (var l in logits)
        {
            l.CopyTo(joined, at);
            at += l.Length;
        }
        int[][]? routes = route == null || routeMissing ? null : route.Select(parts => parts.SelectMany(p => p).ToArray()).ToArray();
        return new ArtifactOutputs(joined, hidden, routes);
    }
}
