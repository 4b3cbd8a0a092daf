using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace Converter.Numerics;

/// <summary>
/// Which vector widths the numeric kernels may use. Every width must give identical bits; tests set
/// <see cref="MaxBits"/> to run the narrower paths on a machine that has the wider ones.
/// </summary>
internal static class SimdPaths
{
    /// <summary>0: no limit (default; no initializer, so no static constructor check in hot code);
    /// otherwise 512, 256, 128, or 1 for scalar only.</summary>
    internal static int MaxBits;

    internal static bool Use512
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => Vector512.IsHardwareAccelerated && (MaxBits == 0 || MaxBits >= 512);
    }

    internal static bool Use256
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => Vector256.IsHardwareAccelerated && (MaxBits == 0 || MaxBits >= 256);
    }

    internal static bool Use128
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => Vector128.IsHardwareAccelerated && (MaxBits == 0 || MaxBits >= 128);
    }
}
