using System.Runtime.InteropServices;

namespace Converter.Core.Tests.Numerics.LogFmt;

/// <summary>Locates golden/vectors/logfmt by walking up to the folder holding Converter.sln.</summary>
internal static class LogFmtTestData
{
    public static readonly string[] Cases =
        ["gaussian", "heavy_tail", "with_zeros", "tiny_and_huge", "constant", "all_zero", "short_tail", "activation_like"];

    public static string Dir { get; } = FindDir();

    private static string FindDir()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d != null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, "Converter.sln")))
                return Path.Combine(d.FullName, "golden", "vectors", "logfmt");
        throw new DirectoryNotFoundException("Converter.sln not found above " + AppContext.BaseDirectory);
    }

    public static T[] Read<T>(string file) where T : unmanaged
        => MemoryMarshal.Cast<byte, T>(File.ReadAllBytes(Path.Combine(Dir, file))).ToArray();

    public static byte[] ReadBytes(string file) => File.ReadAllBytes(Path.Combine(Dir, file));
}
