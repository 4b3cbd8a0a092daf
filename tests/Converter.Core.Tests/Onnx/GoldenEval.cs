using Converter.Formats.Safetensors;
using Converter.Tensors;

namespace Converter.Tests.Onnx;

/// <summary>A golden eval.safetensors: tokens, logits and (when present) hidden states and routing.</summary>
public sealed class GoldenEval
{
    public int Batch { get; }
    public int Seq { get; }
    public int Vocab { get; }
    public int[] Tokens { get; }
    public float[] Logits { get; }
    public float[]? HiddenSeq0 { get; }
    public long[]? HiddenShape { get; }
    public int[]? RouteTopk { get; }
    public long[]? RouteShape { get; }
    public float[]? RouteMargin { get; }

    public GoldenEval(string path)
    {
        using var f = SafetensorsFile.Open(path);
        float[] F(string n) { using var t = f.Read(n); return TensorConvert.ToFloat32(t); }
        var tok = f.Info("tokens");
        Batch = (int)tok.Shape[0];
        Seq = (int)tok.Shape[1];
        using (var t = f.Read("tokens")) Tokens = t.As<int>().ToArray();
        Logits = F("logits");
        Vocab = (int)f.Info("logits").Shape[2];
        if (f.Contains("hidden_states_seq0"))
        {
            HiddenSeq0 = F("hidden_states_seq0");
            HiddenShape = f.Info("hidden_states_seq0").Shape;
        }
        if (f.Contains("route_topk_idx"))
        {
            using (var t = f.Read("route_topk_idx")) RouteTopk = t.As<int>().ToArray();
            RouteShape = f.Info("route_topk_idx").Shape;
            RouteMargin = F("route_margin");
        }
    }

    /// <summary>Positions (b * seq + s) whose smallest routing margin over MoE layers is at least <paramref name="min"/>; all when no routing data.</summary>
    public bool[] Stable(double min = 1e-4)
    {
        int n = Batch * Seq;
        var ok = new bool[n];
        for (int i = 0; i < n; i++)
        {
            ok[i] = true;
            if (RouteMargin == null) continue;
            int layers = RouteMargin.Length / n;
            for (int l = 0; l < layers; l++)
                if (RouteMargin[l * n + i] < min) ok[i] = false;
        }
        return ok;
    }
}

/// <summary>Logit comparison numbers over a position mask.</summary>
public sealed record LogitStats(double MaxAbs, double MeanAbs, double Top1, int Positions)
{
    public static LogitStats Compare(float[] actual, float[] expected, int vocab, bool[]? positions = null)
    {
        int n = expected.Length / vocab, used = 0, agree = 0;
        double max = 0, sum = 0;
        for (int p = 0; p < n; p++)
        {
            if (positions != null && !positions[p]) continue;
            used++;
            int am = 0, em = 0;
            for (int v = 0; v < vocab; v++)
            {
                int i = p * vocab + v;
                double d = Math.Abs((double)actual[i] - expected[i]);
                if (double.IsNaN(d)) d = double.PositiveInfinity;
                max = Math.Max(max, d);
                sum += d;
                if (actual[i] > actual[p * vocab + am]) am = v;
                if (expected[i] > expected[p * vocab + em]) em = v;
            }
            if (am == em) agree++;
        }
        return new LogitStats(max, sum / Math.Max(1, used * vocab), used == 0 ? 0 : agree / (double)used, used);
    }

    public override string ToString() => $"max|d| {MaxAbs:E3}, mean|d| {MeanAbs:E3}, top-1 {Top1:F4} over {Positions} positions";
}
