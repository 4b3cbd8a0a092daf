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
    /// Packs every copy of <paramref name="experts"/> (load split evenly between copies) onto <paramref name="rankCount"/>
    /// ranks of floor(copies / ranks) slots each; the remainder become one extra slot for as many ranks, granted to
    /// whichever ranks are least loaded when they fill up (fixing which ranks get them beforehand forces the last, light
    /// copies onto ranks that may already be the heaviest). Returns per rank the experts it holds.
    /// </summary>
    public static List<int>[] Pack(IReadOnlyList<int> experts, ReadOnlySpan<double> load, IReadOnlyList<int> copies, int rankCount)
    {
        var items = new List<(int Expert, double Load)>();
        for (int i = 0; i < experts.Count; i++)
            for (int c = 0; c < copies[i]; c++) items.Add((experts[i], load[i] / copies[i]));
        int floor = items.Count / rankCount, extra = items.Count % rankCount;
        var capacity = new int[rankCount];
        Array.Fill(capacity, floor);
        // Heaviest first; ties by expert id so the result is deterministic.
        items.Sort((a, b) => a.Load != b.Load ? b.Load.CompareTo(a.Load) : a.Expert.CompareTo(b.Expert));

        var held = new List<int>[rankCount];
        var rankLoad = new double[rankCount];
        for (int r = 0; r < rankCount; r++) held[r] = new List<int>(capacity[r]);
        foreach (var (expert, l) in items)
        {
            int best = -1;
            for (int r = 0; r < rankCount; r++)
            {
                if ((held[r].Count >= capacity[r] && (extra == 0 || capacity[r] > floor)) || held[r].Contains(expert)) continue;
                if (best < 0 || rankLoad[r] < rankLoad[best] || (rankLoad[r] == rankLoad[best] && held[r].Count < held[best].Count))
                    best = r;
            }
            if (best < 0) best = MakeRoom(held, expert, capacity);
            if (held[best].Count >= capacity[best]) { capacity[best]++; extra--; }
            held[best].Add(expert);
            rankLoad[best] += l;
        }
        var perCopy = new Dictionary<int, double>();
        foreach (var (expert, l) in items) perCopy[expert] = l;
        Improve(held, perCopy, floor);
        return held;
    }

    /// <summary>
    /// Greedy packing is poor once slot counts bind (the last, light copies must go wherever slots are left). Local search:
    /// while some swap of two copies, or move of a copy from a rank with an extra slot to one without, lowers the heaviest
    /// rank's load, apply the best one. The maximum strictly falls each step, so it ends.
    /// </summary>
    private static void Improve(List<int>[] held, Dictionary<int, double> perCopy, int floor)
    {
        int n = held.Length;
        var load = new double[n];
        for (int r = 0; r < n; r++) foreach (var x in held[r]) load[r] += perCopy[x];
        for (int iter = 0; iter < 100_000; iter++)
        {
            int h = 0;
            for (int r = 1; r < n; r++) if (load[r] > load[h]) h = r;
            double best = load[h] - 1e-9;
            int bestO = -1, bestA = -1, bestB = -1;
            for (int o = 0; o < n; o++)
            {
                if (o == h) continue;
                bool canMove = held[h].Count > floor && held[o].Count == floor;
                foreach (var a in held[h])
                {
                    if (held[o].Contains(a)) continue;
                    double la = perCopy[a];
                    if (canMove)
                    {
                        double m = Math.Max(load[h] - la, load[o] + la);
                        if (m < best) (best, bestO, bestA, bestB) = (m, o, a, -1);
                    }
                    foreach (var b in held[o])
                    {
                        if (held[h].Contains(b)) continue;
                        double lb = perCopy[b];
                        if (lb >= la) continue;
                        double m = Math.Max(load[h] - la + lb, load[o] + la - lb);
                        if (m < best) (best, bestO, bestA, bestB) = (m, o, a, b);
                    }
                }
            }
            if (bestO < 0) return;
            held[h].Remove(bestA);
            held[bestO].Add(bestA);
            load[h] -= perCopy[bestA];
            load[bestO] += perCopy[bestA];
            if (bestB >= 0)
            {
                held[bestO].Remove(bestB);
                held[h].Add(bestB);
                load[bestO] -= perCopy[bestB];
                load[h] += perCopy[bestB];
            }
        }
    }

    /// <summary>
    /// Every rank with a free slot already holds a copy of <paramref name="expert"/>: move some other expert from a
    /// full rank without it onto the free rank, freeing a slot where the copy can go.
    /// </summary>
    private static int MakeRoom(List<int>[] held, int expert, int[] capacity)
    {
        for (int free = 0; free < held.Length; free++)
        {
            if (held[free].Count >= capacity[free]) continue;
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
