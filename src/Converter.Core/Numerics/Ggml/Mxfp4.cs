namespace Converter.Numerics.Ggml;

/// <summary>
/// ggml's MXFP4 (<c>block_mxfp4</c>, 17 bytes per 32 values): one E8M0 exponent byte e, then 16 bytes whose low nibble
/// is element j and high nibble element j + 16. Values are <c>kvalues_mxfp4[code] x 2^(e-128)</c> with kvalues
/// {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, ..., -12}: the e2m1 table doubled against a halved scale, so a code and exponent
/// mean exactly what they mean in OCP MX FP4 (<c>e2m1(code) x 2^(e-127)</c>) and FP4 e2m1 + E8M0 weights move over
/// without re-rounding (<see cref="Repack"/>). <see cref="QuantizeBlock"/> is ggml's quantize_row_mxfp4_ref.
/// </summary>
public static unsafe class Mxfp4
{
    public const int BlockValues = 32;
    public const int BlockBytes = 17;

    private static readonly sbyte[] KValues = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

    /// <summary>ggml_e8m0_to_fp32_half: 2^(e-128) as float32 bits (subnormal for e &lt; 2).</summary>
    public static float HalfScale(byte e) => BitConverter.UInt32BitsToSingle(e < 2 ? 0x00200000u << e : (uint)(e - 1) << 23);

    /// <summary>quantize_row_mxfp4_ref for one block of 32 values: e = floor(log2(amax)) - 2 + 127 (0 for an all-zero
    /// block), each value the nearest doubled code times 2^(e-128), the first on ties.</summary>
    public static void QuantizeBlock(float* x, byte* y)
    {
        float amax = 0;
        for (int j = 0; j < BlockValues; j++)
            if (amax < MathF.Abs(x[j])) amax = MathF.Abs(x[j]);
        // log2f of a float32 is the correctly rounded float of log2 (glibc), which (float)Math.Log2 gives too
        byte e = amax > 0 ? (byte)(int)(MathF.Floor((float)Math.Log2(amax)) - 2 + 127) : (byte)0;
        float d = HalfScale(e);
        y[0] = e;
        for (int j = 0; j < 16; j++)
            y[1 + j] = (byte)(BestIndex(x[j], d) | BestIndex(x[j + 16], d) << 4);
    }

    private static int BestIndex(float x, float d)
    {
        int best = 0;
        float bestErr = MathF.Abs(KValues[0] * d - x);
        for (int i = 1; i < 16; i++)
        {
            float err = MathF.Abs(KValues[i] * d - x);
            if (err < bestErr) { best = i; bestErr = err; }
        }
        return best;
    }

    /// <summary>dequantize_row_mxfp4 for one block.</summary>
    public static void DequantizeBlock(byte* x, float* y)
    {
        float d = HalfScale(x[0]);
        for (int j = 0; j < 16; j++)
        {
            y[j] = KValues[x[1 + j] & 0x0F] * d;
            y[j + 16] = KValues[x[1 + j] >> 4] * d;
        }
    }

    /// <summary>
    /// FP4 e2m1 rows (two codes a byte, element 2k in the low nibble; [rows, cols/2]) with E8M0 1x32 scales
    /// ([rows, cols/32]) to MXFP4 blocks ([rows, cols/32] x 17 bytes), losslessly: only bits move, as llama.cpp's
    /// <c>repack_mxfp4_blocks</c> does. <paramref name="packed"/> holds whole rows of <paramref name="cols"/> values.
    /// </summary>
    public static void Repack(ReadOnlySpan<byte> packed, ReadOnlySpan<byte> scales, int cols, Span<byte> blocks)
    {
        if (cols % BlockValues != 0) throw new ArgumentException($"FP4 rows of {cols} values are not whole {BlockValues}-value MXFP4 blocks");
        long groups = (long)packed.Length * 2 / BlockValues;
        if (packed.Length % (cols / 2) != 0 || scales.Length != groups || blocks.Length != groups * BlockBytes)
            throw new ArgumentException($"MXFP4 repack: {packed.Length} packed bytes, {scales.Length} scales and {blocks.Length} output bytes do not match rows of {cols}");
        for (long g = 0; g < groups; g++)
        {
            var src = packed.Slice((int)(g * 16), 16);
            var dst = blocks.Slice((int)(g * BlockBytes), BlockBytes);
            dst[0] = scales[(int)g];
            // element i of the group: byte i/2 of src, low nibble for even i. Output byte j = element j | element j+16 << 4.
            for (int j = 0; j < 16; j++)
            {
                int lo = j % 2 == 0 ? src[j / 2] & 0x0F : src[j / 2] >> 4;
                int k = j + 16;
                int hi = k % 2 == 0 ? src[k / 2] & 0x0F : src[k / 2] >> 4;
                dst[1 + j] = (byte)(lo | hi << 4);
            }
        }
    }
}
