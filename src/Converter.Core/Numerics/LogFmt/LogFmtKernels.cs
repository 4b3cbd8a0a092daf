using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Converter.Numerics.LogFmt;

/// <summary>
/// Per-tile encode/decode. The AVX2 paths are bit-identical to the exact scalar definition
/// (<see cref="LogFmtTile.Nearest"/>, <see cref="LogFmtTile.Level"/>): the encoder decides each level in log2
/// space and hands every lane that lies too close to a level midpoint to the scalar search, and level values
/// come from a float64 2^x that is used only where it provably rounds to the same float32 as libm's pow
/// (the 29 dropped bits far from the half-way pattern); doubtful lanes are recomputed with pow.
/// </summary>
internal static class LogFmtKernels
{
    /// <summary>Smallest normal float32: tiles whose levels reach below it go scalar (subnormal rounding).</summary>
    private const float MinNormal = 1.17549435e-38f;
    /// <summary>Distance (in float64 ulps) from the float32 rounding midpoint under which a lane is redone exactly.</summary>
    private const long RoundingMargin = 1L << 14;
    private const double InvLn2 = 1.4426950408889634;
    /// <summary>
    /// Lanes whose log2|x| lies closer than this to a level midpoint are decided exactly. Covers the float32
    /// rounding of the levels (2^-24/ln2 = 8.6e-8) and the log2 approximation (2e-9) about 2.8 times over.
    /// </summary>
    private const double BoundaryTolLog2 = 2.5e-7;

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
    /// Encodes one tile: fills codes and/or the dequantized values (either may be empty) and returns the
    /// metadata. Returns the index of the first non-finite element, or -1.
    /// </summary>
    public static int EncodeTile(ReadOnlySpan<float> x, int bits, Span<ushort> codes, Span<float> y, out float aminEff, out float amax)
    {
        int bad = TileStats.Scan(x, out amax, out float amin);
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

    /// <summary>
    /// Vector encode. The exact rule is k = #{midpoints (v_j + v_{j+1})/2 ≤ a}. In log2 space the midpoint
    /// between v_j and v_{j+1} sits at lmin + (j-1)*step + c with c = log2((1 + 2^step)/2), up to the float32
    /// rounding of the levels (≤ 2^-24 relative, 8.6e-8 in log2 units); the one between 0 and v_1 at lmin - 1.
    /// So k = floor((log2 a - lmin - c)/step) + 2 (clamped to 1..K) when a is above the first midpoint, and
    /// the answer is certain whenever log2 a is farther than <see cref="BoundaryTolLog2"/> from every
    /// midpoint; lanes closer than that go to the exact scalar search. No 2^x is needed for the codes;
    /// the dequantized value (when asked for) is one exactly-rounded 2^x per element.
    /// </summary>
    private static unsafe int EncodeAvx2(ReadOnlySpan<float> x, int bits, in LogFmtTile tile, Span<ushort> codes, Span<float> y)
    {
        int n4 = x.Length & ~3;
        if (n4 == 0) return 0;
        double c = Math.Log2((1.0 + Math.Pow(2.0, tile.Step)) / 2.0);
        var lmin = Vector256.Create(tile.Lmin);
        var lminM1 = Vector256.Create(tile.Lmin - 1.0);
        var lminC = Vector256.Create(tile.Lmin + c);
        var step = Vector256.Create(tile.Step);
        var invStep = Vector256.Create(1.0 / tile.Step);
        var tolLog = Vector256.Create(BoundaryTolLog2);
        var tolW = Vector256.Create(BoundaryTolLog2 / tile.Step);
        var kMax = Vector256.Create((double)tile.K);
        var one = Vector256.Create(1.0);
        var two = Vector256.Create(2.0);
        var zero = Vector256<double>.Zero;
        var absMask = Vector256.Create(0x7FFFFFFFFFFFFFFFL).AsDouble();
        var veryNegative = Vector256.Create(-1000.0);
        var expMask = Vector128.Create(0x7F800000);
        var mantMask = Vector128.Create(0x007FFFFF);
        var oneBits = Vector128.Create(0x3F800000);
        var sqrt2 = Vector256.Create(1.4142135623730951);
        var half = Vector256.Create(0.5);
        // subnormal inputs get log2 = -1000 (below every midpoint); that is only certain when v_1/2 is normal
        bool subnormalsUncertain = tile.Lmin < -124;
        int signShift = bits - 1;
        bool wantCodes = !codes.IsEmpty, wantY = !y.IsEmpty;

        fixed (float* px = x)
        fixed (ushort* pc = codes)
        fixed (float* py = y)
        {
            for (int i = 0; i < n4; i += 4)
            {
                var xb = Sse2.LoadVector128((int*)(px + i));
                var ab = Sse2.And(xb, Vector128.Create(0x7FFFFFFF));
                var expField = Sse2.And(ab, expMask);
                var tinyI = Sse2.CompareEqual(expField, Vector128<int>.Zero); // zero or subnormal
                var tiny = Avx2.ConvertToVector256Int64(tinyI).AsDouble();

                // log2|x| from exponent and mantissa: atanh series, error < 2e-9
                var e = Avx.ConvertToVector256Double(Sse2.Subtract(Sse2.ShiftRightLogical(expField, 23), Vector128.Create(127)));
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
                var log2a = MulAdd(Avx.Multiply(Avx.Add(s, s), poly), Vector256.Create(InvLn2), e);
                log2a = Avx.BlendVariable(log2a, veryNegative, tiny);

                // first midpoint (0 | v_1) at lmin - 1
                var d0 = Avx.Subtract(log2a, lminM1);
                var above0 = Avx.CompareGreaterThanOrEqual(d0, zero);
                var bad = Avx.CompareLessThan(Avx.And(d0, absMask), tolLog);

                // midpoints between v_j and v_{j+1} at integer w
                var w = Avx.Multiply(Avx.Subtract(log2a, lminC), invStep);
                var fw = Avx.Floor(w);
                var frac = Avx.Subtract(w, fw);
                var dist = Avx.Min(frac, Avx.Subtract(one, frac));
                bad = Avx.Or(bad, Avx.And(above0, Avx.CompareLessThan(dist, tolW)));
                var k = Avx.Min(Avx.Max(Avx.Add(fw, two), one), kMax);
                k = Avx.And(above0, k);
                if (subnormalsUncertain)
                {
                    var nonzeroTiny = Sse2.AndNot(Sse2.CompareEqual(ab, Vector128<int>.Zero), tinyI);
                    bad = Avx.Or(bad, Avx2.ConvertToVector256Int64(nonzeroTiny).AsDouble());
                }

                var ki = Avx.ConvertToVector128Int32WithTruncation(k);
                var kZeroI = Sse2.CompareEqual(ki, Vector128<int>.Zero);
                if (wantCodes)
                {
                    // sign bit only on a nonzero magnitude, so zero always encodes as code 0
                    var sign = Sse2.AndNot(kZeroI, Sse2.ShiftRightLogical(xb, 31) << signShift);
                    var code = Sse2.Or(ki, sign);
                    Sse2.StoreScalar((long*)(pc + i), Sse41.PackUnsignedSaturate(code, code).AsInt64());
                }
                if (wantY)
                {
                    var ek = Avx.Add(lmin, Avx.Multiply(Avx.Subtract(k, one), step));
                    var v = Exp2Float(ek, out var unsafeV);
                    var kZero = Avx.CompareEqual(k, zero);
                    v = Avx.AndNot(kZero, v);
                    bad = Avx.Or(bad, Avx.AndNot(kZero, unsafeV));
                    var signF = Sse2.AndNot(kZeroI, Sse2.And(xb, Vector128.Create(unchecked((int)0x80000000))));
                    Sse2.Store((int*)(py + i), Sse2.Or(Avx.ConvertToVector128Single(v).AsInt32(), signF));
                }
                int badMask = Avx.MoveMask(bad);
                if (badMask != 0)
                {
                    for (int l = 0; l < 4; l++)
                    {
                        if ((badMask & (1 << l)) == 0) continue;
                        float xv = BitConverter.Int32BitsToSingle(xb.GetElement(l)); // not px: y may alias x
                        int kk = tile.Nearest(Math.Abs(xv));
                        bool neg = kk != 0 && xv < 0f;
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
    internal static Vector256<double> Exp2Float(Vector256<double> e, out Vector256<double> unsafeMask)
    {
        var i = Avx.RoundToNearestInteger(e);
        var f = Avx.Subtract(e, i); // exact, |f| <= 1/2
        // Estrin's scheme: the same polynomial with a 5-deep dependency chain instead of 12
        var c = Exp2Coeffs;
        var f2 = Avx.Multiply(f, f);
        var f4 = Avx.Multiply(f2, f2);
        var f8 = Avx.Multiply(f4, f4);
        var a0 = MulAdd(Vector256.Create(c[1]), f, Vector256.Create(c[0]));
        var a1 = MulAdd(Vector256.Create(c[3]), f, Vector256.Create(c[2]));
        var a2 = MulAdd(Vector256.Create(c[5]), f, Vector256.Create(c[4]));
        var a3 = MulAdd(Vector256.Create(c[7]), f, Vector256.Create(c[6]));
        var a4 = MulAdd(Vector256.Create(c[9]), f, Vector256.Create(c[8]));
        var a5 = MulAdd(Vector256.Create(c[11]), f, Vector256.Create(c[10]));
        var b0 = MulAdd(a1, f2, a0);
        var b1 = MulAdd(a3, f2, a2);
        var b2 = MulAdd(a5, f2, a4);
        var d0 = MulAdd(b1, f4, b0);
        var d1 = MulAdd(Vector256.Create(c[12]), f4, b2);
        var p = MulAdd(d1, f8, d0);
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
