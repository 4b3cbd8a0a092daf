namespace Converter.Verification;

/// <summary>One limit checked against one metric. <see cref="Actual"/> is null when the metric does not apply.</summary>
/// <param name="Metric">The report key (snake_case), e.g. <c>kl_mean</c>.</param>
/// <param name="Comparison">"&lt;=" (upper bound) or "&gt;=" (lower bound).</param>
/// <param name="Excess">How far past the limit the value is (positive when failed), NaN when the value is NaN.</param>
/// <param name="Note">Why a check was skipped or could not be evaluated, else null.</param>
public sealed record LimitCheck(string Metric, string Comparison, double Limit, double? Actual, bool Passed, double Excess, string? Note)
{
    public bool Skipped => Actual is null;
}

/// <summary>One position's comparison, used to list the worst unstable positions.</summary>
public sealed record PositionDiff(int Batch, int Position, double MinRoutingMargin, double MaxAbsLogitDiff, double Kl,
    bool Top1Match, int GoldenTop1, int ArtifactTop1)
{
    /// <summary>Smallest sparse-attention selection margin at the position (+inf without selection data).</summary>
    public double MinSelectionMargin { get; init; } = double.PositiveInfinity;
}

/// <summary>
/// Positions whose routing is a near-tie (margin below the threshold). They may legitimately route differently,
/// so they are left out of the *_stable metrics, but they are always counted and shown here.
/// </summary>
public sealed record UnstableSummary(int Count, double MaxAbsLogitDiff, double MeanAbsLogitDiff, double Top1Agreement, double KlMax,
    double? RoutingAgreement, IReadOnlyList<PositionDiff> Worst)
{
    /// <summary>Selection agreement over the unstable positions (null without selection data).</summary>
    public double? SelectionAgreement { get; init; }
}

/// <summary>One hidden state of sequence 0 against the golden.</summary>
/// <param name="RelativeError">||artifact - golden||_2 / ||golden||_2 over the whole [seq, hidden] slice.</param>
/// <param name="MaxAbsDiffStable">Max abs diff over positions of sequence 0 that are routing-stable.</param>
public sealed record LayerDiff(int Index, string Name, double MaxAbsDiff, double RelativeError, double MaxAbsDiffStable);

/// <summary>Per-layer hidden-state diagnostics; names the first layer whose relative error exceeds the threshold.</summary>
public sealed record LayerReport(double Threshold, int? FirstDivergentIndex, string? FirstDivergentName, IReadOnlyList<LayerDiff> Layers);

/// <summary>
/// How a compact golden's KL was computed: the top-<paramref name="K"/> entries exactly (their part,
/// <paramref name="KlMeanLowerBound"/>, is a lower bound of the true kl_mean since every omitted term is >= 0) and the
/// tail (mean probability <paramref name="TailMassMean"/>) from <paramref name="M"/> samples per position, without bias,
/// with standard error <paramref name="KlMeanStdErr"/> on kl_mean. Logit differences are over the stored entries.
/// </summary>
public sealed record CompactSummary(int K, int M, double TailMassMean, double KlMeanLowerBound, double KlMeanStdErr);

/// <summary>
/// The outcome of comparing an artifact with a golden set. The first block holds the report's fixed keys (their
/// JSON names are the snake_case forms, see <see cref="VerificationReportWriter"/>); the rest is detail.
/// </summary>
public sealed record VerificationReport
{
    public required int Positions { get; init; }
    public required int StablePositions { get; init; }
    public required double MaxAbsLogitDiff { get; init; }
    public required double MaxAbsLogitDiffStable { get; init; }
    public required double MeanAbsLogitDiff { get; init; }
    public required double Top1Agreement { get; init; }
    public required double Top1AgreementStable { get; init; }
    public required double KlMean { get; init; }
    public required double KlP99 { get; init; }
    public required double KlMax { get; init; }
    public required double NllMean { get; init; }
    public required double GoldenNllMean { get; init; }
    public required double PplRatio { get; init; }
    /// <summary>Null when the artifact or the golden has no routing data.</summary>
    public required double? RoutingAgreement { get; init; }
    /// <summary>Share of stable (selecting layer, position) pairs whose selected entries equal the golden's (the lightning
    /// indexer's picks, as sets of attendable entries); null when the artifact or the golden has no selection data.</summary>
    public double? SelectionAgreement { get; init; }
    /// <summary>The golden has selection data (positions are stable only where its selection margins allow).</summary>
    public bool GoldenHasSelections { get; init; }
    public required bool Passed { get; init; }

    public required UnstableSummary Unstable { get; init; }
    /// <summary>Every limit that was set, in a fixed order, passed or not.</summary>
    public required IReadOnlyList<LimitCheck> Checks { get; init; }
    /// <summary>Artifact logits that are NaN or infinite; any makes the report fail whatever the limits.</summary>
    public required long NonFiniteLogits { get; init; }
    public required string Preset { get; init; }
    public required string Golden { get; init; }
    public string? Artifact { get; init; }
    public LayerReport? Layers { get; init; }
    /// <summary>Null for a golden with full logits.</summary>
    public CompactSummary? Compact { get; init; }
    /// <summary>True when the preset sets no limit: the report is REPORTED, never PASSED (exit code 0 all the same).</summary>
    public bool ReportOnly { get; init; }
    /// <summary>Why the preset was chosen (artifact metadata, flag), for the report.</summary>
    public string? PresetReason { get; init; }

    public IEnumerable<LimitCheck> Failures => Checks.Where(c => !c.Passed);

    /// <summary>"passed", "failed", or "reported" (a preset without limits: nothing was judged).</summary>
    public string Status => ReportOnly ? "reported" : Passed ? "passed" : "failed";
}
