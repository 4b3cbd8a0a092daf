namespace Converter.Verification;

/// <summary>
/// Limits a verification must meet; a null limit is not checked (its metric is still reported). Maxima are
/// upper bounds (<c>&lt;=</c>), the agreement limits are lower bounds (<c>&gt;=</c>). Start from a preset per
/// artifact format (<see cref="ForPreset"/>) and override with <c>with { ... }</c>.
/// </summary>
public sealed record VerificationTolerances
{
    /// <summary>The preset this came from (reported), or "custom".</summary>
    public string Preset { get; init; } = "custom";

    public double? MaxAbsLogitDiff { get; init; }
    public double? MaxAbsLogitDiffStable { get; init; }
    public double? MeanAbsLogitDiff { get; init; }
    /// <summary>Lower bound on the share of positions whose argmax matches the golden's.</summary>
    public double? Top1Agreement { get; init; }
    public double? Top1AgreementStable { get; init; }
    public double? KlMean { get; init; }
    public double? KlP99 { get; init; }
    public double? KlMax { get; init; }
    /// <summary>Upper bound on exp(nll_mean - golden_nll_mean); one-sided, an artifact may be better.</summary>
    public double? PplRatio { get; init; }
    /// <summary>Lower bound on routing agreement; not applicable (skipped, reported) when either side has no routing.</summary>
    public double? RoutingAgreement { get; init; }

    /// <summary>Lower bound on the agreement of sparse-attention selections (the lightning indexer's picks) over stable
    /// positions; checked only where the golden has selection data.</summary>
    public double? SelectionAgreement { get; init; }

    /// <summary>A position is stable when its smallest routing margin over MoE layers is at least this.</summary>
    public double StableMarginThreshold { get; init; } = 1e-4;
    /// <summary>... and its smallest selection margin (k-th minus (k+1)-th indexer score) over selecting layers at least this.</summary>
    public double SelectionMarginThreshold { get; init; } = 1e-5;
    /// <summary>Relative error (||a-g|| / ||g||) above which a layer's hidden state is named as diverging. Diagnostic only.</summary>
    public double LayerRelativeErrorThreshold { get; init; } = 1e-3;

    public static VerificationTolerances ReportOnly => new() { Preset = "report" };

    /// <summary>Preset names <see cref="ForPreset"/> accepts.</summary>
    public static IReadOnlyList<string> PresetNames { get; } =
    [
        "fp32", "fp8", "gguf-f32", "bf16", "f16", "q8_0",
        "int4", "q6_k", "q5_k", "q5_0", "q5_1", "q4_k", "q4_0", "q4_1", "q3_k", "q2_k", "report",
    ];

    /// <summary>
    /// Limits per artifact format. fp32: ONNX at full precision vs the golden of the same weights; fp8: FP8
    /// weights vs the golden computed from the same dequantized weights; gguf-f32: llama.cpp with F32 weights and
    /// F32 KV cache; bf16/f16/q8_0: distribution-level limits only; lower-bit formats are reported, not judged.
    /// </summary>
    public static VerificationTolerances ForPreset(string name) => name.ToLowerInvariant() switch
    {
        "fp32" or "f32" => new()
        {
            Preset = "fp32", MaxAbsLogitDiffStable = 1e-3, Top1AgreementStable = 1, RoutingAgreement = 1, SelectionAgreement = 1, KlMean = 1e-5,
        },
        "fp8" => new() { Preset = "fp8", MeanAbsLogitDiff = 1e-4, Top1Agreement = 0.998, KlMean = 1e-5 },
        "gguf-f32" => new() { Preset = "gguf-f32", MaxAbsLogitDiff = 1e-3, Top1Agreement = 1 },
        "bf16" or "gguf-bf16" => new() { Preset = "bf16", KlMean = 1e-3 },
        "f16" or "gguf-f16" => new() { Preset = "f16", KlMean = 1e-3 },
        "q8_0" => new() { Preset = "q8_0", KlMean = 5e-3 },
        "int4" or "q6_k" or "q5_k" or "q5_0" or "q5_1" or "q4_k" or "q4_0" or "q4_1" or "q3_k" or "q2_k" or "report"
            => new() { Preset = name.ToLowerInvariant() },
        _ => throw new ArgumentException($"unknown format preset '{name}' (known: {string.Join(", ", PresetNames)})", nameof(name)),
    };
}
