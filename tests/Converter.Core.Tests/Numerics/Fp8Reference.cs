using System.Buffers.Binary;

namespace Converter.Tests.Numerics;

/// <summary>
/// Slow, independent FP8 references for the tests: values from the format definition (sign, exponent,
/// mantissa, bias), encoding by nearest-value search with ties to the even code; past the largest value it
/// rounds to the next code as if it were finite (e4m3fn: NaN, e5m2: inf), which the torch vectors show.
/// </summary>
internal sealed class Fp8Reference
{
    public static readonly Fp8Reference E4M3 = new(expBits: 4, mantBits: 3, bias: 7, hasInf: false);
    public static readonly Fp8Reference E5M2 = new(expBits: 5, mantBits: 2, bias: 15, hasInf: true);

    private readonly int _mantBits;
    private readonly bool _hasInf;
    private readonly double[] _magnitudes = new double[128]; // value of code 0..127, NaN/inf where special
    private readonly int _maxFiniteCode;

    private Fp8Reference(int expBits, int mantBits, int bias, bool hasInf)
    {
        _mantBits = mantBits;
        _hasInf = hasInf;
        int expMax = (1 << expBits) - 1;
        for (int c = 0; c < 128; c++)
        {
            int e = c >> mantBits, m = c & ((1 << mantBits) - 1);
            double v = e == 0 ? m * Math.Pow(2, 1 - bias - mantBits) : (1 + m / (double)(1 << mantBits)) * Math.Pow(2, e - bias);
            if (hasInf && e == expMax) v = m == 0 ? double.PositiveInfinity : double.NaN;
            if (!hasInf && c == 127) v = double.NaN;
            _magnitudes[c] = v;
        }
        _maxFiniteCode = hasInf ? (expMax << mantBits) - 1 : 126;
    }

    public double Decode(byte code)
    {
        double v = _magnitudes[code & 0x7F];
        return (code & 0x80) != 0 ? -v : v;
    }

    public byte Encode(float x)
    {
        byte sign = (byte)(BitConverter.SingleToUInt32Bits(x) >> 31 << 7);
        byte overflowCode = (byte)(_maxFiniteCode + 1); // e4m3fn: 0x7F = NaN, e5m2: 0x7C = inf
        if (float.IsNaN(x)) return (byte)(sign | 0x7F);
        double a = Math.Abs((double)x);
        if (double.IsInfinity(a)) return (byte)(sign | overflowCode);
        // The first value past the largest finite one, spaced as in the top binade: rounding to it overflows.
        double max = _magnitudes[_maxFiniteCode];
        double next = max + Math.Pow(2, Math.Floor(Math.Log2(max)) - _mantBits);
        int best = 0;
        for (int c = 1; c <= _maxFiniteCode + 1; c++)
        {
            double v = c == _maxFiniteCode + 1 ? next : _magnitudes[c];
            double dBest = Math.Abs(a - (best == _maxFiniteCode + 1 ? next : _magnitudes[best]));
            double d = Math.Abs(a - v);
            if (d < dBest || (d == dBest && (c & 1) == 0 && (best & 1) == 1)) best = c;
        }
        if (a > next) best = _maxFiniteCode + 1;
        return (byte)(sign | best);
    }

    public static float[] ReadF32(string path)
    {
        var bytes = File.ReadAllBytes(path);
        var r = new float[bytes.Length / 4];
        for (int i = 0; i < r.Length; i++) r[i] = BinaryPrimitives.ReadSingleLittleEndian(bytes.AsSpan(4 * i));
        return r;
    }

    public static ushort[] ReadU16(string path)
    {
        var bytes = File.ReadAllBytes(path);
        var r = new ushort[bytes.Length / 2];
        for (int i = 0; i < r.Length; i++) r[i] = BinaryPrimitives.ReadUInt16LittleEndian(bytes.AsSpan(2 * i));
        return r;
    }
}
