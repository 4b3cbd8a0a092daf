namespace Converter.Sharding;

/// <summary>
/// The two steps of load-based placement (as in DeepSeek's EPLB, written from its description): replicate the
/// experts with the highest load per copy, then pack the copies onto ranks heaviest first (LPT) with a fixed
/// slot capacity per rank and never two copies of one expert on a rank.
/// </summary>
internal static class ExpertPacking
{
    /// <summary>Copies per expert after adding <paramref name="extra"/> replicas, each to the expert with the highest load per copy.</summary>
    public static int[] Replicate(ReadOnlySpan<double> load, int extra, int maxCopies)
    {
        var copies = new int[load.Length];
        Array.Fill(copies, 1);
        for (int n = 0; n < extra; n++)
        {
            int best = -1;
            for (int e = 0; e < load.Length; e++)
            {
                if (copies[e] >= maxCopies) continue;
                if (best < 0 || load[e] / copies[e] > load[best] / copies[best]) best = e;
            }
            if (best < 0) throw new ArgumentException($"cannot place {extra} replicas: every expert already has {maxCopies} copies (one per rank)");
            copies[best]++;
        }
        return copies;
    }

    /// <summary>
    /// Packs every copy of <paramref name="experts"/> (load split evenly between copies) onto <paramref name="ranks"/>,
    /// <paramref name="capacity"/> slots each. Returns per rank (in the order given) the experts it holds.
    /// </summary>
    public static List<int>[] Pack(IReadOnlyList<int> experts, ReadOnlySpan<double> load, IReadOnlyList<int> copies, int rankCount, int capacity)
    {
        var items = new List<(int Expert, double Load)>();
        for (int i = 0; i < experts.Count; i++)
            for (int c = 0; c < copies[i]; c++) items.Add((experts[i], load[i] / copies[i]));
        if (items.Count != rankCount * capacity)
            throw new InvalidOperationException($"{items.Count} expert copies for {rankCount} ranks x {capacity} slots");
        // Heaviest first; ties by expert id so the result is deterministic.
        items.Sort((a, b) => a.Load != b.Load ? b.Load.CompareTo(a.Load) : a.Expert.CompareTo(b.Expert));

        var held = new List<int>[rankCount];
        var rankLoad = new double[rankCount];
        for (int r = 0; r < rankCount; r++) held[r] = new List<int>(capacity);
        foreach (var (expert, l) in items)
        {
            int best = -1;
            for (int r = 0; r < rankCount; r++)
            {
                if (held[r].Count >= capacity || held[r].Contains(expert)) continue;
                if (best < 0 || rankLoad[r] < rankLoad[best] || (rankLoad[r] == rankLoad[best] && held[r].Count < held[best].Count))
                    best = r;
            }
            if (best < 0) best = MakeRoom(held, expert, capacity);
            held[best].Add(expert);
            rankLoad[best] += l;
        }
        return held;
    }

    /// <summary>
    /// Every rank with a free slot already holds a copy of <paramref name="expert"/>: move some other expert from a
    /// full rank without it onto the free rank, freeing a slot where the copy can go.
    /// </summary>
    private static int MakeRoom(List<int>[] held, int expert, int capacity)
    {
        for (int free = 0; free < held.Length; free++)
        {
            if (held[free].Count >= capacity) continue;
            for (int full = 0; full < held.Length; full++)
            {
                if (held[full].Contains(expert)) continue;
                foreach (var other in held[full])
                {
                    if (held[free].Contains(other)) continue;
                    held[full].Remove(other);
                    held[free].Add(other);
                    return full;
                }
            }
        }
        throw new InvalidOperationException($"no rank can take another copy of expert {expert}");
    }
}
