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

    /// <summary>
    /// The same for a model with several residual streams (<see cref="GoldenSet.ResidualStates"/>): entry 0 the expanded
    /// embedding, entry i layer i-1's output streams, over the golden's first positions of sequence 0; then, where both
    /// sides have it, the hidden state after the head's collapse and the final norm (<see cref="GoldenSet.FinalHidden"/>).
    /// </summary>
    public static LayerReport CompareStreams(GoldenSet golden, float[][] streams, float[]? final, bool[] stable, double threshold)
    {
        var g = golden.ResidualStates ?? throw new InvalidOperationException($"{golden.Path}: no '{GoldenSet.ResidualStatesName}'");
        int count = golden.ResidualStateCount, positions = golden.ResidualPositions, width = golden.ResidualWidth;
        if (streams.Length != count)
            throw new InvalidDataException($"artifact returned {streams.Length} residual states, golden '{GoldenSet.ResidualStatesName}' in {golden.Path} has {count}");
        var layers = new List<LayerDiff>();
        for (int l = 0; l < count; l++)
            layers.Add(Diff(l, l == 0 ? "embedding streams" : $"layer {l - 1} streams", g.AsSpan(l * positions * width, positions * width),
                streams[l], positions, width, stable));
        if (final != null && golden.FinalHidden is { } fh)
        {
            int fp = golden.FinalHiddenPositions, h = fh.Length / fp;
            if (final.Length < fp * h)
                throw new InvalidDataException($"artifact final hidden state has {final.Length} values, golden '{GoldenSet.FinalHiddenName}' in {golden.Path} has [{fp}, {h}]");
            layers.Add(Diff(count, "head + final norm", fh, final, fp, h, stable));
        }
        int? first = null;
        foreach (var d in layers)
            if (!(d.RelativeError <= threshold)) { first = d.Index; break; }
        return new LayerReport(threshold, first, first is int f ? layers[f].Name : null, layers);
    }

    private static LayerDiff Diff(int index, string name, ReadOnlySpan<float> golden, float[] artifact, int positions, int width, bool[] stable)
    {
        if (artifact.Length < positions * width)
            throw new InvalidDataException($"artifact {name} has {artifact.Length} values, the golden compares [{positions}, {width}]");
        double maxD = 0, maxDStable = 0, err2 = 0, ref2 = 0;
        for (int s = 0; s < positions; s++)
            for (int j = s * width, end = j + width; j < end; j++)
            {
                double d = (double)artifact[j] - golden[j];
                double ad = Math.Abs(d);
                if (!(ad <= maxD)) maxD = double.IsNaN(ad) || double.IsNaN(maxD) ? double.NaN : ad;
                if (stable[s] && !(ad <= maxDStable)) maxDStable = double.IsNaN(ad) || double.IsNaN(maxDStable) ? double.NaN : ad;
                err2 += d * d;
                ref2 += (double)golden[j] * golden[j];
            }
        return new LayerDiff(index, name, maxD, ref2 > 0 ? Math.Sqrt(err2 / ref2) : Math.Sqrt(err2), maxDStable);
    }

    /// <summary>Entry 0 is the embedding output, entry i the output of layer i-1, the last one after the final norm.</summary>
    public static string Name(int index, int count) =>
        index == 0 ? "embedding" : index == count - 1 ? $"layer {index - 1} + final norm" : $"layer {index - 1}";
}
