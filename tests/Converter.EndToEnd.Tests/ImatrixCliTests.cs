using Converter.Formats.Gguf;

namespace Converter.Tests;

/// <summary>`calibrate --imatrix` and `export gguf --imatrix` through the real executable: outputs, exit codes, no partial files.</summary>
public sealed class ImatrixCliTests : IDisposable
{
    private readonly TestData.TempDir _tmp = new();

    public void Dispose() => _tmp.Dispose();

    private static string Model => TestData.Golden("models", "tiny-dsv3");
    private static string PeerImatrix => TestData.Golden("peer", "llama-quantize-tiny-dsv3", "imatrix.gguf");

    [Fact]
    public void CalibrateWritesOnlyTheImatrixWithoutAFolder()
    {
        string path = _tmp["ours.imatrix.gguf"];
        var r = Cli.Run("calibrate", Model, "--tokens", TestData.Golden("tiny-dsv3", "calib.safetensors"), "--imatrix", path, "-q");
        r.ExitCode.Should().Be(0, r.ToString());
        r.StdOut.Trim().Should().Be(path);
        var f = ImatrixFile.Read(path);
        f.Entries.Keys.Should().Equal(ImatrixFile.Read(PeerImatrix).Entries.Keys); // every entry llama-imatrix writes, no more
        (f.ChunkCount, f.ChunkSize).Should().Be((64, 128));
        Directory.GetFileSystemEntries(_tmp.Path).Should().Equal([path]); // the staging folder is gone
    }

    [Fact]
    public void CalibrateNeedsAnOutputAndRefusesImatrixWithOnnx()
    {
        var none = Cli.Run("calibrate", Model, "--tokens", TestData.Golden("tiny-dsv3", "calib.safetensors"));
        none.ExitCode.Should().Be(2, none.ToString());
        none.StdErr.Should().Contain("--imatrix");
        var onnx = Cli.Run("calibrate", Model, "--tokens", TestData.Golden("tiny-dsv3", "calib.safetensors"), "--imatrix", _tmp["x.gguf"], "--onnx", _tmp.Path);
        onnx.ExitCode.Should().Be(2, onnx.ToString());
        File.Exists(_tmp["x.gguf"]).Should().BeFalse();
    }

    [Fact]
    public void ExportRecordsTheImatrixAsLlamaQuantize()
    {
        string output = _tmp["q4km.gguf"];
        var r = Cli.Run("export", "gguf", Model, "-o", output, "--type", "q4_k_m", "--imatrix", PeerImatrix, "-q");
        r.ExitCode.Should().Be(0, r.ToString());
        using var g = GgufReader.Open(output);
        g["quantize.imatrix.file"].AsString().Should().Be(PeerImatrix);
        g["quantize.imatrix.dataset"].AsString().Should().Be("calib.bin");
        g["quantize.imatrix.entries_count"].AsUInt32().Should().Be(48);
        g["quantize.imatrix.chunks_count"].AsUInt32().Should().Be(64);
    }

    [Fact]
    public void AnImatrixOfAnotherShapeIsBadInputNamingFileAndTensor()
    {
        var f = ImatrixFile.Read(PeerImatrix);
        f.Entries["blk.0.ffn_down.weight"] = new ImatrixEntry(new float[256], [8192]); // ffn_down reads 512 columns
        string im = _tmp["wrong.imatrix.gguf"], output = _tmp["out.gguf"];
        f.Write(im);
        var r = Cli.Run("export", "gguf", Model, "-o", output, "--type", "q4_k", "--imatrix", im);
        r.ExitCode.Should().Be(2, r.ToString());
        r.StdErr.Should().Contain(im).And.Contain("blk.0.ffn_down.weight");
        File.Exists(output).Should().BeFalse();
        Directory.GetFiles(_tmp.Path).Should().Equal([im]); // no temporary GGUF left

        File.WriteAllBytes(_tmp["junk.dat"], [1, 2, 3, 4, 5]);
        var junk = Cli.Run("export", "gguf", Model, "-o", output, "--imatrix", _tmp["junk.dat"]);
        junk.ExitCode.Should().Be(2, junk.ToString());
        junk.StdErr.Should().Contain("junk.dat");
    }
}
