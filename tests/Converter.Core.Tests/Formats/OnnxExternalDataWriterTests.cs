using Converter.Formats.Onnx;
using Converter.Formats.Onnx.Proto;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;
using DataType = Converter.Formats.Onnx.Proto.TensorProto.Types.DataType;

namespace Converter.Tests.Formats;

public class OnnxExternalDataWriterTests
{
    private static ModelProto AddModel(OnnxModelBuilder? mb = null)
    {
        var g = new OnnxGraphBuilder("t");
        string x = g.Input("x", DataType.Float, 3);
        g.Initializer("w");
        g.OpNamed("Add", [x, "w"], ["y"]);
        g.Output("y", DataType.Float, 3);
        return (mb ?? new OnnxModelBuilder()).Build(g);
    }

    [Fact]
    public void WritesAlignedExternalTensorsThatOnnxRuntimeReads()
    {
        using var tmp = new TestData.TempDir();
        var dest = tmp["m"];
        using (var w = new OnnxExternalDataWriter(dest, overwrite: false))
        {
            w.Add<byte>("pad", DataType.Uint8, [3], [1, 2, 3]);
            var t = w.Add<float>("w", DataType.Float, [3], [10f, 20f, 30f]);
            t.DataLocation.Should().Be(TensorProto.Types.DataLocation.External);
            long.Parse(t.ExternalData.Single(e => e.Key == "offset").Value).Should().Be(64);
            t.ExternalData.Single(e => e.Key == "location").Value.Should().Be("model.onnx.data");
            Directory.Exists(dest).Should().BeFalse("nothing appears before commit");
            w.Commit(AddModel());
        }
        using var s = new InferenceSession(Path.Combine(dest, "model.onnx"));
        using var r = s.Run([NamedOnnxValue.CreateFromTensor("x", new DenseTensor<float>(new[] { 1f, 2f, 3f }, [3]))]);
        r.First().AsTensor<float>().ToArray().Should().Equal(11f, 22f, 33f);
        Directory.GetDirectories(tmp.Path).Should().HaveCount(1);
    }

    [Fact]
    public void ShortTensorIsRejectedAndAbortLeavesNothing()
    {
        using var tmp = new TestData.TempDir();
        using (var w = new OnnxExternalDataWriter(tmp["m"], overwrite: false))
        {
            var sink = w.Begin("w", DataType.Float, [3]);
            sink.Write<float>([1f, 2f]);
            var complete = () => sink.Complete();
            complete.Should().Throw<InvalidOperationException>().WithMessage("*'w'*8 bytes written, 12 expected*");
            var commit = () => w.Commit(AddModel());
            commit.Should().Throw<InvalidOperationException>();
        }
        Directory.GetFileSystemEntries(tmp.Path).Should().BeEmpty();
    }

    [Fact]
    public void ModelImportsEveryDomainItsFunctionsUse()
    {
        var mb = new OnnxModelBuilder();
        var f = mb.Function("converter.ai", "F");
        f.Op("MoE", [f.Input("a")], 1, "com.microsoft");
        var build = () => AddModel(mb);
        build.Should().Throw<InvalidOperationException>().WithMessage("*com.microsoft*");
        mb.Import("com.microsoft", 1);
        var m = AddModel(mb);
        m.Functions.Single().OpsetImport.Select(o => o.Domain).Should().Contain(["", "converter.ai", "com.microsoft"]);
        m.IrVersion.Should().Be(11);
    }
}
