using System.Buffers.Binary;

namespace Converter.Numerics.LogFmt;

/// <summary>
/// n-bit code packing, LSB-first: code i occupies bits [i*n, (i+1)*n) of the little-endian bit stream.
/// Works through a 64-bit accumulator so each code costs a shift and an or.
/// </summary>
internal static class LogFmtPacking
{
    public static void Pack(ReadOnlySpan<ushort> codes, int bits, Span<byte> packed)
    {
        LogFmtCodec.CheckBits(bits);
        long need = LogFmtCodec.PackedByteCount(codes.Length, bits);
        if (packed.Length < need) throw new ArgumentException($"packed holds {packed.Length} < {need} bytes", nameof(packed));
        if (bits < 16)
        {
            int wide = codes.IndexOfAnyInRange((ushort)(1 << bits), ushort.MaxValue);
            if (wide >= 0) throw new ArgumentException($"code {codes[wide]} at element {wide} does not fit in {bits} bits", nameof(codes));
        }
        if (bits == 8)
        {
            for (int i = 0; i < codes.Length; i++) packed[i] = (byte)codes[i];
            return;
        }
        ulong acc = 0;
        int fill = 0, o = 0;
        foreach (ushort c in codes)
        {
            acc |= (ulong)c << fill;
            fill += bits;
            if (fill >= 32)
            {
                BinaryPrimitives.WriteUInt32LittleEndian(packed.Slice(o, 4), (uint)acc);
                o += 4;
                acc >>= 32;
                fill -= 32;
            }
        }
        for (; fill > 0; fill -= 8, acc >>= 8) packed[o++] = (byte)acc;
    }

    public static void Unpack(ReadOnlySpan<byte> packed, int bits, Span<ushort> codes)
    {
        LogFmtCodec.CheckBits(bits);
        long need = LogFmtCodec.PackedByteCount(codes.Length, bits);
        if (packed.Length < need) throw new ArgumentException($"packed holds {packed.Length} < {need} bytes", nameof(packed));
        if (bits == 8)
        {
            for (int i = 0; i < codes.Length; i++) codes[i] = packed[i];
            return;
        }
        ulong acc = 0;
        int fill = 0, o = 0;
        uint mask = (1u << bits) - 1;
        for (int i = 0; i < codes.Length; i++)
        {
            if (fill < bits)
            {
                // refill 32 bits at a time while whole words remain, bytes at the end
                if (o + 4 <= need) { acc |= (ulong)BinaryPrimitives.ReadUInt32LittleEndian(packed.Slice(o, 4)) << fill; o += 4; fill += 32; }
                else while (fill < bits) { acc |= (ulong)packed[o++] << fill; fill += 8; }
            }
            codes[i] = (ushort)(acc & mask);
            acc >>= bits;
            fill -= bits;
        }
    }
}
