using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Converter.Numerics.LogFmt;

/// <summary>
/// Per-tile encode/decode. The AVX2 path evaluates levels with its own float64 2^x and takes the
/// result only when it provably rounds to the same float32 as the spec's libm pow (the dropped 29 bits
/// are far from the half-way pattern); every doubtful lane, and every lane whose candidate bracket from
/// the approximate log2 turns out wrong, is redone by the exact scalar <see cref="LogFmtTile.Nearest"/>.
/// So the vector path is bit-identical to the scalar definition, only faster.
/// </summary>
internal static class LogFmtKernels
{
    /// <summary>Smallest normal float32: tiles whose levels reach below it go scalar (subnormal rounding).</summary>
    private const float MinNormal = 1.17549435e-38f;
    /// <summary>Distance (in float64 ulps) from the float32 rounding midpoint under which a lane is redone exactly.</summary>
    private const long RoundingMargin = 1L << 14;
    private const double InvLn2 = 1.4426950408889634;

    /// <summary>Taylor coefficients of 2^f = e^(f ln 2), degree 12: truncation error below 2^-52 for |f| ≤ 1/2.</summary>
    private static readonly double[] Exp2Coeffs = BuildExp2Coeffs();

    private static double[] BuildExp2Coeffs()
    {
        var c = new double[13];
        double term = 1, ln2 = Math.Log(2.0);
        for (int n = 0; n < c.Length; n++) { c[n] = term; term = term * ln2 / (n + 1); }
        return c;
    }

    public static bool VectorPathAvailable => Avx2.IsSupported;

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
            ref float r0 = ref System.Runtime.InteropServices.MemoryMarshal.GetReference(x);
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

    /// <summary>
    /// Encodes one tile: fills codes and/or the dequantized values (either may be empty) and returns the
    /// metadata. Returns the index of the first non-finite element, or -1.
    /// </summary>
    public static int EncodeTile(ReadOnlySpan<float> x, int bits, Span<ushort> codes, Span<float> y, out float aminEff, out float amax)
    {
        int bad = Scan(x, out amax, out float amin);
        if (bad >= 0) { aminEff = 0; return bad; }
        if (amax == 0f)
        {
            aminEff = 0f;
            codes.Clear();
            y.Clear();
            return -1;
        }
        aminEff = LogFmtTile.EffectiveAmin(amin, amax);
        var tile = new LogFmtTile(aminEff, amax, bits);
        int done = 0;
        if (Avx2.IsSupported && !tile.IsFlat && aminEff >= MinNormal && tile.Step >= LogFmtTile.MinDistinctStep)
            done = EncodeAvx2(x, bits, in tile, codes, y);
        ushort signBit = (ushort)(1 << (bits - 1));
        for (int i = done; i < x.Length; i++)
        {
            float v = x[i];
            int k = tile.Nearest(Math.Abs(v));
            bool neg = k != 0 && v < 0f;
            if (!codes.IsEmpty) codes[i] = (ushort)(k | (neg ? signBit : 0));
            if (!y.IsEmpty) { float m = tile.Level(k); y[i] = neg ? -m : m; }
        }
        return -1;
    }

    /// <summary>Decodes one tile from its codes and metadata.</summary>
    public static void DecodeTile(ReadOnlySpan<ushort> codes, in LogFmtTile tile, int bits, Span<float> y)
    {
        int magMask = (1 << (bits - 1)) - 1;
        int i = 0;
        if (tile.IsZero)
        {
            y.Clear();
            return;
        }
        if (Avx2.IsSupported && !tile.IsFlat && tile.AminEff >= MinNormal)
            i = DecodeAvx2(codes, bits, in tile, y);
        for (; i < codes.Length; i++)
        {
            int c = codes[i];
            float m = tile.Level(c & magMask);
            y[i] = (c >> (bits - 1)) != 0 ? -m : m;
        }
    }

    private static unsafe int EncodeAvx2(ReadOnlySpan<float> x, int bits, in LogFmtTile tile, Span<ushort> codes, Span<float> y)
    {
        int n4 = x.Length & ~3;
        if (n4 == 0) return 0;
        var lmin = Vector256.Create(tile.Lmin);
        var step = Vector256.Create(tile.Step);
        var invStep = Vector256.Create(1.0 / tile.Step);
        var kTopLo = Vector256.Create((double)(tile.K - 1));
        var one = Vector256.Create(1.0);
        var zero = Vector256<double>.Zero;
        var expMask = Vector128.Create(0x7F800000);
        var mantMask = Vector128.Create(0x007FFFFF);
        var oneBits = Vector128.Create(0x3F800000);
        var sqrt2 = Vector256.Create(1.4142135623730951);
        var half = Vector256.Create(0.5);
        int signShift = bits - 1;
        bool wantCodes = !codes.IsEmpty, wantY = !y.IsEmpty;
        Span<double> kTmp = stackalloc double[4];
        Span<double> vTmp = stackalloc double[4];

        fixed (float* px = x)
        fixed (ushort* pc = codes)
        fixed (float* py = y)
        {
            for (int i = 0; i < n4; i += 4)
            {
                var xf = Sse.LoadVector128(px + i);
                var xb = xf.AsInt32();
                var ab = Sse2.And(xb, Vector128.Create(0x7FFFFFFF));
                var a = Avx.ConvertToVector256Double(ab.AsSingle());

                // Approximate log2|x| from exponent and mantissa: only used to pick the bracket.
                var e = Avx.ConvertToVector256Double(Sse2.Subtract(Sse2.ShiftRightLogical(Sse2.And(ab, expMask), 23), Vector128.Create(127)));
                var m = Avx.ConvertToVector256Double(Sse2.Or(Sse2.And(ab, mantMask), oneBits).AsSingle());
                var big = Avx.CompareGreaterThan(m, sqrt2);
                m = Avx.BlendVariable(m, Avx.Multiply(m, half), big);
                e = Avx.Add(e, Avx.And(big, one));
                var s = Avx.Divide(Avx.Subtract(m, one), Avx.Add(m, one));
                var s2 = Avx.Multiply(s, s);
                var poly = MulAdd(s2, Vector256.Create(1.0 / 9), Vector256.Create(1.0 / 7));
                poly = MulAdd(s2, poly, Vector256.Create(1.0 / 5));
                poly = MulAdd(s2, poly, Vector256.Create(1.0 / 3));
                poly = MulAdd(s2, poly, one);
                var log2a = Avx.Add(e, Avx.Multiply(Avx.Multiply(Avx.Add(s, s), poly), Vector256.Create(InvLn2)));

                // Bracket [v_j, v_{j+1}], j = clamp(floor(t) + 1, 0, K-1).
                var t = Avx.Multiply(Avx.Subtract(log2a, lmin), invStep);
                var j = Avx.Add(Avx.Floor(t), one);
                j = Avx.Min(Avx.Max(j, zero), kTopLo);

                // e_j = lmin + (j-1)*step exactly as the spec (separate multiply and add, no FMA).
                var eLo = Avx.Add(lmin, Avx.Multiply(Avx.Subtract(j, one), step));
                var eHi = Avx.Add(lmin, Avx.Multiply(j, step));
                var lo = Exp2Float(eLo, out var unsafeLo);
                var hi = Exp2Float(eHi, out var unsafeHi);
                var jZero = Avx.CompareEqual(j, zero);
                lo = Avx.AndNot(jZero, lo);
                unsafeLo = Avx.AndNot(jZero, unsafeLo);

                // Valid when v_j <= a < v_{j+1} (or j+1 is the top level); then k = j + [2a >= v_j + v_{j+1}].
                var valid = Avx.And(Avx.CompareLessThanOrEqual(lo, a),
                    Avx.Or(Avx.CompareLessThan(a, hi), Avx.CompareEqual(j, kTopLo)));
                var up = Avx.CompareGreaterThanOrEqual(Avx.Add(a, a), Avx.Add(lo, hi));
                var k = Avx.Add(j, Avx.And(up, one));
                var val = Avx.BlendVariable(lo, hi, up);
                int badMask = Avx.MoveMask(Avx.Or(Avx.AndNot(valid, Vector256<double>.AllBitsSet), Avx.Or(unsafeLo, unsafeHi)));

                var ki = Avx.ConvertToVector128Int32WithTruncation(k);
                if (wantCodes)
                {
                    // sign bit only on a nonzero magnitude, so zero always encodes as code 0
                    var sign = Sse2.ShiftRightLogical(xb, 31) << signShift;
                    sign = Sse2.AndNot(Sse2.CompareEqual(ki, Vector128<int>.Zero), sign);
                    var code = Sse2.Or(ki, sign);
                    var packed = Sse41.PackUnsignedSaturate(code, code);
                    Sse2.StoreScalar((long*)(pc + i), packed.AsInt64());
                }
                if (wantY)
                {
                    var vf = Avx.ConvertToVector128Single(val).AsInt32();
                    var signF = Sse2.And(xb, Vector128.Create(unchecked((int)0x80000000)));
                    signF = Sse2.AndNot(Sse2.CompareEqual(ki, Vector128<int>.Zero), signF);
                    Sse.Store(py + i, Sse2.Or(vf, signF).AsSingle());
                }
                if (badMask != 0)
                {
                    for (int l = 0; l < 4; l++)
                    {
                        if ((badMask & (1 << l)) == 0) continue;
                        float v = px[i + l];
                        int kk = tile.Nearest(Math.Abs(v));
                        bool neg = kk != 0 && v < 0f;
                        if (wantCodes) pc[i + l] = (ushort)(kk | (neg ? 1 << signShift : 0));
                        if (wantY) { float mm = tile.Level(kk); py[i + l] = neg ? -mm : mm; }
                    }
                }
            }
        }
        return n4;
    }

    private static unsafe int DecodeAvx2(ReadOnlySpan<ushort> codes, int bits, in LogFmtTile tile, Span<float> y)
    {
        int n4 = codes.Length & ~3;
        var lmin = Vector256.Create(tile.Lmin);
        var step = Vector256.Create(tile.Step);
        var one = Vector256.Create(1.0);
        var magMask = Vector128.Create((1 << (bits - 1)) - 1);
        byte signShift = (byte)(bits - 1);
        fixed (ushort* pc = codes)
        fixed (float* py = y)
        {
            for (int i = 0; i < n4; i += 4)
            {
                var c = Sse41.ConvertToVector128Int32(pc + i);
                var ki = Sse2.And(c, magMask);
                var k = Avx.ConvertToVector256Double(ki);
                var e = Avx.Add(lmin, Avx.Multiply(Avx.Subtract(k, one), step));
                var v = Exp2Float(e, out var unsafeMask);
                var kZero = Avx.CompareEqual(k, Vector256<double>.Zero);
                v = Avx.AndNot(kZero, v);
                unsafeMask = Avx.AndNot(kZero, unsafeMask);
                var sign = Vector128.ShiftRightLogical(c, signShift) << 31;
                Sse.Store(py + i, Sse2.Or(Avx.ConvertToVector128Single(v).AsInt32(), sign).AsSingle());
                int bad = Avx.MoveMask(unsafeMask);
                if (bad != 0)
                {
                    for (int l = 0; l < 4; l++)
                    {
                        if ((bad & (1 << l)) == 0) continue;
                        int cc = pc[i + l];
                        float m = tile.Level(cc & ((1 << (bits - 1)) - 1));
                        py[i + l] = (cc >> signShift) != 0 ? -m : m;
                    }
                }
            }
        }
        return n4;
    }

    /// <summary>
    /// float32(2^e) returned as float64, for results in the normal float32 range, plus a mask of lanes
    /// whose float64 approximation lies too close to a float32 rounding midpoint to be trusted.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<double> Exp2Float(Vector256<double> e, out Vector256<double> unsafeMask)
    {
        var i = Avx.RoundToNearestInteger(e);
        var f = Avx.Subtract(e, i); // exact, |f| <= 1/2
        var c = Exp2Coeffs;
        var p = Vector256.Create(c[12]);
        for (int n = 11; n >= 0; n--) p = MulAdd(p, f, Vector256.Create(c[n]));
        var il = Avx2.ConvertToVector256Int64(Avx.ConvertToVector128Int32(i));
        var scale = Avx2.ShiftLeftLogical(Avx2.Add(il, Vector256.Create(1023L)), 52).AsDouble();
        var r = Avx.Multiply(p, scale);
        var low = Avx2.Subtract(Avx2.And(r.AsInt64(), Vector256.Create((1L << 29) - 1)), Vector256.Create(1L << 28));
        var near = Avx2.And(Avx2.CompareGreaterThan(Vector256.Create(RoundingMargin), low),
                            Avx2.CompareGreaterThan(low, Vector256.Create(-RoundingMargin)));
        unsafeMask = near.AsDouble();
        return Avx.ConvertToVector256Double(Avx.ConvertToVector128Single(r));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<double> MulAdd(Vector256<double> a, Vector256<double> b, Vector256<double> c)
        => Fma.IsSupported ? Fma.MultiplyAdd(a, b, c) : Avx.Add(Avx.Multiply(a, b), c);
}
