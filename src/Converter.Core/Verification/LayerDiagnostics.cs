namespace Converter.Verification;

/// <summary>
/// Compares sequence 0's per-layer hidden states with the golden's to locate where an artifact starts to
/// diverge: the first layer whose relative error exceeds a threshold is usually the one whose mapping is wrong.
/// </summary>
public static class LayerDiagnostics
{
    public static LayerReport Compare(GoldenSet golden, float[][] hidden, bool[] stable, double threshold)
    {
        var g = golden.HiddenStates ?? throw new InvalidOperationException($"{golden.Path}: no '{GoldenSet.HiddenStatesName}'");
        int count = golden.HiddenStateCount, seq = golden.Seq, h = golden.HiddenSize;
        if (hidden.Length != count)
            throw new InvalidDataException($"artifact returned {hidden.Length} hidden states, golden '{GoldenSet.HiddenStatesName}' in {golden.Path} has {count}");
        var layers = new LayerDiff[count];
        Parallel.For(0, count, l =>
        {
            var gs = g.AsSpan(l * seq * h, seq * h);
            var a = hidden[l];
            if (a.Length != seq * h)
                throw new InvalidDataException($"artifact hidden state {l} has {a.Length} values, golden '{GoldenSet.HiddenStatesName}' in {golden.Path} has [{seq}, {h}]");
            double maxD = 0, maxDStable = 0, err2 = 0, ref2 = 0;
            for (int s = 0; s < seq; s++)
            {
                bool st = stable[s]; // sequence 0 occupies the first seq positions
                for (int j = s * h, end = j + h; j < end; j++)
                {
                    double d = (double)a[j] - gs[j];
                    double ad = Math.Abs(d);
                    if (!(ad <= maxD)) maxD = double.IsNaN(ad) || double.IsNaN(maxD) ? double.NaN : ad;
                    if (st && !(ad <= maxDStable)) maxDStable = double.IsNaN(ad) || double.IsNaN(maxDStable) ? double.NaN : ad;
                    err2 += d * d;
                    ref2 += (double)gs[j] * gs[j];
                }
            }
            double rel = ref2 > 0 ? Math.Sqrt(err2 / ref2) : Math.Sqrt(err2);
            layers[l] = new LayerDiff(l, Name(l, count), maxD, rel, maxDStable);
        });
        int? first = null;
        for (int l = 0; l < count; l++)
            if (!(layers[l].RelativeError <= threshold)) { first = l; break; }
        return new LayerReport(threshold, first, first is int f ? layers[f].Name : null, layers);
    }

    /// <summary>Entry 0 is the embedding output, entry i the output of layer i-1, the last one after the final norm.</summary>
    public static string Name(int index, int count) =>
        index == 0 ? "embedding" : index == count - 1 ? $"layer {index - 1} + final norm" : $"layer {index - 1}";
}
