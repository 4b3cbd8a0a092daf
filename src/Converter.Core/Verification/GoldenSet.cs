using Converter.Formats.Safetensors;
using Converter.Tensors;

namespace Converter.Verification;

/// <summary>
/// A golden evaluation file (golden/&lt;model&gt;/eval.safetensors) loaded and shape-checked: what the reference
/// implementation computed for a batch of held-out token sequences. Routing data is optional (the FP8 golden
/// has none): without it every position counts as stable.
/// </summary>
public sealed class GoldenSet
{
    public const string TokensName = "tokens";
    public const string LogitsName = "logits";
    public const string NllName = "nll";
    public const string HiddenStatesName = "hidden_states_seq0";
    public const string RouteTopKName = "route_topk_idx";
    public const string RouteMarginName = "route_margin";
    /// <summary>Residual streams of sequence 0 [entries, positions, streams, hidden]: the expanded embedding, then every
    /// layer's output (DeepSeek-V4's hyper-connection streams; the first positions of the sequence only).</summary>
    public const string ResidualStatesName = "hc_states_seq0";
    /// <summary>Sequence 0's hidden state after the head's collapse and the final norm [positions, hidden].</summary>
    public const string FinalHiddenName = "final_hidden_seq0";
    /// <summary>Sparse-attention selections [selecting layers, batch, seq, k] (DeepSeek-V4's lightning indexer; -1 = not
    /// attendable), their margins [selecting layers, batch, seq] (k-th minus (k+1)-th score; +inf where every attendable
    /// entry is selected) and the layers that select.</summary>
    public const string SelectionTopKName = "indexer_topk_idx", SelectionMarginName = "indexer_margin", SelectionLayersName = "indexer_layers";
    // The compact form (no 'logits'; see CompactLogits).
    public const string TopIdxName = "topk_idx";
    public const string TopLogProbsName = "topk_logprobs";
    public const string TailIdxName = "tail_idx";
    public const string TailLogProbsName = "tail_logprobs";
    public const string TailLogMassName = "tail_logmass";
    public const string LogSumExpName = "logsumexp";

    public string Path { get; }
    public int Batch { get; }
    public int Seq { get; }
    public int Vocab { get; }
    /// <summary>[batch, seq] token ids.</summary>
    public int[] Tokens { get; }
    /// <summary>[batch, seq, vocab]; null for a compact golden (see <see cref="Compact"/>).</summary>
    public float[]? Logits { get; }
    /// <summary>The compact form of the logits (top-k and sampled tail log-probabilities), or null for full logits.</summary>
    public CompactLogits? Compact { get; }
    /// <summary>Who made the golden and from which model (the file's metadata); empty for goldens made elsewhere.</summary>
    public GoldenIdentity Identity { get; private init; } = GoldenIdentity.Unknown;
    /// <summary>[batch, seq - 1]: NLL of token s+1 given tokens 0..s.</summary>
    public float[] Nll { get; }

    /// <summary>[layers + 1, seq, hidden] for sequence 0, or null.</summary>
    public float[]? HiddenStates { get; }
    /// <summary>Entries of <see cref="HiddenStates"/>: embedding output, each layer, the last after the final norm.</summary>
    public int HiddenStateCount { get; }
    public int HiddenSize { get; }

    /// <summary>[moeLayers, batch, seq, k] expert ids, or null.</summary>
    public int[]? RouteTopK { get; }
    /// <summary>[moeLayers, batch, seq] gap between the k-th and (k+1)-th selection score, or null.</summary>
    public float[]? RouteMargin { get; }
    public int MoeLayers { get; }
    public int TopK { get; }

    public bool HasRouting => RouteTopK != null;

    /// <summary>[entries, positions, width] of sequence 0 (width = streams x hidden), or null (see <see cref="ResidualStatesName"/>).</summary>
    public float[]? ResidualStates { get; private set; }
    public int ResidualStateCount { get; private set; }
    public int ResidualPositions { get; private set; }
    public int ResidualWidth { get; private set; }
    /// <summary>[positions, hidden] of sequence 0 after the final norm, or null (<see cref="FinalHiddenName"/>).</summary>
    public float[]? FinalHidden { get; private set; }
    public int FinalHiddenPositions { get; private set; }

    /// <summary>[selecting layers, batch, seq, k] selected key entries (-1: none), or null (<see cref="SelectionTopKName"/>).</summary>
    public int[]? SelectionTopK { get; private set; }
    /// <summary>[selecting layers, batch, seq] selection margins, or null.</summary>
    public float[]? SelectionMargin { get; private set; }
    public int SelectionLayers { get; private set; }
    public int SelectionK { get; private set; }
    public bool HasSelections => SelectionTopK != null;
    public int Positions => Batch * Seq;

    private GoldenSet(string path, int batch, int seq, int vocab, int[] tokens, float[]? logits, float[] nll,
        float[]? hidden, int hiddenCount, int hiddenSize, int[]? topk, float[]? margin, int moeLayers, int k, CompactLogits? compact = null)
    {
        Path = path;
        Batch = batch;
        Seq = seq;
        Vocab = vocab;
        Tokens = tokens;
        Logits = logits;
        Compact = compact;
        Nll = nll;
        HiddenStates = hidden;
        HiddenStateCount = hiddenCount;
        HiddenSize = hiddenSize;
        RouteTopK = topk;
        RouteMargin = margin;
        MoeLayers = moeLayers;
        TopK = k;
    }

    /// <summary>Builds a golden set from arrays already in memory (tests, other tools); shapes are checked.</summary>
    public static GoldenSet FromArrays(string name, int batch, int seq, int vocab, int[] tokens, float[] logits, float[] nll,
        float[]? hiddenStates = null, int hiddenStateCount = 0, int hiddenSize = 0,
        int[]? routeTopK = null, float[]? routeMargin = null, int moeLayers = 0, int topK = 0)
    {
        Require(name, TokensName, tokens.Length == (long)batch * seq, $"has {tokens.Length} elements, expected [{batch}, {seq}]");
        Require(name, LogitsName, logits.Length == (long)batch * seq * vocab, $"has {logits.Length} elements, expected [{batch}, {seq}, {vocab}]");
        Require(name, NllName, nll.Length == (long)batch * (seq - 1), $"has {nll.Length} elements, expected [{batch}, {seq - 1}]");
        if (hiddenStates != null)
            Require(name, HiddenStatesName, hiddenStates.Length == (long)hiddenStateCount * seq * hiddenSize,
                $"has {hiddenStates.Length} elements, expected [{hiddenStateCount}, {seq}, {hiddenSize}]");
        Require(name, RouteTopKName, (routeTopK == null) == (routeMargin == null), $"'{RouteTopKName}' and '{RouteMarginName}' must both be present or both absent");
        if (routeTopK != null)
        {
            Require(name, RouteTopKName, routeTopK.Length == (long)moeLayers * batch * seq * topK,
                $"has {routeTopK.Length} elements, expected [{moeLayers}, {batch}, {seq}, {topK}]");
            Require(name, RouteMarginName, routeMargin!.Length == (long)moeLayers * batch * seq,
                $"has {routeMargin.Length} elements, expected [{moeLayers}, {batch}, {seq}]");
        }
        CheckTokens(name, tokens, vocab);
        return new GoldenSet(name, batch, seq, vocab, tokens, logits, nll, hiddenStates, hiddenStates == null ? 0 : hiddenStateCount,
            hiddenStates == null ? 0 : hiddenSize, routeTopK, routeMargin, routeTopK == null ? 0 : moeLayers, routeTopK == null ? 0 : topK);
    }

    /// <summary>
    /// A golden from what another artifact computed (verify --reference with an artifact): its logits, the next-token NLL
    /// computed from them in float64, sequence 0's hidden states where it gave them; no routing (runners give no margins).
    /// </summary>
    public static GoldenSet FromOutputs(string name, int[] tokens, int batch, int seq, ArtifactOutputs outputs)
    {
        long n = (long)batch * seq;
        if (n == 0 || outputs.Logits.Length % n != 0) throw new InvalidDataException($"{name}: returned {outputs.Logits.Length} logits for {batch} x {seq} positions");
        int vocab = (int)(outputs.Logits.Length / n);
        var nll = new float[batch * (seq - 1)];
        var logits = outputs.Logits;
        Parallel.For(0, batch * (seq - 1), i =>
        {
            int b = i / (seq - 1), s = i % (seq - 1);
            var row = logits.AsSpan((int)(((long)b * seq + s) * vocab), vocab);
            double max = double.NegativeInfinity, sum = 0;
            foreach (var x in row) max = Math.Max(max, x);
            foreach (var x in row) sum += Math.Exp(x - max);
            nll[i] = (float)(max + Math.Log(sum) - row[tokens[b * seq + s + 1]]);
        });
        foreach (var x in logits)
            if (!float.IsFinite(x)) throw new InvalidDataException($"{name}: the reference artifact computed non-finite logits");
        float[]? hidden = null;
        int count = 0, size = 0;
        if (outputs.HiddenStates is { Length: > 1 } hs && hs[0].Length % seq == 0)
        {
            count = hs.Length;
            size = hs[0].Length / seq;
            hidden = hs.SelectMany(x => x).ToArray();
        }
        return FromArrays(name, batch, seq, vocab, tokens, logits, nll, hidden, count, size);
    }

    /// <summary>The same golden with its logits in compact form (full logits dropped) and/or another identity.</summary>
    public GoldenSet With(CompactLogits? compact = null, GoldenIdentity? identity = null)
    {
        if (compact != null && compact.Positions != Positions)
            throw new ArgumentException($"compact logits for {compact.Positions} positions, the golden has {Positions}");
        return new GoldenSet(Path, Batch, Seq, Vocab, Tokens, compact != null ? null : Logits, Nll, HiddenStates, HiddenStateCount, HiddenSize,
            RouteTopK, RouteMargin, MoeLayers, TopK, compact ?? Compact) { Identity = identity ?? Identity };
    }

    /// <summary>Loads and validates <paramref name="path"/>; errors name the file and the tensor.</summary>
    public static GoldenSet Load(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"{path}: golden file not found", path);
        using var f = SafetensorsFile.Open(path);

        var tokInfo = Get(f, TokensName, 2, integer: true);
        int batch = Dim(tokInfo, 0), seq = Dim(tokInfo, 1);
        if (batch < 1 || seq < 2)
            throw Bad(path, TokensName, $"shape {tokInfo.ShapeText} needs at least one sequence of two tokens");

        var identity = GoldenIdentity.FromMetadata(f.Metadata);
        bool compactForm = !f.Contains(LogitsName) && f.Contains(TopIdxName);
        int vocab;
        TensorInfo? logInfo = null;
        if (compactForm)
        {
            vocab = identity.VocabSize ?? throw new InvalidDataException(
                $"{path}: a compact golden ('{TopIdxName}' without '{LogitsName}') needs the vocabulary size in its metadata '{GoldenIdentity.VocabKey}'");
        }
        else
        {
            logInfo = Get(f, LogitsName, 3, integer: false);
            ExpectShape(logInfo, [batch, seq, -1], $"[{batch}, {seq}, vocab] to match '{TokensName}' {tokInfo.ShapeText}");
            vocab = Dim(logInfo, 2);
            if (identity.VocabSize is int mv && mv != vocab)
                throw Bad(path, LogitsName, $"has vocabulary {vocab} but the metadata '{GoldenIdentity.VocabKey}' says {mv}");
        }
        if (vocab < 2) throw Bad(path, LogitsName, $"vocabulary of {vocab} is too small");

        var nllInfo = Get(f, NllName, 2, integer: false);
        ExpectShape(nllInfo, [batch, seq - 1], $"[{batch}, {seq - 1}] (one NLL per predicted token of '{TokensName}' {tokInfo.ShapeText})");

        var tokens = ReadInt32(f, tokInfo);
        CheckTokens(path, tokens, vocab);
        float[]? logits = null;
        CompactLogits? compact = null;
        if (logInfo != null)
        {
            logits = ReadFloat(f, logInfo);
            for (int i = 0; i < logits.Length; i++)
                if (!float.IsFinite(logits[i]))
                    throw Bad(path, LogitsName, $"element {i} is {logits[i]}; golden logits must be finite");
        }
        else
        {
            compact = LoadCompact(f, batch, seq, vocab, tokInfo.ShapeText);
        }
        var nll = ReadFloat(f, nllInfo);

        float[]? hidden = null;
        int hiddenCount = 0, hiddenSize = 0;
        if (f.Contains(HiddenStatesName))
        {
            var hInfo = Get(f, HiddenStatesName, 3, integer: false);
            ExpectShape(hInfo, [-1, seq, -1], $"[layers + 1, {seq}, hidden] for sequence 0 of '{TokensName}' {tokInfo.ShapeText}");
            hiddenCount = Dim(hInfo, 0);
            hiddenSize = Dim(hInfo, 2);
            if (hiddenCount < 2 || hiddenSize < 1)
                throw Bad(path, HiddenStatesName, $"shape {hInfo.ShapeText} needs the embedding output and at least one layer");
            hidden = ReadFloat(f, hInfo);
        }

        int[]? topk = null;
        float[]? margin = null;
        int moeLayers = 0, k = 0;
        bool hasIdx = f.Contains(RouteTopKName), hasMargin = f.Contains(RouteMarginName);
        if (hasIdx != hasMargin)
            throw Bad(path, hasIdx ? RouteMarginName : RouteTopKName,
                $"is missing while '{(hasIdx ? RouteTopKName : RouteMarginName)}' is present (routing data needs both)");
        if (hasIdx)
        {
            var iInfo = Get(f, RouteTopKName, 4, integer: true);
            ExpectShape(iInfo, [-1, batch, seq, -1], $"[moe_layers, {batch}, {seq}, k] to match '{TokensName}' {tokInfo.ShapeText}");
            moeLayers = Dim(iInfo, 0);
            k = Dim(iInfo, 3);
            if (moeLayers < 1 || k < 1) throw Bad(path, RouteTopKName, $"shape {iInfo.ShapeText} has no routing entries");
            var mInfo = Get(f, RouteMarginName, 3, integer: false);
            ExpectShape(mInfo, [moeLayers, batch, seq], $"[{moeLayers}, {batch}, {seq}] to match '{RouteTopKName}' {iInfo.ShapeText}");
            topk = ReadInt32(f, iInfo);
            for (int i = 0; i < topk.Length; i++)
                if (topk[i] < 0)
                    throw Bad(path, RouteTopKName, $"element {i} is a negative expert id ({topk[i]})");
            margin = ReadFloat(f, mInfo);
        }

        var g = new GoldenSet(path, batch, seq, vocab, tokens, logits, nll, hidden, hiddenCount, hiddenSize, topk, margin, moeLayers, k, compact)
        {
            Identity = identity,
        };
        return LoadStreamsAndSelections(f, g, tokInfo);
    }

    /// <summary>The optional residual streams, final hidden state and sparse-attention selections (DeepSeek-V4's goldens).</summary>
    private static GoldenSet LoadStreamsAndSelections(SafetensorsFile f, GoldenSet g, TensorInfo tokInfo)
    {
        int batch = g.Batch, seq = g.Seq;
        if (f.Contains(ResidualStatesName))
        {
            var info = Get(f, ResidualStatesName, 4, integer: false);
            int count = Dim(info, 0), positions = Dim(info, 1);
            if (count < 2 || positions < 1 || positions > seq)
                throw Bad(f.Path, ResidualStatesName, $"has shape {info.ShapeText}, expected [layers + 1, positions <= {seq}, streams, hidden]");
            (g.ResidualStates, g.ResidualStateCount, g.ResidualPositions, g.ResidualWidth) = (ReadFloat(f, info), count, positions, Dim(info, 2) * Dim(info, 3));
        }
        if (f.Contains(FinalHiddenName))
        {
            var info = Get(f, FinalHiddenName, 2, integer: false);
            if (Dim(info, 0) < 1 || Dim(info, 0) > seq)
                throw Bad(f.Path, FinalHiddenName, $"has shape {info.ShapeText}, expected [positions <= {seq}, hidden]");
            (g.FinalHidden, g.FinalHiddenPositions) = (ReadFloat(f, info), Dim(info, 0));
        }
        bool hasIdx = f.Contains(SelectionTopKName), hasMargin = f.Contains(SelectionMarginName);
        if (hasIdx != hasMargin)
            throw Bad(f.Path, hasIdx ? SelectionMarginName : SelectionTopKName,
                $"is missing while '{(hasIdx ? SelectionTopKName : SelectionMarginName)}' is present (selection data needs both)");
        if (hasIdx)
        {
            var iInfo = Get(f, SelectionTopKName, 4, integer: true);
            ExpectShape(iInfo, [-1, batch, seq, -1], $"[selecting layers, {batch}, {seq}, k] to match '{TokensName}' {tokInfo.ShapeText}");
            int layers = Dim(iInfo, 0), k = Dim(iInfo, 3);
            if (layers < 1 || k < 1) throw Bad(f.Path, SelectionTopKName, $"shape {iInfo.ShapeText} has no selections");
            var mInfo = Get(f, SelectionMarginName, 3, integer: false);
            ExpectShape(mInfo, [layers, batch, seq], $"[{layers}, {batch}, {seq}] to match '{SelectionTopKName}' {iInfo.ShapeText}");
            var topk = ReadInt32(f, iInfo);
            for (int i = 0; i < topk.Length; i++)
                if (topk[i] < -1)
                    throw Bad(f.Path, SelectionTopKName, $"element {i} is {topk[i]}; entries are ids or -1");
            (g.SelectionTopK, g.SelectionMargin, g.SelectionLayers, g.SelectionK) = (topk, ReadFloat(f, mInfo), layers, k);
        }
        return g;
    }

    private static CompactLogits LoadCompact(SafetensorsFile f, int batch, int seq, int vocab, string tokensShape)
    {
        var topInfo = Get(f, TopIdxName, 3, integer: true);
        ExpectShape(topInfo, [batch, seq, -1], $"[{batch}, {seq}, k] to match '{TokensName}' {tokensShape}");
        int k = Dim(topInfo, 2);
        if (k < 1) throw Bad(f.Path, TopIdxName, "keeps no entry per position");
        var lpInfo = Get(f, TopLogProbsName, 3, integer: false);
        ExpectShape(lpInfo, [batch, seq, k], $"[{batch}, {seq}, {k}] to match '{TopIdxName}' {topInfo.ShapeText}");
        var massInfo = Get(f, TailLogMassName, 2, integer: false);
        ExpectShape(massInfo, [batch, seq], $"[{batch}, {seq}]");
        var lseInfo = Get(f, LogSumExpName, 2, integer: false);
        ExpectShape(lseInfo, [batch, seq], $"[{batch}, {seq}]");
        int m = 0;
        int[] tailIdx = [];
        float[] tailLp = [];
        if (f.Contains(TailIdxName))
        {
            var tInfo = Get(f, TailIdxName, 3, integer: true);
            ExpectShape(tInfo, [batch, seq, -1], $"[{batch}, {seq}, samples]");
            m = Dim(tInfo, 2);
            var tlInfo = Get(f, TailLogProbsName, 3, integer: false);
            ExpectShape(tlInfo, [batch, seq, m], $"[{batch}, {seq}, {m}] to match '{TailIdxName}' {tInfo.ShapeText}");
            tailIdx = ReadInt32(f, tInfo);
            tailLp = ReadFloat(f, tlInfo);
        }
        var c = new CompactLogits(vocab, k, m, ReadInt32(f, topInfo), ReadFloat(f, lpInfo), tailIdx, tailLp, ReadFloat(f, massInfo), ReadFloat(f, lseInfo));
        c.Validate(f.Path);
        return c;
    }

    /// <summary>
    /// Checks the golden against the model it is meant to verify; throws <see cref="InvalidDataException"/>
    /// naming both sides on the first mismatch. Null arguments are not checked.
    /// </summary>
    public void CheckModel(int vocabSize, int? maxPositions = null, int? hiddenSize = null, int? numLayers = null,
        int? moeLayers = null, int? expertsPerToken = null)
    {
        if (vocabSize != Vocab)
            throw new InvalidDataException($"{Path}: tensor '{LogitsName}' has vocabulary {Vocab} but the model's vocab_size is {vocabSize}");
        if (maxPositions is int mp && Seq > mp)
            throw new InvalidDataException($"{Path}: tensor '{TokensName}' has sequence length {Seq}, longer than the model's max_position_embeddings {mp}");
        if (HiddenStates != null && hiddenSize is int h && h != HiddenSize)
            throw new InvalidDataException($"{Path}: tensor '{HiddenStatesName}' has hidden size {HiddenSize} but the model's hidden_size is {h}");
        if (HiddenStates != null && numLayers is int l && l + 1 != HiddenStateCount)
            throw new InvalidDataException($"{Path}: tensor '{HiddenStatesName}' has {HiddenStateCount} entries but the model has {l} layers (expected {l + 1})");
        if (ResidualStates != null && numLayers is int rl && rl + 1 != ResidualStateCount)
            throw new InvalidDataException($"{Path}: tensor '{ResidualStatesName}' has {ResidualStateCount} entries but the model has {rl} layers (expected {rl + 1})");
        if (ResidualStates != null && hiddenSize is int rh && ResidualWidth % rh != 0)
            throw new InvalidDataException($"{Path}: tensor '{ResidualStatesName}' holds {ResidualWidth} values a position, not whole streams of the model's hidden_size {rh}");
        if (HasRouting && moeLayers is int m && m != MoeLayers)
            throw new InvalidDataException($"{Path}: tensor '{RouteTopKName}' has {MoeLayers} MoE layers but the model has {m}");
        if (HasRouting && expertsPerToken is int e && e != TopK)
            throw new InvalidDataException($"{Path}: tensor '{RouteTopKName}' selects {TopK} experts per token but the model's num_experts_per_tok is {e}");
    }

    /// <summary>
    /// Checks the golden against an architecture's config (vocabulary, positions, layers, routing) and, where the golden
    /// states them, its model type and config fingerprint.
    /// </summary>
    public void CheckModel(Converter.Models.ModelArchitecture arch)
    {
        int moe = 0;
        for (int i = 0; i < arch.NumLayers; i++)
            if (arch.IsMoeLayer(i)) moe++;
        if (Identity.ModelType is { } type && type != arch.ModelType)
            throw new InvalidDataException($"{Path}: the golden was computed from a {type} model ({Identity}), not from this {arch.ModelType} model");
        string fp = Converter.Calibration.CalibrationData.Fingerprint(arch);
        if (Identity.ConfigFingerprint is { } gfp && gfp != fp)
            throw new InvalidDataException($"{Path}: the golden was computed from {Identity}, whose config fingerprint {gfp} is not this model's {fp}; " +
                                           "make a golden of this model with `converter golden`");
        CheckModel(arch.VocabSize, arch.Config.IntOrNull("max_position_embeddings"), arch.HiddenSize, arch.NumLayers,
            moe, arch.NumExpertsPerToken);
        CheckShapes(arch.VocabSize, arch.HiddenSize, arch.NumLayers, arch.NumRoutedExperts, arch.NumExpertsPerToken);
    }

    /// <summary>
    /// Checks what an artifact states of its model (a GGUF file's metadata, an ONNX file's shapes) against the golden's
    /// identity and tensor shapes; null arguments are not checked. Throws <see cref="InvalidDataException"/>.
    /// </summary>
    public void CheckShapes(int? vocab, int? hidden, int? layers, int? routedExperts, int? expertsPerToken, string? artifact = null)
    {
        string who = artifact ?? "the model";
        void Same(string what, int? golden, int? model)
        {
            if (golden is int g && model is int m && g != m)
                throw new InvalidDataException($"{Path}: the golden's {what} is {g} but {who} has {m}: the golden belongs to another model ({Identity})");
        }
        Same("vocabulary", Vocab, vocab);
        Same("hidden size", Identity.HiddenSize ?? (HiddenStates != null ? HiddenSize : null), hidden);
        Same("layer count", Identity.NumLayers ?? (HiddenStates != null ? HiddenStateCount - 1 : null), layers);
        Same("routed expert count", Identity.RoutedExperts, routedExperts);
        Same("experts per token", Identity.ExpertsPerToken ?? (HasRouting ? TopK : null), expertsPerToken);
    }

    /// <summary>
    /// Checks the golden against a config.json of any model family, through the keys Hugging Face configs share
    /// (vocab_size, max_position_embeddings, hidden_size, num_hidden_layers, num_experts_per_tok); an architecture
    /// this project maps is checked through <see cref="CheckModel(Converter.Models.ModelArchitecture)"/> instead,
    /// which also knows its MoE layer count.
    /// </summary>
    public void CheckModel(Converter.Models.ConfigJson config)
    {
        if (config.ModelType is { } type && Converter.Models.ArchitectureRegistry.Supported.Contains(type))
        {
            CheckModel(Converter.Models.ArchitectureRegistry.FromConfig(config));
            return;
        }
        CheckModel(config.Int("vocab_size"), config.IntOrNull("max_position_embeddings"), config.IntOrNull("hidden_size"),
            config.IntOrNull("num_hidden_layers"), null, config.IntOrNull("num_experts_per_tok"));
    }

    /// <summary>Checks that an artifact's outputs have the golden's shapes; names the artifact on mismatch.</summary>
    public void CheckOutputs(ArtifactOutputs outputs, string artifact)
    {
        long want = (long)Batch * Seq * Vocab;
        if (outputs.Logits.Length != want)
        {
            string hint = outputs.Logits.Length % ((long)Batch * Seq) == 0
                ? $" (vocabulary {outputs.Logits.Length / ((long)Batch * Seq)} vs the golden's {Vocab})" : "";
            throw new InvalidDataException($"{artifact}: returned {outputs.Logits.Length} logits, golden '{LogitsName}' in {Path} has [{Batch}, {Seq}, {Vocab}] = {want}{hint}");
        }
        if (outputs.HiddenStates is { } hs && HiddenStates != null)
        {
            if (hs.Length != HiddenStateCount)
                throw new InvalidDataException($"{artifact}: returned {hs.Length} hidden states, golden '{HiddenStatesName}' in {Path} has {HiddenStateCount}");
            for (int i = 0; i < hs.Length; i++)
                if (hs[i].Length != (long)Seq * HiddenSize)
                    throw new InvalidDataException($"{artifact}: hidden state {i} has {hs[i].Length} values, golden '{HiddenStatesName}' in {Path} has [{Seq}, {HiddenSize}]");
        }
        CheckStreamsAndSelections(outputs, artifact);
        if (outputs.RoutingTopK is { } rt && HasRouting)
        {
            if (rt.Length != MoeLayers)
                throw new InvalidDataException($"{artifact}: returned routing for {rt.Length} MoE layers, golden '{RouteTopKName}' in {Path} has {MoeLayers}");
            for (int i = 0; i < rt.Length; i++)
                if (rt[i].Length != (long)Batch * Seq * TopK)
                    throw new InvalidDataException($"{artifact}: routing of MoE layer {i} has {rt[i].Length} ids, golden '{RouteTopKName}' in {Path} has [{Batch}, {Seq}, {TopK}]");
        }
    }

    /// <summary>Checks residual streams and selections an artifact returned against the golden's shapes.</summary>
    private void CheckStreamsAndSelections(ArtifactOutputs outputs, string artifact)
    {
        if (outputs.ResidualStates is { } rs && ResidualStates != null)
        {
            if (rs.Length != ResidualStateCount)
                throw new InvalidDataException($"{artifact}: returned {rs.Length} residual states, golden '{ResidualStatesName}' in {Path} has {ResidualStateCount}");
            for (int i = 0; i < rs.Length; i++)
                if (rs[i].Length < (long)ResidualPositions * ResidualWidth || rs[i].Length % ResidualWidth != 0)
                    throw new InvalidDataException($"{artifact}: residual state {i} has {rs[i].Length} values, golden '{ResidualStatesName}' in {Path} has {ResidualWidth} a position for {ResidualPositions} positions");
        }
        if (outputs.Selections is { } sel && SelectionTopK != null)
        {
            if (sel.Length != SelectionLayers)
                throw new InvalidDataException($"{artifact}: returned selections of {sel.Length} layers, golden '{SelectionTopKName}' in {Path} has {SelectionLayers}");
            for (int i = 0; i < sel.Length; i++)
                if (sel[i].Length == 0 || sel[i].Length % Positions != 0)
                    throw new InvalidDataException($"{artifact}: selections of layer {i} have {sel[i].Length} ids, not a whole number per position of [{Batch}, {Seq}]");
        }
    }

    /// <summary>Per position (batch-major): true when every MoE layer's routing margin is at least <paramref name="threshold"/>
    /// and, with <paramref name="selectionThreshold"/>, every selecting layer's selection margin is at least that.</summary>
    public bool[] StableMask(double threshold, double? selectionThreshold = null)
    {
        var stable = new bool[Positions];
        Array.Fill(stable, true);
        int n = Positions;
        void Apply(float[]? margins, int layers, double t)
        {
            if (margins == null) return;
            for (int m = 0; m < layers; m++)
            {
                var row = margins.AsSpan(m * n, n);
                for (int p = 0; p < n; p++)
                    if (!(row[p] >= t)) stable[p] = false; // NaN margins count as unstable
            }
        }
        Apply(RouteMargin, MoeLayers, threshold);
        if (selectionThreshold is double st) Apply(SelectionMargin, SelectionLayers, st);
        return stable;
    }

    /// <summary>Smallest selection margin over selecting layers at a position, or +inf without selection data.</summary>
    public float MinSelectionMargin(int position)
    {
        if (SelectionMargin == null) return float.PositiveInfinity;
        float min = float.PositiveInfinity;
        for (int m = 0; m < SelectionLayers; m++) min = MathF.Min(min, SelectionMargin[m * Positions + position]);
        return min;
    }

    /// <summary>Smallest routing margin over MoE layers at a position, or +inf without routing data.</summary>
    public float MinMargin(int position)
    {
        if (RouteMargin == null) return float.PositiveInfinity;
        float min = float.PositiveInfinity;
        for (int m = 0; m < MoeLayers; m++) min = MathF.Min(min, RouteMargin[m * Positions + position]);
        return min;
    }

    private static void CheckTokens(string path, int[] tokens, int vocab)
    {
        for (int i = 0; i < tokens.Length; i++)
            if ((uint)tokens[i] >= (uint)vocab)
                throw Bad(path, TokensName, $"element {i} is token {tokens[i]}, outside the vocabulary [0, {vocab}) of '{LogitsName}'");
    }

    private static TensorInfo Get(SafetensorsFile f, string name, int rank, bool integer)
    {
        if (!f.Contains(name)) throw Bad(f.Path, name, "is missing");
        var info = f.Info(name);
        if (info.Shape.Length != rank)
            throw Bad(f.Path, name, $"has rank {info.Shape.Length} (shape {info.ShapeText}), expected rank {rank}");
        bool ok = integer ? info.DType is DType.I32 or DType.I64 or DType.I16 or DType.U8 or DType.I8
                          : info.DType is DType.F32 or DType.F64 or DType.BF16 or DType.F16;
        if (!ok) throw Bad(f.Path, name, $"is {info.DType}, expected {(integer ? "an integer" : "a floating-point")} dtype");
        foreach (var d in info.Shape)
            if (d > int.MaxValue) throw Bad(f.Path, name, $"shape {info.ShapeText} is too large");
        return info;
    }

    private static void ExpectShape(TensorInfo info, int[] expected, string what)
    {
        for (int i = 0; i < expected.Length; i++)
            if (expected[i] >= 0 && info.Shape[i] != expected[i])
                throw Bad(info.File, info.Name, $"has shape {info.ShapeText}, expected {what}");
    }

    private static int Dim(TensorInfo info, int i) => (int)info.Shape[i];

    private static float[] ReadFloat(SafetensorsFile f, TensorInfo info)
    {
        using var t = f.Read(info);
        return TensorConvert.ToFloat32(t);
    }

    private static int[] ReadInt32(SafetensorsFile f, TensorInfo info)
    {
        using var t = f.Read(info);
        if (info.DType == DType.I32) return t.As<int>().ToArray();
        var wide = TensorConvert.ToInt64(t);
        var result = new int[wide.Length];
        for (int i = 0; i < wide.Length; i++)
        {
            if (wide[i] is < int.MinValue or > int.MaxValue)
                throw Bad(info.File, info.Name, $"element {i} ({wide[i]}) does not fit in int32");
            result[i] = (int)wide[i];
        }
        return result;
    }

    private static void Require(string path, string tensor, bool ok, string message)
    {
        if (!ok) throw Bad(path, tensor, message);
    }

    private static InvalidDataException Bad(string path, string tensor, string message) =>
        new($"{path}: tensor '{tensor}' {message}");
}
