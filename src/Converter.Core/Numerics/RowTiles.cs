namespace Converter.Numerics;

/// <summary>
/// 1xT tiles along the rows of a row-major [rows, rowLength] span (the last tile of a row may be shorter),
/// and a parallel loop over them in chunks. Shared by the activation wire formats.
/// </summary>
internal readonly struct RowTiles
{
    public readonly int RowLength;
    public readonly int TileSize;
    public readonly int TilesPerRow;
    public readonly int Count;

    /// <param name="rowLength">elements per row; 0 means the whole span is one row</param>
    public RowTiles(int length, int rowLength, int tileSize)
    {
        if (rowLength < 0) throw new ArgumentOutOfRangeException(nameof(rowLength), rowLength, "row length must be >= 0");
        int row = rowLength == 0 ? length : rowLength;
        if (row != 0 && length % row != 0)
            throw new ArgumentException($"length {length} is not a multiple of the row length {row}", nameof(rowLength));
        RowLength = row;
        TileSize = tileSize;
        TilesPerRow = row == 0 ? 0 : (row + tileSize - 1) / tileSize;
        Count = row == 0 ? 0 : length / row * TilesPerRow;
    }

    /// <summary>Start and length of tile t.</summary>
    public (int Start, int Length) this[int t]
    {
        get
        {
            int r = t / TilesPerRow, off = (t - r * TilesPerRow) * TileSize;
            return (r * RowLength + off, Math.Min(TileSize, RowLength - off));
        }
    }

    /// <summary>Tiles below this count are done on the calling thread.</summary>
    private const int ParallelMinTiles = 256;
    private const int TilesPerChunk = 64;

    /// <summary>Runs body(firstTile, endTile) over all tiles, in parallel chunks when there are many (maxThreads ≤ 0: all cores).</summary>
    public void ForEachChunk(int maxThreads, Action<int, int> body)
    {
        if (Count < ParallelMinTiles || maxThreads == 1)
        {
            body(0, Count);
            return;
        }
        int tiles = Count;
        int chunks = (tiles + TilesPerChunk - 1) / TilesPerChunk;
        var opts = new ParallelOptions { MaxDegreeOfParallelism = maxThreads > 0 ? maxThreads : Environment.ProcessorCount };
        Parallel.For(0, chunks, opts, ch => body(ch * TilesPerChunk, Math.Min(tiles, (ch + 1) * TilesPerChunk)));
    }
}
