using System.Text.Json.Nodes;
using Converter.Models;
using Converter.Tensors;

namespace Converter.Tests.Models;

/// <summary>The deepseek_v4 family: both config spellings, the hub tensor map, MTP and unknown names, the official
/// layout's checks (FP8 and FP4 with E8M0 scales) as <see cref="ModelCheckpoint"/> applies them.</summary>
public class DeepseekV4FamilyTests : IDisposable
{
    private readonly TestData.TempDir _tmp = new();

    public void Dispose() => _tmp.Dispose();

    private static JsonObject TinyConfig() => JsonNode.Parse(File.ReadAllText(Path.Combine(TestData.Model("tiny-dsv4"), "config.json")))!.AsObject();

    private static ModelArchitecture Arch(JsonObject config) => ArchitectureRegistry.FromConfig(new ConfigJson("config.json", config));

    private static string Describe(ModelArchitecture a) =>
        string.Join("\n", a.ExpectedTensors().Select(t => $"{t.Name} [{string.Join(",", t.Shape)}] {t.Role}"));

    [Fact]
    public void TinyHubConfigMapsEveryTensorOfTheCheckpoint()
    {
        using var ckpt = ModelCheckpoint.Open(TestData.Model("tiny-dsv4"));
        var a = ckpt.Architecture;
        a.ModelType.Should().Be("deepseek_v4");
        a.NumLayers.Should().Be(4);
        a.NumMtpLayers.Should().Be(0);
        ckpt.Layout.Should().Be(WeightLayout.Dense);
        a.ExpectedTensors().Select(t => t.Name).Should().BeEquivalentTo(ckpt.Tensors.Names);
        var facts = a.Facts().ToDictionary(f => f.Label, f => f.Value);
        facts["layer kinds"].Should().StartWith("sliding [0]; CSA m=4 [1, 3]; HCA m=128 [2]");
        facts["routing"].Should().Contain("hash-routed (tid2eid) layers [0], learned (score + bias) layers [1, 2, 3]");
        facts["rope"].Should().Contain("theta 40000").And.Contain("YaRN factor 4");
        // per token, bf16: CSA (64 + 32) / 4 values, HCA 64 / 128; sliding layers only keep their window
        facts["kv CSA m=4"].Should().StartWith("48 bytes per token per layer");
        facts["kv HCA m=128"].Should().StartWith("1 bytes per token per layer");
        facts["kv sliding"].Should().StartWith("0 bytes per token per layer");
        facts["kv cache"].Should().StartWith("97 bytes per token over 4 layers");
    }

    [Fact]
    public void OfficialLayoutOpensAsFp8AndFp4WithE8M0Scales()
    {
        using var ckpt = ModelCheckpoint.Open(TestData.Model("tiny-dsv4-fp8"));
        ckpt.Layout.Should().Be(WeightLayout.Fp8Fp4Block);
        var a = ckpt.Architecture;
        ckpt.Encoding("layers.1.attn.wq_b.weight").Should().Be(WeightEncoding.Fp8BlockPow2);
        ckpt.Encoding("layers.1.attn.indexer.wq_b.weight").Should().Be(WeightEncoding.Fp8BlockPow2);
        ckpt.Encoding("layers.1.attn.compressor.wkv.weight").Should().Be(WeightEncoding.Dense);
        ckpt.Encoding("layers.2.ffn.experts.5.w2.weight").Should().Be(WeightEncoding.Fp4Group32);
        ckpt.LogicalShape("layers.2.ffn.experts.5.w2.weight").Should().Be((256L, 128L));
        a.Classify("layers.2.ffn.experts.5.w2.scale").Should().Be(a.Classify("layers.2.ffn.experts.5.w2.weight") with { Kind = TensorKind.QuantScale });
        // every expected tensor is stored as the official layout says
        foreach (var t in a.ExpectedTensors().Where(t => t.Shape.Length == 2))
            ckpt.Encoding(t.Name).Should().Be(a.OfficialEncoding(t.Role), t.Name);
    }

    [Fact]
    public void TransformersStyleConfigGivesTheSameModel()
    {
        var hub = TinyConfig();
        var tf = TinyConfig();
        foreach (var k in new[] { "compress_ratios", "num_hash_layers", "qk_rope_head_dim", "rope_scaling" }) tf.Remove(k);
        tf["layer_types"] = new JsonArray("sliding_attention", "compressed_sparse_attention", "heavily_compressed_attention", "compressed_sparse_attention");
        tf["compress_rates"] = new JsonObject { ["compressed_sparse_attention"] = 4, ["heavily_compressed_attention"] = 128 };
        tf["mlp_layer_types"] = new JsonArray("hash_moe", "moe", "moe", "moe");
        tf["partial_rotary_factor"] = 0.25;
        tf["rope_parameters"] = new JsonObject
        {
            ["main"] = new JsonObject { ["rope_type"] = "default", ["rope_theta"] = 10000.0, ["partial_rotary_factor"] = 0.25 },
            ["compress"] = new JsonObject
            {
                ["rope_type"] = "yarn", ["factor"] = 4.0, ["original_max_position_embeddings"] = 256, ["beta_fast"] = 32, ["beta_slow"] = 1,
                ["rope_theta"] = 40000.0, ["partial_rotary_factor"] = 0.25, ["attention_factor"] = 1.0,
            },
        };
        Describe(Arch(tf)).Should().Be(Describe(Arch(hub)));
        Arch(tf).Facts().Should().BeEquivalentTo(Arch(hub).Facts());
        // and the checkpoint opens with it
        var dir = _tmp["tf"];
        TestCheckpoints.Copy(TestData.Model("tiny-dsv4-fp8"), dir, editConfig: c =>
        {
            foreach (var (k, v) in tf) c[k] = v?.DeepClone();
            foreach (var k in new[] { "compress_ratios", "num_hash_layers", "qk_rope_head_dim", "rope_scaling" }) c.Remove(k);
        });
        using var ckpt = ModelCheckpoint.Open(dir);
        ckpt.Layout.Should().Be(WeightLayout.Fp8Fp4Block);
    }

    /// <summary>V4-Flash's published config (notes section 1): 43 layers + 1 MTP, compress ratios [0, 0, 4, 128, 4, 128, ..., 4, 0].</summary>
    private static JsonObject FlashConfig()
    {
        var ratios = new JsonArray(0, 0);
        for (int i = 2; i < 43; i++) ratios.Add(i % 2 == 0 ? 4 : 128);
        ratios.Add(0);
        return new JsonObject
        {
            ["model_type"] = "deepseek_v4", ["vocab_size"] = 129280, ["hidden_size"] = 4096, ["num_hidden_layers"] = 43, ["num_attention_heads"] = 64,
            ["num_key_value_heads"] = 1, ["head_dim"] = 512, ["qk_rope_head_dim"] = 64, ["q_lora_rank"] = 1024, ["o_groups"] = 8, ["o_lora_rank"] = 1024,
            ["n_routed_experts"] = 256, ["num_experts_per_tok"] = 6, ["n_shared_experts"] = 1, ["moe_intermediate_size"] = 2048, ["sliding_window"] = 128,
            ["index_n_heads"] = 64, ["index_head_dim"] = 128, ["index_topk"] = 512, ["hc_mult"] = 4, ["hc_sinkhorn_iters"] = 20, ["hc_eps"] = 1e-6,
            ["compress_ratios"] = ratios, ["num_hash_layers"] = 3, ["num_nextn_predict_layers"] = 1, ["compress_rope_theta"] = 160000, ["rope_theta"] = 10000,
            ["rope_scaling"] = new JsonObject { ["type"] = "yarn", ["factor"] = 16, ["original_max_position_embeddings"] = 65536, ["beta_fast"] = 32, ["beta_slow"] = 1 },
            ["scoring_func"] = "sqrtsoftplus", ["topk_method"] = "noaux_tc", ["routed_scaling_factor"] = 1.5, ["swiglu_limit"] = 10.0,
        };
    }

    [Fact]
    public void FlashConfigHasTheAdvertisedSize()
    {
        var a = Arch(FlashConfig());
        a.NumMtpLayers.Should().Be(1);
        var main = a.ExpectedTensors().Where(t => !t.Role.IsMtp).ToList();
        long total = main.Sum(t => t.Shape.Aggregate(1L, (x, y) => x * y));
        long routed = main.Where(t => t.Role.Kind == TensorKind.RoutedExpert).Sum(t => t.Shape.Aggregate(1L, (x, y) => x * y));
        long active = total - routed + routed * 6 / 256;
        // DeepSeek's model card: 284B total, 13B activated (the MTP layer not counted). Active here counts every
        // non-routed tensor, the embedding too (0.53B, a lookup): without it 13.27B.
        (total / 1e9).Should().BeInRange(283.5, 284.5);
        (active / 1e9).Should().BeInRange(13.7, 13.9);
        ((active - 129280L * 4096) / 1e9).Should().BeInRange(13.2, 13.35);
        a.Classify("mtp.0.e_proj.weight").IsMtp.Should().BeTrue();
        a.Classify("mtp.0.ffn.experts.255.w2.scale").Kind.Should().Be(TensorKind.QuantScale);
        a.Classify("mtp.0.hc_head_fn").IsMtp.Should().BeTrue();
        a.Classify("layers.0.ffn.gate.bias").Kind.Should().Be(TensorKind.RouterBias); // a hash layer's unused bias, as the hub ships it
        FluentActions.Invoking(() => a.Classify("mtp.1.e_proj.weight")).Should().Throw<InvalidDataException>().WithMessage("*mtp.1.e_proj.weight*");
        var facts = a.Facts().ToDictionary(f => f.Label, f => f.Value);
        facts["layer kinds"].Should().StartWith("sliding [0, 1]; CSA m=4 [2, 4,");
        facts["kv CSA m=4"].Should().StartWith("320 bytes per token per layer"); // (512 + 128) / 4 values of 2 bytes
        facts["kv HCA m=128"].Should().StartWith("8 bytes per token per layer");
    }

    [Theory]
    [InlineData(16)]
    [InlineData(-1)]
    [InlineData(1)]
    public void UnknownCompressRatioIsRefusedNamingTheEntry(int ratio)
    {
        var c = TinyConfig();
        c["compress_ratios"]![2] = ratio;
        FluentActions.Invoking(() => Arch(c)).Should().Throw<InvalidDataException>()
            .WithMessage($"config.json: 'compress_ratios[2]' is {ratio}: not a known compress ratio*");
    }

    [Fact]
    public void OtherBadConfigsNameTheKey()
    {
        var c = TinyConfig();
        c["num_key_value_heads"] = 2;
        FluentActions.Invoking(() => Arch(c)).Should().Throw<InvalidDataException>().WithMessage("*'num_key_value_heads'*");
        c = TinyConfig();
        c["layer_types"] = new JsonArray("sliding_attention", "full_attention", "sliding_attention", "sliding_attention");
        FluentActions.Invoking(() => Arch(c)).Should().Throw<InvalidDataException>().WithMessage("*'layer_types[1]' is 'full_attention'*");
        c = TinyConfig();
        c["o_groups"] = 3;
        FluentActions.Invoking(() => Arch(c)).Should().Throw<InvalidDataException>().WithMessage("*'o_groups'*");
    }

    [Fact]
    public void UnknownTensorFailsLoudly()
    {
        var a = Arch(TinyConfig());
        foreach (var name in new[] { "layers.0.attn.mystery.weight", "layers.4.attn.wq_a.weight", "layers.0.attn.compressor.wkv.weight", "mtp.0.e_proj.weight", "layers.1.ffn.gate.tid2eid" })
            FluentActions.Invoking(() => a.Classify(name)).Should().Throw<InvalidDataException>().WithMessage($"*'{name}'*", name);
    }

    private InvalidDataException Fails(Func<TestCheckpoints.Entry, TestCheckpoints.Entry?> edit)
    {
        var dir = _tmp["bad-" + Guid.NewGuid().ToString("N")];
        TestCheckpoints.Copy(TestData.Model("tiny-dsv4-fp8"), dir, edit);
        return FluentActions.Invoking(() => ModelCheckpoint.Open(dir).Dispose()).Should().Throw<InvalidDataException>().Which;
    }

    [Fact]
    public void BadOfficialLayoutsAreRefusedNamingFileAndTensor()
    {
        const string fp8 = "layers.1.attn.wq_b", fp4 = "layers.2.ffn.experts.3.w1";
        Fails(t => t.Name == fp8 + ".scale" ? null : t).Message.Should().Contain("model.safetensors").And.Contain($"FP8 weight '{fp8}.weight' has no '{fp8}.scale'");
        Fails(t => t.Name == fp4 + ".scale" ? null : t).Message.Should().Contain($"FP4 weight '{fp4}.weight' has no '{fp4}.scale'");
        Fails(t => t.Name == fp8 + ".scale" ? t with { Shape = [1, 2], Bytes = new byte[2] } : t).Message
            .Should().Contain($"scale '{fp8}.scale' is F8_E8M0 [1, 2], expected F32 [2, 1]");
        Fails(t => t.Name == fp4 + ".scale" ? t with { Shape = [128, 4], Bytes = new byte[512] } : t).Message
            .Should().Contain($"scale '{fp4}.scale' is F8_E8M0 [128, 4], expected F8_E8M0 [128, 8] for FP4 weight '{fp4}.weight'");
        Fails(t => t.Name == fp4 + ".scale" ? t with { DType = DType.I32, Shape = [128, 2] } : t).Message
            .Should().Contain($"scale '{fp4}.scale' is I32 [128, 2]");
        Fails(t => t.Name == fp8 + ".scale" ? t with { DType = DType.BF16, Shape = [2, 1], Bytes = new byte[4] } : t).Message
            .Should().Contain($"scale '{fp8}.scale' is BF16 [2, 1]");
        // FP4 with an odd K: 127 bytes a row are 254 values, not whole 1x32 groups
        Fails(t => t.Name == fp4 + ".weight" ? t with { Shape = [128, 127], Bytes = new byte[128 * 127] } : t).Message
            .Should().Contain($"FP4 weight '{fp4}.weight' is I8 [128, 127]: 254 values a row is not whole 1x32 scale groups");
        // a scale without its weight
        Fails(t => t.Name == "layers.1.attn.wkv.weight" ? t with { DType = DType.BF16, Shape = [64, 256], Bytes = new byte[64 * 256 * 2] } : t).Message
            .Should().Contain("scale 'layers.1.attn.wkv.scale' has no FP8 or FP4 weight");
    }
}
