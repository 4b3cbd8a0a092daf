using Converter.Numerics.ActivationFormats;

namespace Converter.Sharding;

/// <summary>
/// The activation formats the load report prices expert-parallel dispatch and combine traffic in; bytes per token come
/// from <see cref="ActivationQuantizer.WireBytesPerToken"/> (packed codes plus per-1x128-tile metadata).
/// </summary>
public static class WireFormats
{
    public sealed record Format(ActivationFormat Activation)
    {
        public string Name => Activation.ToString();
        public long BytesPerToken(int hiddenSize) => ActivationQuantizer.WireBytesPerToken(Activation, hiddenSize);
    }

    public static IReadOnlyList<Format> All { get; } =
    [
        new(ActivationFormat.Bf16),
        new(ActivationFormat.E4M3),
        new(ActivationFormat.E5M2),
        new(ActivationFormat.LogFmt(8)),
        new(ActivationFormat.LogFmt(10)),
    ];
}
