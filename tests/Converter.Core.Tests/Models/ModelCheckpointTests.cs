using Converter.Models;
using Converter.Models.DeepseekV3;
using Converter.Tests;

namespace Converter.Tests.Models;

public class ModelCheckpointTests
{
    [Fact]
    public void OpensBf16ReferenceCheckpoint()
    {
        using var ckpt = ModelCheckpoint.Open(TestData.Model("tiny-dsv3"));
        ckpt.Layout.Should().Be(WeightLayout.Dense);
        var arch = ckpt.Architecture.Should().BeOfType<DeepseekV3Architecture>().Subject;
        arch.Cfg.QLoraRank.Should().Be(128);
        arch.Cfg.RopeScaling!.Factor.Should().Be(4.0);
        arch.NumMtpLayers.Should().Be(1);
        ckpt.Tensors.Names.Should().HaveCount(arch.ExpectedTensors().Count);
        ckpt.Tensors.Shards.Should().HaveCount(3);
    }

    [Fact]
    public void OpensFp8ReferenceCheckpointAndDequantizesNearBf16()
    {
        using var fp8 = ModelCheckpoint.Open(TestData.Model("tiny-dsv3-fp8"));
        using var bf16 = ModelCheckpoint.Open(TestData.Model("tiny-dsv3"));
        fp8.Layout.Should().Be(WeightLayout.Fp8Block);
        const string name = "model.layers.1.self_attn.kv_b_proj.weight";
        var a = fp8.ReadFloat32(name);
        var b = bf16.ReadFloat32(name);
        float maxAbs = 0, maxErr = 0;
        for (int i = 0; i < a.Length; i++)
        {
            maxAbs = Math.Max(maxAbs, Math.Abs(b[i]));
            maxErr = Math.Max(maxErr, Math.Abs(a[i] - b[i]));
        }
        // e4m3 keeps 3 mantissa bits: error within a block is at most half a step at the block's amax (2^-4 relative).
        maxErr.Should().BeLessThan(maxAbs / 16);
        maxErr.Should().BeGreaterThan(0);
    }
}
