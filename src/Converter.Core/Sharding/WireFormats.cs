namespace Converter.Sharding;

/// <summary>
/// Bytes one token's hidden vector takes on the wire in the formats considered for expert-parallel dispatch and
/// combine. Scaled formats carry per-1x128-tile metadata: one float32 scale for E4M3/E5M2 (DeepSeek's activation
/// tiles), the float32 pair (amin, amax) for LogFMT-n (the project's LogFMT spec, codes bit-packed).
/// </summary>
public static class WireFormats
{
    public sealed record Format(string Name, Func<int, long> BytesPerToken);

    private static long Tiles(int hidden) => (hidden + 127) / 128;

    public static IReadOnlyList<Format> All { get; } =
    [
        new("BF16", h => 2L * h),
        new("E4M3", h => h + 4 * Tiles(h)),
        new("E5M2", h => h + 4 * Tiles(h)),
        new("LogFMT-8", h => (8L * h + 7) / 8 + 8 * Tiles(h)),
        new("LogFMT-10", h => (10L * h + 7) / 8 + 8 * Tiles(h)),
    ];
}
