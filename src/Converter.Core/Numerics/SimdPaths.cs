using System.Runtime.Intrinsics;

namespace Converter.Numerics;

/// <summary>
/// Which vector widths the numeric kernels may use. Every width must give identical bits; tests lower
/// <see cref="MaxBits"/> to run the narrower paths on a machine that has the wider ones.
/// </summary>
internal static class SimdPaths
{
    /// <summary>512, 256, 128, or 0 for scalar only.</summary>
    internal static int MaxBits = 512;

    internal static bool Use512 => Vector512.IsHardwareAccelerated && MaxBits >= 512;
    internal static bool Use256 => Vector256.IsHardwareAccelerated && MaxBits >= 256;
    internal static bool Use128 => Vector128.IsHardwareAccelerated && MaxBits >= 128;
}
