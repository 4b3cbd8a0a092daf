using Converter.Models;
using Converter.Tensors;

namespace Converter.Tests.Models;

public class ModelCheckpointBadInputTests : IDisposable
{
    private readonly TestData.TempDir _tmp = new();

    public void Dispose() => _tmp.Dispose();

    private string Edit(string model, Func<TestCheckpoints.Entry, TestCheckpoints.Entry?>? edit = null,
        Action<System.Text.Json.Nodes.JsonObject>? config = null, IEnumerable<TestCheckpoints.Entry>? extra = null)
    {
        var dir = _tmp["m"];
        TestCheckpoints.Copy(TestData.Model(model), dir, edit, config, extra);
        return dir;
    }

    private static InvalidDataException Fails(string dir) =>
        FluentActions.Invoking(() => ModelCheckpoint.Open(dir).Dispose()).Should().Throw<InvalidDataException>().Which;

    private const string Kvb = "model.layers.1.self_attn.kv_b_proj.weight";

    [Fact]
    public void Fp8WeightWithoutScale()
    {
        var e = Fails(Edit("tiny-dsv3-fp8", t => t.Name == Kvb + "_scale_inv" ? null : t));
        e.Message.Should().Contain(Kvb).And.Contain("has no").And.Contain(".safetensors");
    }

    [Fact]
    public void Fp8ScaleOfWrongShape()
    {
        var e = Fails(Edit("tiny-dsv3-fp8", t => t.Name == Kvb + "_scale_inv" ? t with { Shape = [1, 2], Bytes = new byte[8] } : t));
        e.Message.Should().Contain(Kvb + "_scale_inv").And.Contain("expected F32 [2, 1]");
    }

    [Fact]
    public void MissingTensor()
    {
        var e = Fails(Edit("tiny-dsv3", t => t.Name == "model.layers.2.mlp.experts.7.up_proj.weight" ? null : t));
        e.Message.Should().Contain("model.layers.2.mlp.experts.7.up_proj.weight").And.Contain("missing");
    }

    [Fact]
    public void UnknownTensorFailsLoudly()
    {
        var e = Fails(Edit("tiny-dsv3", extra: [new("model.layers.1.mlp.mystery.weight", DType.BF16, [2], new byte[4])]));
        e.Message.Should().Contain("model.layers.1.mlp.mystery.weight").And.Contain(".safetensors");
    }

    [Fact]
    public void ShapeContradictingConfig()
    {
        var e = Fails(Edit("tiny-dsv3", config: c => c["kv_lora_rank"] = 32));
        e.Message.Should().Contain("kv_a_proj_with_mqa").And.Contain("config implies");
    }

    [Fact]
    public void WrongDtypeForWeight()
    {
        const string n = "model.layers.0.mlp.up_proj.weight";
        var e = Fails(Edit("tiny-dsv3", t => t.Name == n ? t with { DType = DType.I16 } : t));
        e.Message.Should().Contain(n).And.Contain("I16");
    }

    [Fact]
    public void UnsupportedModelType()
    {
        var e = Fails(Edit("tiny-dsv3", config: c => c["model_type"] = "llama"));
        e.Message.Should().Contain("config.json").And.Contain("'llama' is not supported");
    }

    [Fact]
    public void MissingRequiredConfigField()
    {
        var e = Fails(Edit("tiny-dsv3", config: c => c.Remove("kv_lora_rank")));
        e.Message.Should().Contain("config.json").And.Contain("'kv_lora_rank' is missing");
    }

    [Fact]
    public void NullQLoraRankIsAccepted()
    {
        var dir = Edit("tiny-dsv3", t => t.Name.Contains("q_a_") || t.Name.Contains("q_b_proj") ? null : t, c => c["q_lora_rank"] = null,
            extra: Enumerable.Range(0, 5).Select(l => new TestCheckpoints.Entry($"model.layers.{l}.self_attn.q_proj.weight", DType.BF16, [192, 256], new byte[192 * 256 * 2])));
        using var ckpt = ModelCheckpoint.Open(dir);
        ((Converter.Models.DeepseekV3.DeepseekV3Architecture)ckpt.Architecture).Cfg.QLoraRank.Should().BeNull();
    }
}
