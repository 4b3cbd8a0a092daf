namespace Converter.Verification;

/// <summary>Runs an artifact on a golden set's tokens and compares what it computed with the golden.</summary>
public static class ArtifactVerifier
{
    /// <param name="layers">Ask the runner for sequence 0's hidden states and add layer diagnostics.</param>
    public static VerificationReport Verify(IArtifactRunner runner, GoldenSet golden, VerificationTolerances tolerances, bool layers)
    {
        bool wantHidden = layers && (golden.HiddenStates != null || golden.ResidualStates != null);
        var outputs = runner.Run(golden.Tokens, golden.Batch, golden.Seq, wantHidden, golden.HasRouting || golden.HasSelections);
        if (!wantHidden && (outputs.HiddenStates != null || outputs.ResidualStates != null)) outputs = outputs with { HiddenStates = null, ResidualStates = null };
        return GoldenComparer.Compare(golden, outputs, tolerances, runner.Description);
    }
}
