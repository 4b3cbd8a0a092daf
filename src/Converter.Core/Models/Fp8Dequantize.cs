namespace Converter.Models;

// TEMPORARY scalar e4m3 block dequantization until Converter.Numerics lands; replaced at merge.
internal static class Fp8Dequantize
{
    private static readonly float[] Table = BuildTable();

    private static float[] BuildTable()
    {
        var t = new float[256];
        for (int b = 0; b < 256; b++)
        {
            int sign = b >> 7, exp = (b >> 3) & 15, man = b & 7;
            float v = (exp == 15 && man == 7) ? float.NaN
                : exp == 0 ? man / 8f * MathF.Pow(2, -6)
                : (1 + man / 8f) * MathF.Pow(2, exp - 7);
            t[b] = sign == 1 ? -v : v;
        }
        return t;
    }

    public static void ToFloat32(ReadOnlySpan<byte> fp8, ReadOnlySpan<float> scaleInv, int rows, int cols, Span<float> dst)
    {
        int sc = (cols + 127) / 128;
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++)
                dst[r * cols + c] = Table[fp8[r * cols + c]] * scaleInv[(r / 128) * sc + c / 128];
    }
}
