namespace Converter.Numerics.LogFmt;

/// <summary>
/// LogFMT-nBit (DeepSeek-V3 ISCA'25, section 3.2) as pinned by golden/vectors/logfmt/README.json:
/// 1x128 tiles along each row, per-tile float32 metadata (amin_eff, amax), n-bit codes with the sign in
/// bit n-1 and the log-uniform magnitude index below it, nearest level in linear space, ties to the larger.
/// All methods take an optional row length (tiles restart at each row; the last tile of a row may be
/// shorter; 0 means the whole span is one row), a name for error messages, and a thread cap
/// (≤ 0: all cores). Large inputs run tiles in parallel; results do not depend on the thread count.
/// </summary>
public static class LogFmtCodec
{
    public const int TileSize = 128;
    public const int MinBits = 4;
    public const int MaxBits = 16;

    /// <summary>True when the AVX2 kernels run (otherwise the exact scalar path does all the work).</summary>
    public static bool IsHardwareAccelerated => LogFmtKernels.VectorPathAvailable;

    /// <summary>Number of tiles (metadata pairs) for <paramref name="length"/> elements in rows of <paramref name="rowLength"/>.</summary>
    public static int TileCount(int length, int rowLength = 0)
    {
        return new RowTiles(length, rowLength, TileSize).Count;
    }

    /// <summary>Bytes that <see cref="Pack"/> writes for <paramref name="count"/> codes of <paramref name="bits"/> bits.</summary>
    public static long PackedByteCount(long count, int bits)
    {
        CheckBits(bits);
        return (count * bits + 7) / 8;
    }

    /// <summary>
    /// Encodes <paramref name="x"/> into n-bit codes (one ushort each) and per-tile (amin_eff, amax) pairs.
    /// Throws <see cref="InvalidDataException"/> naming <paramref name="name"/> and the element index if any
    /// element is NaN or infinite.
    /// </summary>
    public static void Encode(ReadOnlySpan<float> x, int bits, Span<ushort> codes, Span<float> meta,
        string name = "tensor", int rowLength = 0, int maxThreads = 0)
    {
        CheckBits(bits);
        int tiles = TileCount(x.Length, rowLength);
        if (codes.Length < x.Length) throw new ArgumentException($"codes holds {codes.Length} < {x.Length} elements", nameof(codes));
        if (meta.Length < 2 * tiles) throw new ArgumentException($"meta holds {meta.Length} < {2 * tiles} floats ({tiles} tiles)", nameof(meta));
        Run(x, bits, codes, meta, Span<float>.Empty, name, rowLength, maxThreads);
    }

    /// <summary>
    /// What the wire does to <paramref name="x"/>: y = Decode(Encode(x)) bit for bit, without the intermediate codes.
    /// </summary>
    public static void QuantizeDequantize(ReadOnlySpan<float> x, int bits, Span<float> y,
        string name = "tensor", int rowLength = 0, int maxThreads = 0)
    {
        CheckBits(bits);
        TileCount(x.Length, rowLength);
        if (y.Length < x.Length) throw new ArgumentException($"y holds {y.Length} < {x.Length} elements", nameof(y));
        Run(x, bits, Span<ushort>.Empty, Span<float>.Empty, y, name, rowLength, maxThreads);
    }

    /// <summary>
    /// Decodes codes with their per-tile metadata. Throws <see cref="InvalidDataException"/> naming
    /// <paramref name="name"/> for metadata that no encoder writes or codes wider than <paramref name="bits"/>.
    /// </summary>
    public static unsafe void Decode(ReadOnlySpan<ushort> codes, ReadOnlySpan<float> meta, int bits, Span<float> y,
        string name = "tensor", int rowLength = 0, int maxThreads = 0)
    {
        CheckBits(bits);
        var layout = new RowTiles(codes.Length, rowLength, TileSize);
        int tiles = layout.Count;
        if (y.Length < codes.Length) throw new ArgumentException($"y holds {y.Length} < {codes.Length} elements", nameof(y));
        if (meta.Length < 2 * tiles) throw new ArgumentException($"meta holds {meta.Length} < {2 * tiles} floats ({tiles} tiles)", nameof(meta));
        int wide = FirstWideCode(codes, bits);
        if (wide >= 0)
            throw new InvalidDataException($"LogFMT-{bits} decode of '{name}': code {codes[wide]} at element {wide} does not fit in {bits} bits");
        for (int t = 0; t < tiles; t++)
        {
            float lo = meta[2 * t], hi = meta[2 * t + 1];
            if (!float.IsFinite(lo) || !float.IsFinite(hi) || lo < 0f || hi < lo || (lo == 0f) != (hi == 0f))
                throw new InvalidDataException($"LogFMT-{bits} decode of '{name}': tile {t} metadata (amin_eff={lo:R}, amax={hi:R}) is invalid");
        }
        int magMask = (1 << (bits - 1)) - 1;
        int zeroTileWithCode = -1;
        fixed (ushort* pc = codes)
        fixed (float* pm = meta)
        fixed (float* py = y)
        {
            ushort* c = pc; float* m = pm; float* o = py;
            layout.ForEachChunk(maxThreads, (t0, t1) =>
            {
                for (int t = t0; t < t1; t++)
                {
                    var (start, len) = layout[t];
                    var tile = new LogFmtTile(m[2 * t], m[2 * t + 1], bits);
                    var cs = new ReadOnlySpan<ushort>(c + start, len);
                    if (tile.IsZero)
                    {
                        foreach (ushort cc in cs)
                            if ((cc & magMask) != 0) { Interlocked.CompareExchange(ref zeroTileWithCode, t, -1); break; }
                    }
                    LogFmtKernels.DecodeTile(cs, in tile, bits, new Span<float>(o + start, len));
                }
            });
        }
        if (zeroTileWithCode >= 0)
            throw new InvalidDataException($"LogFMT-{bits} decode of '{name}': tile {zeroTileWithCode} has amax 0 but a nonzero code");
    }

    /// <summary>Bit-packs n-bit codes LSB-first, little-endian, contiguously. Writes <see cref="PackedByteCount"/> bytes.</summary>
    public static void Pack(ReadOnlySpan<ushort> codes, int bits, Span<byte> packed) => LogFmtPacking.Pack(codes, bits, packed);

    /// <summary>Inverse of <see cref="Pack"/>: reads codes.Length codes of n bits.</summary>
    public static void Unpack(ReadOnlySpan<byte> packed, int bits, Span<ushort> codes) => LogFmtPacking.Unpack(packed, bits, codes);

    private static unsafe void Run(ReadOnlySpan<float> x, int bits, Span<ushort> codes, Span<float> meta, Span<float> y,
        string name, int rowLength, int maxThreads)
    {
        var layout = new RowTiles(x.Length, rowLength, TileSize);
        bool wantCodes = !codes.IsEmpty, wantMeta = !meta.IsEmpty, wantY = !y.IsEmpty;
        long firstBad = long.MaxValue;
        fixed (float* px = x)
        fixed (ushort* pc = codes)
        fixed (float* pm = meta)
        fixed (float* py = y)
        {
            float* xi = px; ushort* c = pc; float* m = pm; float* o = py;
            layout.ForEachChunk(maxThreads, (t0, t1) =>
            {
                for (int t = t0; t < t1; t++)
                {
                    var (start, len) = layout[t];
                    int bad = LogFmtKernels.EncodeTile(new ReadOnlySpan<float>(xi + start, len), bits,
                        wantCodes ? new Span<ushort>(c + start, len) : Span<ushort>.Empty,
                        wantY ? new Span<float>(o + start, len) : Span<float>.Empty,
                        out float aminEff, out float amax);
                    if (bad >= 0)
                    {
                        long idx = start + bad, seen;
                        while (idx < (seen = Interlocked.Read(ref firstBad)) && Interlocked.CompareExchange(ref firstBad, idx, seen) != seen) { }
                        return;
                    }
                    if (wantMeta) { m[2 * t] = aminEff; m[2 * t + 1] = amax; }
                }
            });
        }
        if (firstBad != long.MaxValue)
            throw new InvalidDataException($"LogFMT-{bits} encode of '{name}': element {firstBad} is {x[(int)firstBad]} (non-finite values cannot be encoded)");
    }

    private static int FirstWideCode(ReadOnlySpan<ushort> codes, int bits)
    {
        if (bits == 16) return -1;
        return codes.IndexOfAnyInRange((ushort)(1 << bits), ushort.MaxValue);
    }

    internal static void CheckBits(int bits)
    {
        if (bits < MinBits || bits > MaxBits)
            throw new ArgumentOutOfRangeException(nameof(bits), bits, $"LogFMT bits must be in [{MinBits}, {MaxBits}]");
    }
}
