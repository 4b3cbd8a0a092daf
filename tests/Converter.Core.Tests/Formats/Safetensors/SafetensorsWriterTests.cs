using System.Runtime.InteropServices;
using Converter.Formats.Safetensors;
using Converter.Tensors;

namespace Converter.Tests.Formats.Safetensors;

public class SafetensorsWriterTests : IDisposable
{
    private readonly TestData.TempDir _tmp = new();

    public void Dispose() => _tmp.Dispose();

    private static float[] Values(int n, int seed) => Enumerable.Range(0, n).Select(i => (float)(i * 0.5 + seed)).ToArray();

    private static void WriteThree(string dest, long maxShard, bool overwrite = false)
    {
        var plan = new List<TensorSpec>
        {
            new("x", DType.F32, [4, 8]),
            new("y", DType.F32, [16]),
            new("z", DType.F32, [2, 2, 2]),
        };
        using var w = new SafetensorsWriter(dest, plan, maxShard, overwrite);
        w.Write("x", MemoryMarshal.AsBytes(Values(32, 1).AsSpan()));
        w.Write("y", MemoryMarshal.AsBytes(Values(16, 2).AsSpan()));
        w.Write("z", MemoryMarshal.AsBytes(Values(8, 3).AsSpan()));
        w.Commit();
    }

    [Fact]
    public void ShardedRoundTripWithIndex()
    {
        var dest = _tmp["out"];
        WriteThree(dest, maxShard: 100);
        File.Exists(Path.Combine(dest, SafetensorsCheckpoint.IndexFileName)).Should().BeTrue();
        // x (128 B) fills shard 1; y (64 B) and z (32 B) fit together under 100 B.
        Directory.GetFiles(dest, "*.safetensors").Should().HaveCount(2);
        using var ckpt = SafetensorsCheckpoint.Open(dest);
        ckpt.Names.Should().Equal("x", "y", "z");
        Path.GetFileName(ckpt.Info("x").File).Should().Be("model-00001-of-00002.safetensors");
        Path.GetFileName(ckpt.Info("z").File).Should().Be("model-00002-of-00002.safetensors");
        using var z = ckpt.Read("z");
        z.As<float>().ToArray().Should().Equal(Values(8, 3));
    }

    [Fact]
    public void SingleShardHasNoIndex()
    {
        var dest = _tmp["out"];
        WriteThree(dest, maxShard: 1 << 20);
        Directory.GetFiles(dest).Select(Path.GetFileName).Should().Equal("model.safetensors");
    }

    [Fact]
    public void SameInputGivesSameBytes()
    {
        WriteThree(_tmp["a"], 100);
        WriteThree(_tmp["b"], 100);
        foreach (var f in Directory.GetFiles(_tmp["a"]))
            File.ReadAllBytes(f).Should().Equal(File.ReadAllBytes(Path.Combine(_tmp["b"], Path.GetFileName(f))));
    }

    [Fact]
    public void ExistingOutputIsRefusedUnlessOverwrite()
    {
        var dest = _tmp["out"];
        Directory.CreateDirectory(dest);
        var act = () => WriteThree(dest, 100);
        act.Should().Throw<IOException>().WithMessage("*already exists*--overwrite*");
        WriteThree(dest, 100, overwrite: true);
        Directory.GetFiles(dest, "*.safetensors").Should().HaveCount(2);
    }

    [Fact]
    public void FailureLeavesNothingAtDestination()
    {
        var dest = _tmp["out"];
        var act = () =>
        {
            using var w = new SafetensorsWriter(dest, [new("x", DType.F32, [4])], 100, false);
            w.Write("x", new byte[12]); // 4 bytes short
        };
        act.Should().Throw<InvalidOperationException>().WithMessage("*'x'*12 bytes*16*");
        Directory.Exists(dest).Should().BeFalse();
        Directory.GetDirectories(_tmp.Path).Should().BeEmpty("the staging folder is removed too");
    }

    [Fact]
    public void OutOfOrderWriteIsRejected()
    {
        using var w = new SafetensorsWriter(_tmp["out"], [new("x", DType.F32, [1]), new("y", DType.F32, [1])], 100, false);
        var act = () => w.Write("y", new byte[4]);
        act.Should().Throw<InvalidOperationException>().WithMessage("*expected tensor 'x'*");
    }
}
