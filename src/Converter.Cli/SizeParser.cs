using System.Globalization;

namespace Converter.Cli;

/// <summary>Parses sizes like "5GB", "500MB", "2GiB" or plain bytes (Hugging Face's --max-shard-size spelling), and "50G", "300M" (llama-gguf-split's, decimal).</summary>
public static class SizeParser
{
    public static long Parse(string text)
    {
        var t = text.Trim().ToUpperInvariant();
        (string Suffix, long Factor)[] units =
        [
            ("GIB", 1L << 30), ("MIB", 1L << 20), ("KIB", 1L << 10),
            ("GB", 1_000_000_000), ("MB", 1_000_000), ("KB", 1_000),
            ("G", 1_000_000_000), ("M", 1_000_000), ("K", 1_000), ("B", 1), // G/M/K: llama-gguf-split's --split-max-size spelling
        ];
        foreach (var (suffix, factor) in units)
            if (t.EndsWith(suffix, StringComparison.Ordinal) &&
                double.TryParse(t[..^suffix.Length], NumberStyles.Float, CultureInfo.InvariantCulture, out var v) && v > 0)
                return (long)(v * factor);
        if (long.TryParse(t, NumberStyles.Integer, CultureInfo.InvariantCulture, out var bytes) && bytes > 0) return bytes;
        throw new ArgumentException($"'{text}' is not a size (examples: 50G, 300M, 5GB, 2GiB, 1048576)");
    }
}
