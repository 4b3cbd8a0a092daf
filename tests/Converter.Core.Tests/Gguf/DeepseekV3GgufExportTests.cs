using Converter.Core.Tests.Ggml;
using Converter.Formats.Gguf;
using Converter.Models;
using Converter.Numerics.Ggml;
using Converter.Pipelines;
using Microsoft.Extensions.Logging.Abstractions;

namespace Converter.Core.Tests.Gguf;

public sealed class DeepseekV3GgufExportTests : IDisposable
{
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "gguf-export-" + Guid.NewGuid().ToString("N"));

    public DeepseekV3GgufExportTests() => Directory.CreateDirectory(_dir);

    public void Dispose() => Directory.Delete(_dir, true);

    private static string Model(string name) => Path.Combine(Path.GetDirectoryName(Path.GetDirectoryName(GgmlGolden.Dir))!, "models", name);

    private string Export(string model, GgmlType type, long slabValues = 1L << 24)
    {
        string output = Path.Combine(_dir, $"{model}-{type}-{slabValues}.gguf");
        using var ckpt = ModelCheckpoint.Open(Model(model));
        GgufExportPipeline.Run(ckpt, new GgufExportOptions(output, type) { SlabValues = slabValues }, NullLogger.Instance);
        return output;
    }

    [Theory]
    [InlineData("tiny-dsv3", GgmlType.Q4_K)]
    [InlineData("tiny-dsv3-fp8", GgmlType.F32)]
    public void ReadingInRowSlabsGivesTheSameFile(string model, GgmlType type)
    {
        // one 128-row block per slab: token_embd, output and the dense MLP are read in 2 to 4 slabs
        File.ReadAllBytes(Export(model, type, slabValues: 1)).Should().Equal(File.ReadAllBytes(Export(model, type)));
    }

    [Fact]
    public void MetadataFollowsTheConfigWithExactTypes()
    {
        using var r = GgufReader.Open(Export("tiny-dsv3", GgmlType.F32));
        r["general.architecture"].AsString().Should().Be("deepseek2");
        r["deepseek2.block_count"].AsUInt32().Should().Be(4); // the MTP layer is not counted
        r["deepseek2.attention.head_count_kv"].AsUInt32().Should().Be(1);
        r["deepseek2.attention.q_lora_rank"].AsUInt32().Should().Be(128);
        r["deepseek2.attention.kv_lora_rank"].AsUInt32().Should().Be(64);
        r["deepseek2.attention.key_length"].AsUInt32().Should().Be(64 + 16);
        r["deepseek2.attention.value_length"].AsUInt32().Should().Be(64);
        r["deepseek2.attention.key_length_mla"].AsUInt32().Should().Be(32 + 16);
        r["deepseek2.attention.value_length_mla"].AsUInt32().Should().Be(32);
        r["deepseek2.expert_count"].AsUInt32().Should().Be(16);
        r["deepseek2.expert_used_count"].AsUInt32().Should().Be(4);
        r["deepseek2.expert_group_count"].AsUInt32().Should().Be(4);
        r["deepseek2.expert_group_used_count"].AsUInt32().Should().Be(2);
        r["deepseek2.expert_gating_func"].AsUInt32().Should().Be(2);
        r["deepseek2.expert_weights_norm"].AsBool().Should().BeTrue();
        r["deepseek2.expert_weights_scale"].AsFloat32().Should().Be(2.5f);
        r["deepseek2.leading_dense_block_count"].AsUInt32().Should().Be(1);
        r["deepseek2.rope.scaling.type"].AsString().Should().Be("yarn");
        r["deepseek2.rope.scaling.factor"].AsFloat32().Should().Be(4f);
        r["deepseek2.rope.scaling.original_context_length"].AsUInt32().Should().Be(256);
        r["deepseek2.rope.scaling.yarn_log_multiplier"].AsFloat32().Should().Be(0.1f);
        r["deepseek2.attention.layer_norm_rms_epsilon"].AsFloat32().Should().Be(1e-6f);
        r["tokenizer.ggml.tokens"].AsArray<string>().Should().HaveCount(256);
        r["tokenizer.ggml.tokens"].AsArray<string>()[32].Should().Be("Ġ"); // GPT-2 byte-to-unicode for space
        r["tokenizer.ggml.tokens"].AsArray<string>()[65].Should().Be("A");
        r.TryGetValue("tokenizer.ggml.merges", out var merges).Should().BeTrue();
        merges.AsArray<string>().Should().BeEmpty();
    }

    [Fact]
    public void TensorsAreMappedSplitAndStacked()
    {
        string path = Export("tiny-dsv3", GgmlType.F32);
        using var r = GgufReader.Open(path);
        using var ckpt = ModelCheckpoint.Open(Model("tiny-dsv3"));
        r.Tensors.Should().NotContain(t => t.Name.StartsWith("blk.4.")); // MTP layer left out
        r.Tensors.Should().NotContain(t => t.Name.Contains("attn_kv_b"));
        r.GetTensor("token_embd.weight").Dimensions.Should().Equal(256L, 256L);
        r.GetTensor("blk.1.ffn_down_exps.weight").Dimensions.Should().Equal(128L, 256L, 16L);
        r.GetTensor("blk.1.attn_k_b.weight").Dimensions.Should().Equal(32L, 64L, 4L);
        r.GetTensor("blk.1.attn_v_b.weight").Dimensions.Should().Equal(64L, 32L, 4L);
        r.GetTensor("blk.0.ffn_gate.weight").Type.Should().Be(GgmlType.F32);

        float[] Data(string name)
        {
            var t = r.GetTensor(name);
            var f = new float[t.ElementCount];
            GgmlQuantizer.Dequantize(t.Type, r.GetTensorData(t), f);
            return f;
        }
        Data("token_embd.weight").Should().Equal(ckpt.ReadFloat32("model.embed_tokens.weight"));
        Data("blk.2.exp_probs_b.bias").Should().Equal(ckpt.ReadFloat32("model.layers.2.mlp.gate.e_score_correction_bias"));

        // expert 5 is the 6th [h, mi] slab of ffn_down_exps (ne = [mi, h, E])
        var down = Data("blk.1.ffn_down_exps.weight");
        down.AsSpan(5 * 256 * 128, 256 * 128).ToArray().Should().Equal(ckpt.ReadFloat32("model.layers.1.mlp.experts.5.down_proj.weight"));

        // k_b[h][r][j] = kv_b[h*(nope+v) + j][r]; v_b[h][j][r] = kv_b[h*(nope+v) + nope + j][r]
        var kvb = ckpt.ReadFloat32("model.layers.3.self_attn.kv_b_proj.weight");
        var kb = Data("blk.3.attn_k_b.weight");
        var vb = Data("blk.3.attn_v_b.weight");
        const int nope = 32, vd = 32, kv = 64;
        for (int h = 0; h < 4; h++)
            for (int row = 0; row < kv; row++)
                for (int j = 0; j < nope; j++)
                    kb[h * kv * nope + row * nope + j].Should().Be(kvb[(h * (nope + vd) + j) * kv + row]);
        for (int h = 0; h < 4; h++)
            for (int j = 0; j < vd; j++)
                for (int row = 0; row < kv; row++)
                    vb[h * vd * kv + j * kv + row].Should().Be(kvb[(h * (nope + vd) + nope + j) * kv + row]);
    }

    [Fact]
    public void QuantizedExportUsesGgmlExactBytesAndFallsBackWhereRowsAreNotWholeBlocks()
    {
        string path = Export("tiny-dsv3", GgmlType.Q4_K);
        using var r = GgufReader.Open(path);
        using var ckpt = ModelCheckpoint.Open(Model("tiny-dsv3"));
        r.GetTensor("blk.1.ffn_gate_exps.weight").Type.Should().Be(GgmlType.Q4_K);
        // llama.cpp's fallback for Q4_K rows that are not whole 256-blocks: Q5_0
        r.GetTensor("blk.1.attn_k_b.weight").Type.Should().Be(GgmlType.Q5_0);  // ne0 = 32
        r.GetTensor("blk.1.attn_v_b.weight").Type.Should().Be(GgmlType.Q5_0);  // ne0 = 64
        r.GetTensor("blk.1.ffn_gate_inp.weight").Type.Should().Be(GgmlType.F32);
        r.GetTensor("blk.1.attn_norm.weight").Type.Should().Be(GgmlType.F32);
        r.GetTensor("blk.1.attn_output.weight").Type.Should().Be(GgmlType.Q5_0); // ne0 = 128
        var src = ckpt.ReadFloat32("model.layers.0.mlp.gate_proj.weight");
        var expected = new byte[GgmlTypeInfo.ByteSize(GgmlType.Q4_K, src.Length)];
        GgmlReferenceQuantizer.Quantize(GgmlType.Q4_K, src, expected);
        r.GetTensorData(r.GetTensor("blk.0.ffn_gate.weight")).ToArray().Should().Equal(expected);
    }
}
