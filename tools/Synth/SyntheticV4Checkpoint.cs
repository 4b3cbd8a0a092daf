using System.Runtime.InteropServices;
using System.Text.Json;
using System.Text.Json.Nodes;
using Converter.Formats.Safetensors;
using Converter.Models;
using Converter.Tensors;

namespace Converter.Tools.Synth;

/// <summary>Shape of a synthetic DeepSeek-V4 checkpoint in the hub layout; defaults are V4-Flash's widths.</summary>
public sealed record SynthV4Options
{
    public int Layers { get; init; } = 4;
    public int Experts { get; init; } = 16;
    public int ExpertsPerToken { get; init; } = 6;
    public int HashLayers { get; init; } = 1;
    public int Vocab { get; init; } = 129280;
    public ulong Seed { get; init; } = 1;
    public long MaxShardBytes { get; init; } = 5_000_000_000;
}

/// <summary>
/// Writes a deterministic DeepSeek-V4 checkpoint in the hub BF16 layout at V4-Flash's widths (hidden 4096, 64 heads of
/// 512, q_lora 1024, 8 output groups of 1024, experts of 2048, indexer 64 x 128, hc_mult 4) for a chosen number of
/// layers (V4-Flash's schedule: sliding, sliding, then CSA and HCA in turn) and experts: BF16 weights, F32 hyper-
/// connections / sinks / position biases / gate biases, I32 tid2eid. The official FP8/FP4 layout is what
/// <c>converter quantize --scheme fp8-block</c> makes of it. Only the registry is named: the family map decides every tensor.
/// </summary>
public static class SyntheticV4Checkpoint
{
    public static JsonObject Config(SynthV4Options o)
    {
        var ratios = new JsonArray();
        for (int i = 0; i < o.Layers; i++) ratios.Add(i < 2 ? 0 : i % 2 == 0 ? 4 : 128);
        return new JsonObject
        {
            ["architectures"] = new JsonArray("DeepseekV4ForCausalLM"), ["model_type"] = "deepseek_v4", ["torch_dtype"] = "bfloat16",
            ["vocab_size"] = o.Vocab, ["hidden_size"] = 4096, ["num_hidden_layers"] = o.Layers, ["num_attention_heads"] = 64,
            ["num_key_value_heads"] = 1, ["head_dim"] = 512, ["qk_rope_head_dim"] = 64, ["q_lora_rank"] = 1024, ["o_groups"] = 8,
            ["o_lora_rank"] = 1024, ["n_routed_experts"] = o.Experts, ["num_experts_per_tok"] = o.ExpertsPerToken, ["n_shared_experts"] = 1,
            ["moe_intermediate_size"] = 2048, ["sliding_window"] = 128, ["index_n_heads"] = 64, ["index_head_dim"] = 128, ["index_topk"] = 512,
            ["hc_mult"] = 4, ["hc_sinkhorn_iters"] = 20, ["hc_eps"] = 1e-6, ["compress_ratios"] = ratios, ["num_hash_layers"] = o.HashLayers,
            ["num_nextn_predict_layers"] = 0, ["compress_rope_theta"] = 160000.0, ["rope_theta"] = 10000.0, ["max_position_embeddings"] = 1048576,
            ["rope_scaling"] = new JsonObject { ["type"] = "yarn", ["factor"] = 16, ["original_max_position_embeddings"] = 65536, ["beta_fast"] = 32, ["beta_slow"] = 1 },
            ["scoring_func"] = "sqrtsoftplus", ["topk_method"] = "noaux_tc", ["norm_topk_prob"] = true, ["routed_scaling_factor"] = 1.5,
            ["swiglu_limit"] = 10.0, ["rms_norm_eps"] = 1e-6, ["tie_word_embeddings"] = false,
        };
    }

    public static long Write(string outDir, SynthV4Options o, bool overwrite = false)
    {
        var configJson = Config(o);
        var arch = ArchitectureRegistry.FromConfig(new ConfigJson(Path.Combine(outDir, "config.json"), configJson));
        var expected = arch.ExpectedTensors();
        DType TypeOf(ExpectedTensor t) => t.Name.EndsWith(".tid2eid", StringComparison.Ordinal) ? DType.I32
            : t.Role.Kind is TensorKind.Auxiliary or TensorKind.RouterBias ? DType.F32 : DType.BF16;
        // the hub files' order: safetensors' save_file (dtype descending, then the name)
        var order = expected.OrderByDescending(t => DTypeInfo.SafetensorsRank(TypeOf(t))).ThenBy(t => t.Name, StringComparer.Ordinal).ToList();
        var plan = order.Select(t => new TensorSpec(t.Name, TypeOf(t), t.Shape)).ToList();
        using var writer = new SafetensorsWriter(outDir, plan, o.MaxShardBytes, overwrite);
        long total = 0;
        for (int i = 0; i < order.Count; i++)
        {
            var t = order[i];
            ulong seed = o.Seed * 1_000_003UL + (ulong)i;
            long count = t.Shape.Aggregate(1L, (a, b) => a * b);
            switch (plan[i].DType)
            {
                case DType.I32:
                {
                    // each token's experts: k distinct ids
                    var ids = new int[count];
                    int k = (int)t.Shape[1];
                    var rng = new Random((int)(seed & 0x7fffffff));
                    for (long r = 0; r < t.Shape[0]; r++)
                    {
                        var pick = Enumerable.Range(0, o.Experts).OrderBy(_ => rng.Next()).Take(k).ToArray();
                        for (int j = 0; j < k; j++) ids[r * k + j] = pick[j];
                    }
                    writer.Write(t.Name, MemoryMarshal.AsBytes(ids.AsSpan()));
                    total += count * 4;
                    break;
                }
                case DType.F32:
                {
                    var v = new float[count];
                    var rng = new Random((int)(seed & 0x7fffffff));
                    for (int j = 0; j < v.Length; j++) v[j] = (float)((rng.NextDouble() - 0.5) * 0.02);
                    writer.Write(t.Name, MemoryMarshal.AsBytes(v.AsSpan()));
                    total += count * 4;
                    break;
                }
                default:
                {
                    var stream = writer.BeginTensor(t.Name, out _);
                    const int chunk = 1 << 22;
                    var buf = new ushort[Math.Min(count, chunk)];
                    for (long off = 0; off < count; off += chunk)
                    {
                        int n = (int)Math.Min(chunk, count - off);
                        SyntheticCheckpoint.FillBf16(buf.AsSpan(0, n), seed, off, t.Role.Kind == TensorKind.Norm);
                        stream.Write(MemoryMarshal.AsBytes(buf.AsSpan(0, n)));
                    }
                    total += count * 2;
                    break;
                }
            }
        }
        File.WriteAllText(Path.Combine(writer.StagingDirectory, "config.json"), configJson.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
        writer.Commit();
        return total;
    }
}
