using Converter.Numerics.LogFmt;

namespace Converter.Numerics.ActivationFormats;

public enum ActivationFormatKind { Bf16, E4M3, E5M2, LogFmt }

/// <summary>A wire format for activations (expert-parallel dispatch/combine traffic). Bits is the code width.</summary>
public readonly record struct ActivationFormat(ActivationFormatKind Kind, int Bits)
{
    public static ActivationFormat Bf16 => new(ActivationFormatKind.Bf16, 16);
    /// <summary>e4m3fn codes, one float32 scale max(amax, 1e-4)/448 per 1x128 tile.</summary>
    public static ActivationFormat E4M3 => new(ActivationFormatKind.E4M3, 8);
    /// <summary>e5m2 codes, one float32 scale max(amax, 1e-4)/57344 per 1x128 tile.</summary>
    public static ActivationFormat E5M2 => new(ActivationFormatKind.E5M2, 8);

    /// <summary>LogFMT-nBit, n in 4..16, float32 (amin_eff, amax) per 1x128 tile.</summary>
    public static ActivationFormat LogFmt(int bits)
    {
        LogFmtCodec.CheckBits(bits);
        return new(ActivationFormatKind.LogFmt, bits);
    }

    public override string ToString() => Kind switch
    {
        ActivationFormatKind.Bf16 => "BF16",
        ActivationFormatKind.E4M3 => "E4M3",
        ActivationFormatKind.E5M2 => "E5M2",
        ActivationFormatKind.LogFmt => $"LogFMT-{Bits}",
        _ => Kind.ToString(),
    };
}
