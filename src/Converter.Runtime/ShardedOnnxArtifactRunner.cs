using System.Globalization;
using Converter.Pipelines;
using Converter.Sharding;
using Converter.Verification;
using Microsoft.ML.OnnxRuntime.Tensors;
using N = Converter.Decoder.Onnx.OnnxDecoderNames;

namespace Converter.Runtime;

/// <summary>
/// Runs a sharded output (<c>shard --onnx</c>: placement.json and rank-XXXXX/model.onnx) as one model. ONNX Runtime
/// on CPU has no collective operators, so the ranks' routed partials are summed here in graph order: for each MoE
/// layer L in order, every rank runs with the peer sums of the layers before L and returns its <c>moe_partial.L</c>;
/// rank r then gets <c>moe_peer_sum.L</c> = the sum of the other ranks' partials, added in rank order. After the
/// last MoE layer one more run per rank gives the logits (and hidden states and routing), which must agree across
/// ranks: the largest disagreement is reported in <see cref="Description"/>. Cost: (MoE layers + 1) x ranks full
/// forward runs per batch (each run recomputes the layers before L), fine for a correctness check, not for serving.
/// </summary>
public sealed class ShardedOnnxArtifactRunner : IArtifactRunner
{
    private readonly string _dir;
    private readonly ExpertPlacement _placement;
    private readonly OnnxArtifactRunner[] _ranks;
    private readonly int[] _moeLayers;
    private readonly string _base;
    private double? _maxDisagreement; // the largest |logit difference| between any rank and rank 0 in the last batch
    private int _runs;

    public string Description => _base + (_maxDisagreement is { } d
        ? $"; {_runs} rank runs per batch, ranks' logits agree within {d.ToString("G3", CultureInfo.InvariantCulture)}"
        : "");

    public ShardedOnnxArtifactRunner(string dir, OnnxRunnerOptions? options = null)
    {
        _dir = Path.GetFullPath(dir);
        _placement = PlacementJson.Read(_dir);
        int n = _placement.Ranks;
        var folders = Directory.GetDirectories(_dir, "rank-*").Select(Path.GetFileName).Order(StringComparer.Ordinal).ToArray();
        var expected = Enumerable.Range(0, n).Select(ShardPipeline.RankFolderName).ToArray();
        if (!folders.SequenceEqual(expected))
            throw new InvalidDataException($"{_dir}: placement.json has {n} ranks but the folder holds [{string.Join(", ", folders)}] (expected {expected[0]}..{expected[^1]})");
        _ranks = new OnnxArtifactRunner[n];
        try
        {
            for (int r = 0; r < n; r++)
            {
                var model = Path.Combine(_dir, expected[r], "model.onnx");
                if (!File.Exists(model))
                    throw new FileNotFoundException($"{model}: rank {r} has no ONNX model (shard with --onnx to write one per rank)", model);
                _ranks[r] = new OnnxArtifactRunner(model, options);
            }
            _moeLayers = CheckRanks(n);
        }
        catch
        {
            foreach (var x in _ranks) x?.Dispose();
            throw;
        }
        _base = $"sharded ONNX, {n} ranks ({_placement.Label}), ONNX Runtime per rank: {_ranks[0].Description.Split(" on ")[0]}";
    }

    /// <summary>Every rank model must say it is rank r of N, list the same MoE layers, and hold exactly the placement's experts.</summary>
    private int[] CheckRanks(int n)
    {
        int[]? layers = null;
        for (int r = 0; r < n; r++)
        {
            var m = _ranks[r];
            string where = Path.Combine(_dir, ShardPipeline.RankFolderName(r), "model.onnx");
            string Need(string key) => m.Metadata(key) ?? throw new InvalidDataException($"{where}: not an expert-parallel rank model (no '{key}' metadata)");
            if (Need(N.RankKey) != r.ToString(CultureInfo.InvariantCulture) || Need(N.RanksKey) != n.ToString(CultureInfo.InvariantCulture))
                throw new InvalidDataException($"{where}: the model is rank {Need(N.RankKey)} of {Need(N.RanksKey)}, the placement expects rank {r} of {n}");
            var mine = Need(N.ShardLayersKey).Split(',', StringSplitOptions.RemoveEmptyEntries).Select(x => int.Parse(x, CultureInfo.InvariantCulture)).ToArray();
            if (layers != null && !layers.SequenceEqual(mine))
                throw new InvalidDataException($"{where}: MoE layers [{string.Join(", ", mine)}] differ from rank 0's [{string.Join(", ", layers)}]");
            layers = mine;
            foreach (var l in mine)
            {
                var lp = _placement.Layer(l) ?? throw new InvalidDataException($"{where}: MoE layer {l} is not in {PlacementJson.FileName}");
                var (experts, shares) = RankExperts.Slots(lp, r);
                string want = string.Join(",", experts.Select((x, i) => $"{x}:{((float)shares[i]).ToString("R", CultureInfo.InvariantCulture)}"));
                string got = Need(N.ShardLayerKey(l));
                if (got != want)
                    throw new InvalidDataException($"{where}: layer {l} computes experts:shares [{got}], {PlacementJson.FileName} gives rank {r} [{want}]");
                if (!m.HasInput(N.PeerSum(l)) || !m.HasOutput(N.Partial(l)))
                    throw new InvalidDataException($"{where}: layer {l} lacks the '{N.PeerSum(l)}' input or the '{N.Partial(l)}' output");
            }
        }
        return layers!;
    }

    public ArtifactOutputs Run(int[] tokens, int batch, int seq, bool hiddenStates, bool routing)
    {
        int n = _ranks.Length;
        var peers = new Dictionary<string, DenseTensor<float>>[n];
        for (int r = 0; r < n; r++) peers[r] = new Dictionary<string, DenseTensor<float>>(StringComparer.Ordinal);
        int runs = 0;
        foreach (var layer in _moeLayers)
        {
            string name = N.Partial(layer);
            var partials = new float[n][];
            for (int r = 0; r < n; r++)
            {
                partials[r] = _ranks[r].RunOutputs(tokens, batch, seq, peers[r], [name])[name];
                runs++;
            }
            int len = partials[0].Length;
            int hidden = len / (batch * seq);
            for (int r = 0; r < n; r++)
            {
                var sum = new float[len];
                for (int q = 0; q < n; q++)
                {
                    if (q == r) continue;
                    var p = partials[q];
                    for (int i = 0; i < len; i++) sum[i] += p[i];
                }
                peers[r][N.PeerSum(layer)] = new DenseTensor<float>(sum, [batch, seq, hidden]);
            }
        }
        ArtifactOutputs? first = null;
        double worst = 0;
        for (int r = 0; r < n; r++)
        {
            var o = _ranks[r].Run(tokens, batch, seq, r == 0 && hiddenStates, r == 0 && routing, peers[r], null, out _);
            runs++;
            if (first == null)
            {
                first = o;
                continue;
            }
            for (int i = 0; i < o.Logits.Length; i++)
            {
                double d = Math.Abs((double)o.Logits[i] - first.Logits[i]);
                if (!(d <= worst)) worst = double.IsNaN(d) ? double.PositiveInfinity : d;
            }
        }
        _maxDisagreement = worst;
        _runs = runs;
        return first!;
    }

    /// <summary>Opens sharded outputs for <see cref="ArtifactRunnerFactory"/> (<c>verify</c>).</summary>
    public static IArtifactRunner Open(string path, RunnerOptions options) => new ShardedOnnxArtifactRunner(path, OnnxRunnerOptions.From(options));

    /// <summary>Registers <see cref="Open"/> as the factory's sharded-output runner.</summary>
    public static ArtifactRunnerFactory RegisterWith(ArtifactRunnerFactory factory) => factory.Register(ArtifactKind.ShardedOnnx, Open);

    public void Dispose()
    {
        foreach (var r in _ranks) r?.Dispose();
    }
}
