using Converter.Pipelines;
using FluentAssertions;
using Xunit;

namespace Converter.Tests.Onnx;

public class OnnxWeightSlabTests
{
    /// <summary>
    /// The exporter maps source tensors a slab at a time; the slab size must not change a byte. 997 elements
    /// (prime: slabs end mid-row and mid-conversion-chunk) against the default, which holds every tiny tensor whole.
    /// </summary>
    [Fact]
    public void SlabbedReadsWriteTheSameExternalDataAsWholeTensorReads()
    {
        using var tmp = new TestData.TempDir();
        var whole = OnnxExportPipeline.Run(TestData.Model("tiny-dsv3"), tmp["whole"], new OnnxExportOptions());
        var slabbed = OnnxExportPipeline.Run(TestData.Model("tiny-dsv3"), tmp["slabbed"], new OnnxExportOptions { SlabElements = 997 });
        var a = File.ReadAllBytes(Path.Combine(whole.OutputDirectory, "model.onnx.data"));
        var b = File.ReadAllBytes(Path.Combine(slabbed.OutputDirectory, "model.onnx.data"));
        a.Length.Should().BeGreaterThan(1_000_000);
        b.Should().Equal(a);
        File.ReadAllBytes(slabbed.ModelPath).Should().Equal(File.ReadAllBytes(whole.ModelPath));
    }
}
