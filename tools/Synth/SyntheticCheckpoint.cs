using System.Runtime.InteropServices;
using System.Text.Json;
using System.Text.Json.Nodes;
using Converter.Formats.Safetensors;
using Converter.Models.DeepseekV3;
using Converter.Models;
using Converter.Numerics;
using Converter.Tensors;

namespace Converter.Tools.Synth;

/// <summary>Shape of a synthetic DeepSeek-V3 checkpoint; defaults are DeepSeek-V3's real tensor shapes.</summary>
public sealed record SynthOptions
{
    public int Layers { get; init; } = 2;
    public int DenseLayers { get; init; } = 1;
    public int MtpLayers { get; init; }
    public int Experts { get; init; } = 16;
    public int ExpertsPerToken { get; init; } = 8;
    public int Groups { get; init; } = 8;
    public int TopkGroups { get; init; } = 4;
    public int SharedExperts { get; init; } = 1;
    public int Hidden { get; init; } = 7168;
    public int? QLoraRank { get; init; } = 1536;
    public int KvLoraRank { get; init; } = 512;
    public int Heads { get; init; } = 128;
    public int NopeDim { get; init; } = 128;
    public int RopeDim { get; init; } = 64;
    public int VDim { get; init; } = 128;
    public int Intermediate { get; init; } = 18432;
    public int MoeIntermediate { get; init; } = 2048;
    public int Vocab { get; init; } = 129280;
    public bool Yarn { get; init; } = true;
    public bool Fp8 { get; init; }
    public ulong Seed { get; init; } = 1;
    public long MaxShardBytes { get; init; } = 5_000_000_000;
}

/// <summary>
/// Writes a deterministic DeepSeek-V3 checkpoint at real tensor shapes (values ~ N(0, 0.02)-like, from a seed),
/// streaming through the project's safetensors writer: the input for benchmarks at scale and for tests of odd shapes.
/// </summary>
public static unsafe class SyntheticCheckpoint
{
    public static JsonObject Config(SynthOptions o)
    {
        var c = new JsonObject
        {
            ["architectures"] = new JsonArray("DeepseekV3ForCausalLM"),
            ["model_type"] = "deepseek_v3",
            ["vocab_size"] = o.Vocab,
            ["hidden_size"] = o.Hidden,
            ["intermediate_size"] = o.Intermediate,
            ["moe_intermediate_size"] = o.MoeIntermediate,
            ["num_hidden_layers"] = o.Layers,
            ["num_nextn_predict_layers"] = o.MtpLayers,
            ["num_attention_heads"] = o.Heads,
            ["num_key_value_heads"] = o.Heads,
            ["n_shared_experts"] = o.SharedExperts,
            ["n_routed_experts"] = o.Experts,
            ["routed_scaling_factor"] = 2.5,
            ["kv_lora_rank"] = o.KvLoraRank,
            ["q_lora_rank"] = o.QLoraRank,
            ["qk_rope_head_dim"] = o.RopeDim,
            ["v_head_dim"] = o.VDim,
            ["qk_nope_head_dim"] = o.NopeDim,
            ["topk_method"] = "noaux_tc",
            ["n_group"] = o.Groups,
            ["topk_group"] = o.TopkGroups,
            ["num_experts_per_tok"] = o.ExpertsPerToken,
            ["moe_layer_freq"] = 1,
            ["first_k_dense_replace"] = o.DenseLayers,
            ["norm_topk_prob"] = true,
            ["scoring_func"] = "sigmoid",
            ["hidden_act"] = "silu",
            ["max_position_embeddings"] = 163840,
            ["rms_norm_eps"] = 1e-6,
            ["rope_theta"] = 10000.0,
            ["rope_scaling"] = o.Yarn
                ? new JsonObject
                {
                    ["type"] = "yarn", ["factor"] = 40.0, ["original_max_position_embeddings"] = 4096,
                    ["beta_fast"] = 32, ["beta_slow"] = 1, ["mscale"] = 1.0, ["mscale_all_dim"] = 1.0,
                }
                : null,
            ["attention_bias"] = false,
            ["tie_word_embeddings"] = false,
            ["torch_dtype"] = "bfloat16",
        };
        if (o.Fp8)
            c["quantization_config"] = new JsonObject
            {
                ["activation_scheme"] = "dynamic", ["fmt"] = "e4m3", ["quant_method"] = "fp8",
                ["weight_block_size"] = new JsonArray(128, 128),
            };
        return c;
    }

    public static long Write(string outDir, SynthOptions o, bool overwrite = false, Action<string>? progress = null)
    {
        var configJson = Config(o);
        var arch = (DeepseekV3Architecture)ArchitectureRegistry.FromConfig(new ConfigJson(Path.Combine(outDir, "config.json"), configJson));
        var expected = arch.ExpectedTensors();
        var plan = new List<TensorSpec>();
        foreach (var t in expected)
        {
            bool fp8 = o.Fp8 && arch.IsFp8Quantized(t.Role);
            plan.Add(new TensorSpec(t.Name, fp8 ? DType.F8_E4M3 : t.Role.Kind == TensorKind.RouterBias ? DType.F32 : DType.BF16, t.Shape));
            if (fp8)
            {
                var (r, c) = Fp8BlockQuantizer.ScaleShape((int)t.Shape[0], (int)t.Shape[1]);
                plan.Add(new TensorSpec(ModelCheckpoint.ScaleName(t.Name), DType.F32, [r, c]));
            }
        }
        using var writer = new SafetensorsWriter(outDir, plan, o.MaxShardBytes, overwrite);
        long total = 0;
        for (int i = 0; i < expected.Count; i++)
        {
            var t = expected[i];
            progress?.Invoke(t.Name);
            var spec = plan.First(p => p.Name == t.Name);
            total += WriteTensor(writer, spec, t, o.Seed * 1_000_003UL + (ulong)i);
        }
        File.WriteAllText(Path.Combine(writer.StagingDirectory, "config.json"),
            configJson.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
        writer.Commit();
        return total;
    }

    private static long WriteTensor(SafetensorsWriter writer, TensorSpec spec, ExpectedTensor t, ulong seed)
    {
        long count = 1;
        foreach (var d in t.Shape) count *= d;
        if (t.Role.Kind == TensorKind.RouterBias)
        {
            var bias = new float[count];
            var rng = new Random((int)(seed & 0x7fffffff));
            for (int i = 0; i < bias.Length; i++) bias[i] = (float)(rng.NextDouble() * 0.01);
            writer.Write(spec.Name, MemoryMarshal.AsBytes(bias.AsSpan()));
            return bias.Length * 4;
        }
        bool norm = t.Role.Kind == TensorKind.Norm;
        if (spec.DType == DType.BF16)
        {
            var stream = writer.BeginTensor(spec.Name, out _);
            const int chunk = 1 << 22;
            var buf = new ushort[Math.Min(count, chunk)];
            for (long off = 0; off < count; off += chunk)
            {
                int n = (int)Math.Min(chunk, count - off);
                Fill(buf.AsSpan(0, n), seed, off, norm);
                stream.Write(MemoryMarshal.AsBytes(buf.AsSpan(0, n)));
            }
            return count * 2;
        }
        // FP8: generate whole 128-row slabs in BF16 and quantize them with the project's block quantizer.
        int rows = (int)t.Shape[0], cols = (int)t.Shape[1];
        int slab = Math.Max(128, (1 << 24) / cols / 128 * 128);
        var src = new ushort[(long)Math.Min(slab, rows) * cols];
        var fp8 = new byte[src.Length];
        var scales = new float[((rows + 127) / 128) * ((cols + 127) / 128)];
        var output = writer.BeginTensor(spec.Name, out _);
        int sc = (cols + 127) / 128;
        for (int r0 = 0; r0 < rows; r0 += slab)
        {
            int n = Math.Min(slab, rows - r0), len = n * cols;
            Fill(src.AsSpan(0, len), seed, (long)r0 * cols, false);
            Fp8BlockQuantizer.Quantize(src.AsSpan(0, len), n, cols, fp8.AsSpan(0, len), scales.AsSpan(r0 / 128 * sc, (n + 127) / 128 * sc));
            output.Write(fp8, 0, len);
        }
        writer.Write(ModelCheckpoint.ScaleName(spec.Name), MemoryMarshal.AsBytes(scales.AsSpan()));
        return count + scales.Length * 4L;
    }

    /// <summary>The deterministic BF16 fill of <see cref="Write"/>, for other synthetic layouts.</summary>
    public static void FillBf16(Span<ushort> dst, ulong seed, long offset, bool norm) => Fill(dst, seed, offset, norm);

    /// <summary>Deterministic values by position: the same seed and offset always give the same bits, in parallel.</summary>
    private static unsafe void Fill(Span<ushort> dst, ulong seed, long offset, bool norm)
    {
        if (norm)
        {
            dst.Fill(0x3F80); // 1.0, what trained norms are near
            return;
        }
        const int block = 4096;
        int n = dst.Length;
        fixed (ushort* basePtr = dst)
        {
        var arr = basePtr;
        Parallel.For(0, (n + block - 1) / block, b =>
        {
            int start = b * block, end = Math.Min(n, start + block);
            ulong s = Mix(seed ^ (ulong)(offset + start) * 0x9E3779B97F4A7C15UL);
            for (int i = start; i < end; i++)
            {
                s ^= s << 13; s ^= s >> 7; s ^= s << 17;
                // Sum of four uniform bytes, centred: roughly normal, sd ~ 0.02.
                int sum = (int)(s & 0xFF) + (int)((s >> 8) & 0xFF) + (int)((s >> 16) & 0xFF) + (int)((s >> 24) & 0xFF) - 510;
                arr[i] = Bf16.FromSingle(sum * (0.02f / 147.8f));
            }
        });
        }
    }

    private static ulong Mix(ulong z)
    {
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        z ^= z >> 31;
        return z == 0 ? 1 : z;
    }
}
