using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace Converter.Numerics;

/// <summary>Small helpers of the power-of-two block quantizers.</summary>
internal static class Pow2Blocks
{
    /// <summary>Largest lane (unsigned): the maximum magnitude once the sign bits are masked off.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static uint MaxLane(Vector256<uint> v)
    {
        Vector128<uint> h = Vector128.Max(v.GetLower(), v.GetUpper());
        h = Vector128.Max(h, Vector128.Shuffle(h, Vector128.Create(2u, 3u, 0u, 1u)));
        h = Vector128.Max(h, Vector128.Shuffle(h, Vector128.Create(1u, 0u, 3u, 2u)));
        return h.ToScalar();
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static uint MaxLane(Vector512<uint> v) => MaxLane(Vector256.Max(v.GetLower(), v.GetUpper()));

    /// <summary>Largest 16-bit lane: the two halves of each 32-bit lane first, then <see cref="MaxLane(Vector256{uint})"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static uint MaxLane(Vector256<ushort> v)
    {
        Vector256<uint> u = v.AsUInt32();
        return MaxLane(Vector256.Max(u & Vector256.Create(0xFFFFu), u >>> 16));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static uint MaxLane(Vector512<ushort> v) => MaxLane(Vector256.Max(v.GetLower(), v.GetUpper()));

    /// <summary>
    /// Runs body(first, end) over [0, count) in chunks of <paramref name="perChunk"/>, in parallel unless there is
    /// one chunk or <paramref name="maxDegreeOfParallelism"/> is 1 (-1: all cores). Each body returns the lowest
    /// bad index it met or -1; the result is the lowest of those (the serial loop stops at the first).
    /// </summary>
    internal static int ForEachChunk(int count, int perChunk, int maxDegreeOfParallelism, Func<int, int, int> body)
    {
        int chunks = (count + perChunk - 1) / perChunk;
        int bad = int.MaxValue;
        if (chunks <= 1 || maxDegreeOfParallelism == 1)
        {
            for (int c = 0; c < chunks; c++)
            {
                int b = body(c * perChunk, Math.Min(count, (c + 1) * perChunk));
                if (b >= 0) return b;
            }
            return -1;
        }
        Parallel.For(0, chunks, new ParallelOptions { MaxDegreeOfParallelism = maxDegreeOfParallelism }, c =>
        {
            int b = body(c * perChunk, Math.Min(count, (c + 1) * perChunk));
            if (b < 0) return;
            int seen;
            while (b < (seen = Volatile.Read(ref bad)) && Interlocked.CompareExchange(ref bad, b, seen) != seen) { }
        });
        return bad == int.MaxValue ? -1 : bad;
    }

    internal static string ShapeText(ReadOnlySpan<long> shape)
    {
        var parts = new string[shape.Length];
        for (int i = 0; i < shape.Length; i++) parts[i] = shape[i].ToString(System.Globalization.CultureInfo.InvariantCulture);
        return "[" + string.Join(", ", parts) + "]";
    }
}

/// <summary>A compile-time flag: generic code over a struct type is compiled once per type, so a branch on
/// <see cref="On"/> costs nothing in the variant that does not take it.</summary>
internal interface IFlag
{
    static abstract bool On { get; }
}

internal readonly struct Yes : IFlag
{
    public static bool On => true;
}

internal readonly struct No : IFlag
{
    public static bool On => false;
}
