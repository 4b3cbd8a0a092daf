using Converter.Formats.Onnx;
using Converter.Models;
using Converter.Decoder.Onnx;
using Converter.Pipelines;
using Converter.Sharding;
using Microsoft.Extensions.Logging.Abstractions;

namespace Converter.Tests.Sharding;

/// <summary>
/// `shard --onnx` converts the replicated weights once: ranks after the first copy every initializer no routed expert
/// feeds from rank 0's model.onnx.data. The copies must be what converting them again gives, byte for byte.
/// </summary>
public class ShardOnnxReuseTests
{
    [Theory]
    [InlineData(OnnxWeightFormat.Fp8)]
    [InlineData(OnnxWeightFormat.Int4)]
    public void ARankCopyingRankZerosReplicatedWeightsWritesTheBytesOfAFreshExport(OnnxWeightFormat weights)
    {
        using var tmp = new TestData.TempDir();
        using var ckpt = ModelCheckpoint.Open(TestData.Model("tiny-dsv3"));
        var arch = ShardTestData.Arch();
        var placement = PlacementPlanner.Plan(arch, new PlacementOptions(4, 0, PlacementMethod.Balanced, 2), ShardTestData.Calibration(arch));
        foreach (var d in new[] { "r0", "fresh", "reused" }) Directory.CreateDirectory(tmp[d]);
        ShardOnnxExport.Write(ckpt, placement, 0, tmp["r0"], weights, NullLogger.Instance);
        ShardOnnxExport.Write(ckpt, placement, 1, tmp["fresh"], weights, NullLogger.Instance);
        ShardOnnxExport.Write(ckpt, placement, 1, tmp["reused"], weights, NullLogger.Instance, reuseFrom: tmp["r0"]);
        foreach (var f in new[] { OnnxExternalDataWriter.ModelFileName, OnnxExternalDataWriter.DataFileName })
            File.ReadAllBytes(Path.Combine(tmp["reused"], f)).SequenceEqual(File.ReadAllBytes(Path.Combine(tmp["fresh"], f))).Should().BeTrue(f);

        // The copy path was taken: a byte changed in rank 0's lm_head shows up in the next rank's, while its routed
        // experts (which differ between ranks) are never copied.
        using (var r0 = new OnnxExternalInitializers(tmp["r0"]))
        {
            r0.TryGet("lm_head.weight", 1, [256, 256], out var head).Should().BeTrue();
            using var fs = new FileStream(r0.DataPath, FileMode.Open, FileAccess.Write, FileShare.ReadWrite);
            fs.Position = head.Offset + 100;
            fs.WriteByte(0x7F);
        }
        Directory.CreateDirectory(tmp["tampered"]);
        ShardOnnxExport.Write(ckpt, placement, 1, tmp["tampered"], weights, NullLogger.Instance, reuseFrom: tmp["r0"]);
        using var fresh = new OnnxExternalInitializers(tmp["fresh"]);
        using var tampered = new OnnxExternalInitializers(tmp["tampered"]);
        fresh.TryGet("lm_head.weight", 1, [256, 256], out var h1).Should().BeTrue();
        var a = File.ReadAllBytes(fresh.DataPath);
        var b = File.ReadAllBytes(tampered.DataPath);
        b.Length.Should().Be(a.Length);
        int differing = 0;
        for (int i = 0; i < a.Length; i++)
            if (a[i] != b[i]) { differing++; i.Should().Be((int)(h1.Offset + 100)); }
        differing.Should().Be(a[h1.Offset + 100] == 0x7F ? 0 : 1);
    }
}
