namespace Converter.Decoder.Onnx;

/// <summary>
/// ONNX Runtime's 4-bit layouts (MatMulNBits B and QMoE fc weights; their zero points). A code is the unsigned
/// nibble q + 8 (compressed-tensors' stored value), and the runtime computes (code - zero) * scale with zero = zp + 8
/// (8 when no zero points are given), so values equal (q - zp) * scale exactly.
/// </summary>
public static class OnnxInt4Layout
{
    /// <summary>Codes q in [-8, 7] row-major (even count per row) to bytes: element 2i in the low nibble, 2i + 1 in the high.</summary>
    public static byte[] PackCodes(ReadOnlySpan<sbyte> q)
    {
        if (q.Length % 2 != 0) throw new ArgumentException("an odd number of INT4 codes");
        var b = new byte[q.Length / 2];
        for (int i = 0; i < b.Length; i++) b[i] = (byte)((q[2 * i] + 8) | ((q[2 * i + 1] + 8) << 4));
        return b;
    }

    /// <summary>Zero points [rows, groups] to [rows, ceil(groups / 2)] bytes: group 2j in the low nibble, 2j + 1 in the high.</summary>
    public static byte[] PackZeroPoints(ReadOnlySpan<sbyte> zp, int rows, int groups)
    {
        int per = (groups + 1) / 2;
        var b = new byte[rows * per];
        for (int r = 0; r < rows; r++)
            for (int g = 0; g < groups; g++)
                b[r * per + g / 2] |= (byte)((zp[r * groups + g] + 8) << (4 * (g % 2)));
        return b;
    }
}
