using System.Globalization;

namespace Converter.Verification;

/// <summary>
/// Where a golden came from, as its safetensors metadata states it (<c>converter golden</c> writes every key; goldens
/// made elsewhere have none, and then only their tensor shapes are checked). verify refuses a golden whose model type,
/// config fingerprint or shapes differ from the artifact's model (exit code 2).
/// </summary>
public sealed record GoldenIdentity
{
    public const string FormatKey = "converter.golden", ModelTypeKey = "converter.model_type", FingerprintKey = "converter.config_fingerprint",
        VocabKey = "converter.vocab_size", HiddenKey = "converter.hidden_size", LayersKey = "converter.num_layers",
        ExpertsKey = "converter.routed_experts", TopKKey = "converter.experts_per_token", SourceWeightsKey = "converter.source_weights",
        ReferenceKey = "converter.reference", TokensKey = "converter.tokens", ModelKey = "converter.model";

    /// <summary>The format version <c>converter golden</c> writes.</summary>
    public const string FormatVersion = "1";

    public static GoldenIdentity Unknown { get; } = new();

    public string? ModelType { get; init; }
    /// <summary><see cref="Converter.Calibration.CalibrationData.Fingerprint"/> of the model's config.json.</summary>
    public string? ConfigFingerprint { get; init; }
    public int? VocabSize { get; init; }
    public int? HiddenSize { get; init; }
    public int? NumLayers { get; init; }
    public int? RoutedExperts { get; init; }
    public int? ExpertsPerToken { get; init; }
    /// <summary>The weight layout the reference was computed from (bf16, fp8-block, ...).</summary>
    public string? SourceWeights { get; init; }
    /// <summary>How the reference was computed (runtime, precision).</summary>
    public string? Reference { get; init; }
    /// <summary>Where the tokens came from.</summary>
    public string? Tokens { get; init; }
    /// <summary>The model folder's name.</summary>
    public string? Model { get; init; }

    public bool IsKnown => ModelType != null || ConfigFingerprint != null;

    public static GoldenIdentity FromMetadata(IReadOnlyDictionary<string, string> m)
    {
        string? S(string key) => m.TryGetValue(key, out var v) && v.Length > 0 ? v : null;
        int? I(string key) => S(key) is { } v ? int.TryParse(v, NumberStyles.Integer, CultureInfo.InvariantCulture, out var n) && n > 0 ? n
            : throw new InvalidDataException($"golden metadata '{key}' is '{v}', not a positive integer") : null;
        return new GoldenIdentity
        {
            ModelType = S(ModelTypeKey), ConfigFingerprint = S(FingerprintKey), VocabSize = I(VocabKey), HiddenSize = I(HiddenKey),
            NumLayers = I(LayersKey), RoutedExperts = I(ExpertsKey), ExpertsPerToken = I(TopKKey), SourceWeights = S(SourceWeightsKey),
            Reference = S(ReferenceKey), Tokens = S(TokensKey), Model = S(ModelKey),
        };
    }

    public Dictionary<string, string> ToMetadata()
    {
        var m = new Dictionary<string, string> { ["format"] = "pt", [FormatKey] = FormatVersion };
        void Put(string key, object? value)
        {
            if (value != null) m[key] = Convert.ToString(value, CultureInfo.InvariantCulture)!;
        }
        Put(ModelTypeKey, ModelType);
        Put(FingerprintKey, ConfigFingerprint);
        Put(VocabKey, VocabSize);
        Put(HiddenKey, HiddenSize);
        Put(LayersKey, NumLayers);
        Put(ExpertsKey, RoutedExperts);
        Put(TopKKey, ExpertsPerToken);
        Put(SourceWeightsKey, SourceWeights);
        Put(ReferenceKey, Reference);
        Put(TokensKey, Tokens);
        Put(ModelKey, Model);
        return m;
    }

    public override string ToString() => IsKnown
        ? $"{Model ?? "a model"} ({ModelType ?? "?"}, config {ConfigFingerprint ?? "?"}{(SourceWeights != null ? ", " + SourceWeights + " weights" : "")})"
        : "unknown model";
}

/// <summary>
/// The logits of a golden in compact form, per position: the <see cref="K"/> most probable tokens with their
/// log-probabilities (descending; ties by lower id), <see cref="M"/> tokens drawn from the rest (the tail) in proportion to
/// their probability (systematic sampling), their log-probabilities, the log of the tail's total probability, and the
/// log-sum-exp of the logits (so stored logits are <c>logprob + logsumexp</c>).
/// <para>
/// KL(golden || artifact) is then computed exactly as <c>sum_i p_i f(u_i)</c> with <c>u_i = log p_i - log q_i</c> and
/// <c>f(u) = u + e^-u - 1 &gt;= 0</c> (the same KL, since the q_i and p_i both sum to 1): every term is non-negative and
/// second order in the logit error, so the top-k part alone is a lower bound of the true KL, and the tail part is estimated
/// without bias from its samples (each carrying tail mass / M) with a small relative error (terms are chi-square-like, not
/// first-order differences that cancel).
/// </para>
/// </summary>
public sealed record CompactLogits(int Vocab, int K, int M, int[] TopIdx, float[] TopLogProbs, int[] TailIdx, float[] TailLogProbs,
    float[] TailLogMass, float[] LogSumExp)
{
    public int Positions => LogSumExp.Length;

    public void Validate(string path)
    {
        int n = Positions;
        if (TopIdx.Length != (long)n * K || TopLogProbs.Length != (long)n * K || TailIdx.Length != (long)n * M || TailLogProbs.Length != (long)n * M
            || TailLogMass.Length != n)
            throw new InvalidDataException($"{path}: compact logits have inconsistent sizes ({n} positions, k {K}, {M} tail samples)");
        void Ids(int[] ids, string name)
        {
            for (int i = 0; i < ids.Length; i++)
                if ((uint)ids[i] >= (uint)Vocab)
                    throw new InvalidDataException($"{path}: tensor '{name}' element {i} is token {ids[i]}, outside the vocabulary [0, {Vocab})");
        }
        Ids(TopIdx, GoldenSet.TopIdxName);
        Ids(TailIdx, GoldenSet.TailIdxName);
        for (int i = 0; i < TopLogProbs.Length; i++)
            if (!(TopLogProbs[i] <= 1e-4f) || float.IsNegativeInfinity(TopLogProbs[i]))
                throw new InvalidDataException($"{path}: tensor '{GoldenSet.TopLogProbsName}' element {i} is {TopLogProbs[i]}, not a finite log-probability");
        for (int i = 0; i < TailLogProbs.Length; i++)
            if (!(TailLogProbs[i] <= 1e-4f))
                throw new InvalidDataException($"{path}: tensor '{GoldenSet.TailLogProbsName}' element {i} is {TailLogProbs[i]}, not a log-probability");
        for (int i = 0; i < n; i++)
        {
            if (!float.IsFinite(LogSumExp[i])) throw new InvalidDataException($"{path}: tensor '{GoldenSet.LogSumExpName}' element {i} is {LogSumExp[i]}");
            if (!(TailLogMass[i] <= 1e-4f) && !float.IsNegativeInfinity(TailLogMass[i]))
                throw new InvalidDataException($"{path}: tensor '{GoldenSet.TailLogMassName}' element {i} is {TailLogMass[i]}, not a log-probability");
        }
    }

    /// <summary>
    /// Compacts one position's full logits: the top <paramref name="k"/> by a threshold from a sorted copy; the tail
    /// sampled systematically over its cumulative probability (in token order) from an offset drawn from
    /// <paramref name="seed"/>, so the same logits always give the same file. A token more probable than tail mass /
    /// samples can be drawn more than once; each draw carries the same weight. No samples when the top-k hold everything.
    /// </summary>
    public static (int[] TopIdx, float[] TopLp, int[] TailIdx, float[] TailLp, float TailLogMass, float Lse) CompactRow(
        ReadOnlySpan<float> logits, int k, int samples, ulong seed)
    {
        int v = logits.Length;
        k = Math.Min(k, v);
        double max = double.NegativeInfinity;
        foreach (var x in logits) max = Math.Max(max, x);
        double sum = 0;
        foreach (var x in logits) sum += Math.Exp(x - max);
        double lse = max + Math.Log(sum);

        // top-k by (logit desc, id asc)
        var order = new int[v];
        for (int i = 0; i < v; i++) order[i] = i;
        var keys = logits.ToArray();
        Comparison<int> cmp = (a, b) => keys[b] != keys[a] ? keys[b].CompareTo(keys[a]) : a.CompareTo(b);
        var top = SelectTop(order, keys, k);
        Array.Sort(top, cmp);
        var topLp = new float[k];
        var inTop = new bool[v];
        for (int j = 0; j < k; j++)
        {
            topLp[j] = (float)(logits[top[j]] - lse);
            inTop[top[j]] = true;
        }
        double tail = 0;
        for (int i = 0; i < v; i++)
            if (!inTop[i]) tail += Math.Exp(logits[i] - lse);
        float tailLogMass = tail > 0 ? (float)Math.Log(tail) : float.NegativeInfinity;
        var tailIdx = new int[tail > 0 ? samples : 0];
        var tailLp = new float[tailIdx.Length];
        if (tailIdx.Length > 0)
        {
            // systematic sampling: points (u + j) / M of the tail's cumulative mass
            double u = (Mix(seed) >> 11) * (1.0 / (1UL << 53));
            int j = 0, last = -1;
            double cum = 0;
            for (int i = 0; i < v && j < samples; i++)
            {
                if (inTop[i]) continue;
                last = i;
                cum += Math.Exp(logits[i] - lse) / tail;
                while (j < samples && (u + j) / samples < cum)
                {
                    tailIdx[j] = i;
                    tailLp[j] = (float)(logits[i] - lse);
                    j++;
                }
            }
            for (; j < samples; j++) // rounding left the last point(s) past the end: the last tail token
            {
                tailIdx[j] = last;
                tailLp[j] = (float)(logits[last] - lse);
            }
        }
        return (top, topLp, tailIdx, tailLp, tailLogMass, (float)lse);
    }

    private static int[] SelectTop(int[] order, float[] keys, int k)
    {
        if (k >= order.Length) return (int[])order.Clone();
        // threshold by a partial sort of a copy of the keys: the k-th largest value
        var copy = (float[])keys.Clone();
        Array.Sort(copy);
        float kth = copy[copy.Length - k];
        var result = new List<int>(k);
        foreach (var i in order)
            if (keys[i] > kth) result.Add(i);
        foreach (var i in order)
        {
            if (result.Count == k) break;
            if (keys[i] == kth) result.Add(i); // ties at the threshold: lowest ids first
        }
        return result.ToArray();
    }

    private static ulong Mix(ulong z)
    {
        z += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }
}
