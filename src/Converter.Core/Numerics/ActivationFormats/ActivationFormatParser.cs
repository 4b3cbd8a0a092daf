using System.Globalization;

namespace Converter.Numerics.ActivationFormats;

/// <summary>Command-line names of activation formats: bf16, e4m3, e5m2, logfmt&lt;n&gt; (n in 4..16).</summary>
public static class ActivationFormatParser
{
    public static ActivationFormat Parse(string text)
    {
        var t = text.Trim().ToLowerInvariant();
        switch (t)
        {
            case "bf16": return ActivationFormat.Bf16;
            case "e4m3": return ActivationFormat.E4M3;
            case "e5m2": return ActivationFormat.E5M2;
        }
        if (t.StartsWith("logfmt", StringComparison.Ordinal)
            && int.TryParse(t.AsSpan(6).TrimStart('-'), NumberStyles.None, CultureInfo.InvariantCulture, out int n)
            && n >= LogFmt.LogFmtCodec.MinBits && n <= LogFmt.LogFmtCodec.MaxBits)
            return ActivationFormat.LogFmt(n);
        throw new ArgumentException($"unknown activation format '{text}': expected bf16, e4m3, e5m2 or logfmt<n> with n in 4..16");
    }

    /// <summary>The command-line name of a format (inverse of <see cref="Parse"/>).</summary>
    public static string Name(ActivationFormat f) => f.Kind switch
    {
        ActivationFormatKind.Bf16 => "bf16",
        ActivationFormatKind.E4M3 => "e4m3",
        ActivationFormatKind.E5M2 => "e5m2",
        _ => $"logfmt{f.Bits}",
    };
}
