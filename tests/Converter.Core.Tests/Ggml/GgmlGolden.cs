using System.Runtime.InteropServices;

namespace Converter.Core.Tests.Ggml;

/// <summary>golden/vectors/ggml: ggml reference quantizer outputs for 16 rows x 1024 float32.</summary>
internal static class GgmlGolden
{
    public const int Rows = 16, Cols = 1024;

    public static string Dir
    {
        get
        {
            var dir = new DirectoryInfo(AppContext.BaseDirectory);
            while (dir != null && !File.Exists(Path.Combine(dir.FullName, "Converter.sln"))) dir = dir.Parent;
            if (dir == null) throw new DirectoryNotFoundException("no Converter.sln above " + AppContext.BaseDirectory);
            return Path.Combine(dir.FullName, "golden", "vectors", "ggml");
        }
    }

    public static float[] Floats(string file) => MemoryMarshal.Cast<byte, float>(File.ReadAllBytes(Path.Combine(Dir, file))).ToArray();

    public static byte[] Bytes(string file) => File.ReadAllBytes(Path.Combine(Dir, file));

    /// <summary>Index of the first differing element, or -1.</summary>
    public static int FirstDifference<T>(ReadOnlySpan<T> a, ReadOnlySpan<T> b) where T : IEquatable<T>
    {
        if (a.Length != b.Length) return Math.Min(a.Length, b.Length);
        for (int i = 0; i < a.Length; i++) if (!a[i].Equals(b[i])) return i;
        return -1;
    }
}
