using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace Converter.Numerics;

/// <summary>One vectorised pass over a tile for what the per-tile wire formats need.</summary>
internal static class TileStats
{
    /// <summary>
    /// amax, min nonzero |x| and the first non-finite index (-1 if none) of a tile.
    /// </summary>
    public static int Scan(ReadOnlySpan<float> x, out float amax, out float amin)
    {
        float mx = 0f, mn = float.PositiveInfinity;
        int i = 0;
        if (Vector256.IsHardwareAccelerated && x.Length >= 8)
        {
            var vmx = Vector256<float>.Zero;
            var vmn = Vector256.Create(float.PositiveInfinity);
            var bad = Vector256<int>.Zero;
            var inf = Vector256.Create(0x7F800000);
            ref float r0 = ref MemoryMarshal.GetReference(x);
            for (; i <= x.Length - 8; i += 8)
            {
                var v = Vector256.Abs(Vector256.LoadUnsafe(ref r0, (nuint)i));
                bad |= Vector256.GreaterThanOrEqual(v.AsInt32(), inf);
                vmx = Vector256.Max(vmx, v);
                var nz = Vector256.ConditionalSelect(Vector256.Equals(v, Vector256<float>.Zero), Vector256.Create(float.PositiveInfinity), v);
                vmn = Vector256.Min(vmn, nz);
            }
            if (bad != Vector256<int>.Zero) { amax = amin = 0; return FirstNonFinite(x); }
            for (int l = 0; l < 8; l++) { mx = Math.Max(mx, vmx[l]); mn = Math.Min(mn, vmn[l]); }
        }
        for (; i < x.Length; i++)
        {
            float a = Math.Abs(x[i]);
            if (!float.IsFinite(a)) { amax = amin = 0; return i; }
            if (a > mx) mx = a;
            if (a != 0f && a < mn) mn = a;
        }
        amax = mx;
        amin = mn;
        return -1;
    }

    private static int FirstNonFinite(ReadOnlySpan<float> x)
    {
        for (int i = 0; i < x.Length; i++) if (!float.IsFinite(x[i])) return i;
        return -1;
    }
}
