using System.Runtime.InteropServices;
using System.Text.Json.Nodes;
using Converter.Decoder.Onnx;
using Converter.Formats.Safetensors;
using Converter.Models;
using Converter.Pipelines;
using Converter.Runtime;
using Converter.Tensors;
using Converter.Verification;
using Xunit.Abstractions;

namespace Converter.Tests.Onnx;

/// <summary>
/// DeepSeek-V4 configs the bundled references lack (layer patterns and compress ratios, hash-layer counts, head and rope
/// sizes, stream counts and Sinkhorn iterations, swiglu limits, windows, indexer top-k, routing options), with random
/// weights, exported to ONNX and run through ONNX Runtime against <see cref="DeepseekV4ReferenceForward"/>.
/// </summary>
public class DeepseekV4VariationTests(ITestOutputHelper log)
{
    /// <summary>tiny-dsv4's config (no MTP), edited.</summary>
    public static JsonObject Config(Action<JsonObject>? edit = null)
    {
        var c = JsonNode.Parse(File.ReadAllText(Path.Combine(TestData.Model("tiny-dsv4"), "config.json")))!.AsObject();
        c["num_nextn_predict_layers"] = 0;
        edit?.Invoke(c);
        return c;
    }

    /// <summary>
    /// A deterministic random F32 checkpoint for a deepseek_v4 config (names and shapes from the tensor map): linear
    /// weights uniform in ±1/sqrt(fan_in), norms near 1, hyper-connection bases and scales of order 1, sinks, position
    /// biases and the router bias small, tid2eid distinct random experts per token.
    /// </summary>
    public static string RandomCheckpoint(string dir, JsonObject config, ulong seed = 7)
    {
        Directory.CreateDirectory(dir);
        var cfgPath = Path.Combine(dir, "config.json");
        File.WriteAllText(cfgPath, config.ToJsonString());
        var arch = ArchitectureRegistry.FromConfig(new ConfigJson(cfgPath, config));
        var tensors = arch.ExpectedTensors();
        ulong state = seed * 0x9E3779B97F4A7C15UL + 1;
        double Next()
        {
            state ^= state << 13; state ^= state >> 7; state ^= state << 17;
            return (state >> 11) * (1.0 / (1UL << 53)) * 2 - 1;
        }
        bool IsTable(ExpectedTensor t) => t.Name.EndsWith("tid2eid", StringComparison.Ordinal);
        var stage = dir + ".st";
        using (var w = new SafetensorsWriter(stage, tensors.Select(t => new TensorSpec(t.Name, IsTable(t) ? DType.I32 : DType.F32, t.Shape)).ToList(), long.MaxValue, false))
        {
            foreach (var t in tensors)
            {
                long n = t.Shape.Aggregate(1L, (a, b) => a * b);
                if (IsTable(t))
                {
                    int experts = arch.NumRoutedExperts, k = (int)t.Shape[1];
                    var ids = new int[n];
                    for (long r = 0; r < t.Shape[0]; r++)
                    {
                        var perm = Enumerable.Range(0, experts).ToArray();
                        for (int i = experts - 1; i > 0; i--) { int j = (int)((Next() + 1) / 2 * (i + 1)) % (i + 1); (perm[i], perm[j]) = (perm[j], perm[i]); }
                        perm.AsSpan(0, k).CopyTo(ids.AsSpan((int)(r * k), k));
                    }
                    w.Write(t.Name, MemoryMarshal.AsBytes(ids.AsSpan()));
                    continue;
                }
                string name = t.Name;
                double amp, offset = 0;
                if (t.Role.Kind == TensorKind.Norm) { amp = 0.1; offset = 1; }
                else if (name.EndsWith("_scale", StringComparison.Ordinal)) { amp = 0.5; offset = 1; }
                else if (name.EndsWith("_base", StringComparison.Ordinal)) amp = 0.5;
                else if (name.EndsWith("attn_sink", StringComparison.Ordinal)) amp = 1;
                else if (name.EndsWith(".ape", StringComparison.Ordinal)) amp = 0.5;
                else if (t.Role.Kind == TensorKind.RouterBias) amp = 0.05;
                else if (t.Role.Kind == TensorKind.Embedding) amp = 1;
                else amp = 1 / Math.Sqrt(t.Shape[^1]);
                var v = new float[n];
                for (long i = 0; i < n; i++) v[i] = (float)(offset + amp * Next());
                w.Write(name, MemoryMarshal.AsBytes(v.AsSpan()));
            }
            w.Commit();
        }
        foreach (var f in Directory.GetFiles(stage)) File.Move(f, Path.Combine(dir, Path.GetFileName(f)));
        Directory.Delete(stage);
        return dir;
    }

    public static readonly TheoryData<string> Cases =
    [
        "random weights", "six layers 4,128,0,4,4,128, two hash layers", "transformers spelling, CSA m=8, HCA m=16, hash layer 1",
        "no hash layers", "every layer hashed", "head_dim 32, rope 8, 8 heads, 4 output groups", "head_dim 128, rope 32, 2 heads, 1 output group",
        "one stream", "3 streams, 1 Sinkhorn iteration", "4 streams, 25 Sinkhorn iterations", "swiglu limit 0.25", "swiglu limit 1000",
        "window 8", "window 512 (longer than the sequence)", "indexer top-1", "indexer top-200 (more than the entries)",
        "16 experts top-3, 2 shared, scale 2.5, no renormalisation", "no shared expert", "no YaRN", "YaRN factor 8 from 64, beta 16/2",
        "sigmoid scores", "short sequence (3 tokens)", "129 tokens (one HCA window)",
    ];

    private static (JsonObject Config, int Seq) Case(string name)
    {
        int seq = 300;
        var c = Config(c =>
        {
            switch (name)
            {
                case "random weights": break;
                case "six layers 4,128,0,4,4,128, two hash layers":
                    c["num_hidden_layers"] = 6; c["compress_ratios"] = new JsonArray(4, 128, 0, 4, 4, 128); c["num_hash_layers"] = 2; break;
                case "transformers spelling, CSA m=8, HCA m=16, hash layer 1":
                    c.Remove("compress_ratios"); c.Remove("num_hash_layers");
                    c["layer_types"] = new JsonArray("heavily_compressed_attention", "compressed_sparse_attention", "sliding_attention", "compressed_sparse_attention");
                    c["compress_rates"] = new JsonObject { ["compressed_sparse_attention"] = 8, ["heavily_compressed_attention"] = 16 };
                    c["mlp_layer_types"] = new JsonArray("moe", "hash_moe", "moe", "moe"); break;
                case "no hash layers": c["num_hash_layers"] = 0; break;
                case "every layer hashed": c["num_hash_layers"] = 4; break;
                case "head_dim 32, rope 8, 8 heads, 4 output groups":
                    c["head_dim"] = 32; c["qk_rope_head_dim"] = 8; c["num_attention_heads"] = 8; c["o_groups"] = 4; c["o_lora_rank"] = 16;
                    ((JsonObject)c["rope_scaling"]!)["partial_rotary_factor"] = 0.25; break;
                case "head_dim 128, rope 32, 2 heads, 1 output group":
                    c["head_dim"] = 128; c["qk_rope_head_dim"] = 32; c["num_attention_heads"] = 2; c["o_groups"] = 1; c["o_lora_rank"] = 96;
                    c["index_head_dim"] = 48; c["index_n_heads"] = 3; break;
                case "one stream": c["hc_mult"] = 1; break;
                case "3 streams, 1 Sinkhorn iteration": c["hc_mult"] = 3; c["hc_sinkhorn_iters"] = 1; break;
                case "4 streams, 25 Sinkhorn iterations": c["hc_mult"] = 4; c["hc_sinkhorn_iters"] = 25; break;
                case "swiglu limit 0.25": c["swiglu_limit"] = 0.25; break;
                case "swiglu limit 1000": c["swiglu_limit"] = 1000.0; break;
                case "window 8": c["sliding_window"] = 8; break;
                case "window 512 (longer than the sequence)": c["sliding_window"] = 512; break;
                case "indexer top-1": c["index_topk"] = 1; break;
                case "indexer top-200 (more than the entries)": c["index_topk"] = 200; break;
                case "16 experts top-3, 2 shared, scale 2.5, no renormalisation":
                    c["n_routed_experts"] = 16; c["num_experts_per_tok"] = 3; c["n_shared_experts"] = 2; c["routed_scaling_factor"] = 2.5; c["norm_topk_prob"] = false; break;
                case "no shared expert": c["n_shared_experts"] = 0; break;
                case "no YaRN": c.Remove("rope_scaling"); break;
                case "YaRN factor 8 from 64, beta 16/2":
                    c["rope_scaling"] = new JsonObject { ["type"] = "yarn", ["factor"] = 8.0, ["original_max_position_embeddings"] = 64, ["beta_fast"] = 16, ["beta_slow"] = 2 }; break;
                case "sigmoid scores": c["scoring_func"] = "sigmoid"; break;
                case "short sequence (3 tokens)": break;
                case "129 tokens (one HCA window)": break;
                default: throw new ArgumentException(name);
            }
        });
        if (name == "short sequence (3 tokens)") seq = 3;
        if (name == "129 tokens (one HCA window)") seq = 129;
        return (c, seq);
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void ExportMatchesReferenceForward(string name)
    {
        var (config, seq) = Case(name);
        using var tmp = new TestData.TempDir();
        var dir = RandomCheckpoint(tmp["model"], config, seed: (ulong)name.Length * 31 + 7);
        var result = OnnxExportPipeline.Run(dir, tmp["onnx"], new OnnxExportOptions());
        int batch = 2, vocab = (int)config["vocab_size"]!;
        var tokens = new int[batch * seq];
        for (int i = 0; i < tokens.Length; i++) tokens[i] = (int)((i * 2654435761L + 12345) % vocab);
        using var runner = new OnnxArtifactRunner(result.OutputDirectory, new OnnxRunnerOptions(IntraOpThreads: 2));
        var outs = runner.Run(tokens, batch, seq, hiddenStates: true, routing: true);
        using var ckpt = ModelCheckpoint.Open(dir);
        var r = new DeepseekV4ReferenceForward(ckpt).Run(tokens, batch, seq);

        int n = batch * seq, layers = r.Routing.Length;
        var stable = new bool[n];
        for (int p = 0; p < n; p++)
            stable[p] = r.RouteMargin.All(m => m[p] >= 1e-4) && r.IndexerMargin.All(m => m[p] >= 1e-5);
        double max = 0, maxAll = 0, scale = 0;
        for (int p = 0; p < n; p++)
            for (int v = 0; v < vocab; v++)
            {
                double d = Math.Abs(outs.Logits[p * vocab + v] - r.Logits[p * vocab + v]);
                maxAll = Math.Max(maxAll, d);
                if (stable[p]) max = Math.Max(max, d);
                scale = Math.Max(scale, Math.Abs(r.Logits[p * vocab + v]));
            }
        int routeChecked = 0, routeDiffer = 0;
        for (int l = 0; l < layers; l++)
        {
            int k = r.Routing[l].Length / n;
            for (int p = 0; p < n; p++)
            {
                if (!stable[p]) continue;
                routeChecked++;
                if (!GoldenComparer.SameSet(r.Routing[l].AsSpan(p * k, k), outs.RoutingTopK![l].AsSpan(p * k, k))) routeDiffer++;
            }
        }
        int pickChecked = 0, pickDiffer = 0;
        for (int i = 0; i < r.Indexer.Length; i++)
        {
            int rk = r.Indexer[i].Length / n, ak = outs.Selections![i].Length / n;
            for (int p = 0; p < n; p++)
            {
                if (!stable[p]) continue;
                pickChecked++;
                var want = r.Indexer[i].AsSpan(p * rk, rk).ToArray().Where(x => x >= 0).Order();
                var have = outs.Selections[i].AsSpan(p * ak, ak).ToArray().Where(x => x >= 0).Order();
                if (!want.SequenceEqual(have)) pickDiffer++;
            }
        }
        double worstStream = 0;
        for (int l = 0; l < r.Streams.Length; l++)
        {
            var a = outs.ResidualStates![l];
            double e2 = 0, r2 = 0;
            for (int j = 0; j < r.Streams[l].Length; j++) { double d = a[j] - r.Streams[l][j]; e2 += d * d; r2 += r.Streams[l][j] * r.Streams[l][j]; }
            worstStream = Math.Max(worstStream, Math.Sqrt(e2 / r2));
        }
        log.WriteLine($"{name}: {stable.Count(x => x)} of {n} positions stable; max |logit diff| {max:E3} stable, {maxAll:E3} all (max |logit| {scale:F2}); " +
                      $"routing {routeChecked - routeDiffer}/{routeChecked}, indexer {pickChecked - pickDiffer}/{pickChecked}; streams (sequence 0) worst relative {worstStream:E3}");
        stable.Count(x => x).Should().BeGreaterThan(n * 8 / 10);
        max.Should().BeLessThanOrEqualTo(1e-3);
        routeDiffer.Should().Be(0);
        pickDiffer.Should().Be(0);
        worstStream.Should().BeLessThanOrEqualTo(1e-4);
    }

    [Fact]
    public void ReferenceForwardComputesTheGolden()
    {
        using var ckpt = ModelCheckpoint.Open(TestData.Model("tiny-dsv4"));
        var g = GoldenSet.Load(TestData.Golden("tiny-dsv4", "eval.safetensors"));
        var tokens = g.Tokens.AsSpan(0, 2 * g.Seq).ToArray(); // two sequences of 512
        var r = new DeepseekV4ReferenceForward(ckpt).Run(tokens, 2, g.Seq);
        var stable = g.StableMask(1e-4, 1e-5);
        double max = 0;
        for (int p = 0; p < 2 * g.Seq; p++)
            for (int v = 0; v < g.Vocab; v++)
                max = Math.Max(max, Math.Abs(r.Logits[p * g.Vocab + v] - g.Logits[p * g.Vocab + v]));
        log.WriteLine($"reference vs golden, 2 x 512 positions: max |logit diff| {max:E3}");
        max.Should().BeLessThan(1e-4);
    }
}
