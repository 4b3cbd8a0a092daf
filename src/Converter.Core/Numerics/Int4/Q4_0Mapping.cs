namespace Converter.Numerics.Int4;

/// <summary>
/// INT4 symmetric group-32 weights to GGUF Q4_0 blocks (18 bytes: fp16 d, then 16 bytes whose low nibble is
/// element j and high nibble element j + 16, value (nibble - 8) * d). The nibble is q + 8, the same code
/// compressed-tensors stores, so the mapping only re-packs codes and converts the BF16 scale to fp16.
/// That is exact when the BF16 scale is representable in fp16, which holds for every scale in fp16's normal
/// range [2^-14, 65504] (BF16 has 8 significant bits, fp16 11). Scales below 2^-14 (groups with |w| under
/// about 4.6e-4) may lose low bits as fp16 subnormals and scales above 65504 overflow: such a block is
/// "inexact". <see cref="Q4_0Inexact.Throw"/> refuses it (naming the row and group); <see cref="Q4_0Inexact.RoundScale"/>
/// writes the nearest fp16 scale (codes unchanged) and counts it, so callers can report how many blocks moved.
/// </summary>
public static class Q4_0Mapping
{
    public const int BlockValues = 32, BlockBytes = 18;

    /// <summary>True when the BF16 value converts to fp16 and back unchanged.</summary>
    public static bool IsExactInF16(ushort bf16)
    {
        float v = Bf16.ToSingle(bf16);
        return F16.ToSingle(F16.FromSingle(v)) == v;
    }

    /// <summary>One block from 32 codes q in [-8, 7] and a BF16 scale; returns false when the scale is not exact in fp16 (block still written with the nearest fp16 scale).</summary>
    public static bool WriteBlock(ReadOnlySpan<sbyte> q, ushort scaleBf16, Span<byte> block)
    {
        if (q.Length != BlockValues || block.Length < BlockBytes) throw new ArgumentException("a Q4_0 block is 32 values in 18 bytes");
        float s = Bf16.ToSingle(scaleBf16);
        ushort d = F16.FromSingle(s);
        block[0] = (byte)d;
        block[1] = (byte)(d >> 8);
        for (int j = 0; j < 16; j++)
            block[2 + j] = (byte)((q[j] + 8) | ((q[j + 16] + 8) << 4));
        return F16.ToSingle(d) == s;
    }

    /// <summary>
    /// A symmetric group-32 weight [rows, cols] to rows * cols / 32 Q4_0 blocks in row-major order (what
    /// GGUF stores for a [cols, rows] ggml tensor). Returns the number of inexact blocks (0 means every
    /// dequantized value equals the INT4 weight's).
    /// </summary>
    public static long Convert(Int4Weight w, Span<byte> blocks, Q4_0Inexact policy, string tensor = "weight")
    {
        if (!w.Scheme.Symmetric || w.Scheme.GroupSize != BlockValues)
            throw new InvalidDataException($"tensor '{tensor}': only symmetric group-32 INT4 maps to Q4_0 without requantization (this is group {w.Scheme.GroupSize}, {(w.Scheme.Symmetric ? "symmetric" : "asymmetric")})");
        long n = (long)w.Rows * w.Groups;
        if (blocks.Length < n * BlockBytes) throw new ArgumentException($"need {n * BlockBytes} bytes for {n} blocks", nameof(blocks));
        long inexact = 0;
        for (long b = 0; b < n; b++)
        {
            bool exact = WriteBlock(w.Q.AsSpan((int)(b * BlockValues), BlockValues), w.Scales[b], blocks.Slice((int)(b * BlockBytes), BlockBytes));
            if (exact) continue;
            if (policy == Q4_0Inexact.Throw)
                throw new InvalidDataException($"tensor '{tensor}': row {b / w.Groups}, group {b % w.Groups}: scale {Bf16.ToSingle(w.Scales[b]):G9} is not exact in fp16, Q4_0 would change its values");
            inexact++;
        }
        return inexact;
    }

    /// <summary>Dequantizes Q4_0 blocks (reference: (nibble - 8) * fp16 d).</summary>
    public static void Dequantize(ReadOnlySpan<byte> blocks, Span<float> values)
    {
        int n = values.Length / BlockValues;
        for (int b = 0; b < n; b++)
        {
            var blk = blocks.Slice(b * BlockBytes, BlockBytes);
            float d = F16.ToSingle((ushort)(blk[0] | blk[1] << 8));
            for (int j = 0; j < 16; j++)
            {
                values[b * 32 + j] = ((blk[2 + j] & 15) - 8) * d;
                values[b * 32 + j + 16] = ((blk[2 + j] >> 4) - 8) * d;
            }
        }
    }
}

public enum Q4_0Inexact { Throw, RoundScale }
