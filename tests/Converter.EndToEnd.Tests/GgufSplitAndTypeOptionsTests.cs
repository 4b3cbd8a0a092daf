using System.Text.Json.Nodes;
using Converter.Formats.Gguf;
using Converter.Tests;

namespace Converter.EndToEnd.Tests;

/// <summary>
/// <c>export gguf --split-max-size</c>: llama.cpp's split files load in llama.cpp (node-llama-cpp 3.22.1, v0.5.0) from
/// the first part and verify exactly as the single file; and the type options' bad input (exit 2, one line, no file).
/// </summary>
public sealed class GgufSplitAndTypeOptionsTests : IDisposable
{
    private readonly TestData.TempDir _tmp = new();

    public void Dispose() => _tmp.Dispose();

    private static JsonObject VerifyJson(string gguf)
    {
        var r = Converter.Tests.Cli.Run("verify", gguf, "--golden", TestData.Golden("tiny-dsv3", "eval.safetensors"), "--json");
        r.ExitCode.Should().Be(0, r.ToString());
        var json = JsonNode.Parse(r.StdOut)!.AsObject();
        json.Remove("artifact"); // the path
        return json;
    }

    [Fact]
    public void ThreePartSplitLoadsInLlamaCppAndVerifiesExactlyAsTheSingleFile()
    {
        string single = _tmp["single.gguf"], split = _tmp["split.gguf"];
        Converter.Tests.Cli.Run("export", "gguf", TestData.Model("tiny-dsv3"), "-o", single, "--type", "q8_0", "-q").ExitCode.Should().Be(0);
        var r = Converter.Tests.Cli.Run("export", "gguf", TestData.Model("tiny-dsv3"), "-o", split, "--type", "q8_0", "--split-max-size", "2.5M", "-q");
        r.ExitCode.Should().Be(0, r.ToString());
        string[] parts = [_tmp["split-00001-of-00003.gguf"], _tmp["split-00002-of-00003.gguf"], _tmp["split-00003-of-00003.gguf"]];
        Directory.GetFiles(_tmp.Path).Order().Should().Equal(new[] { single, single + ".manifest.json" }.Concat(parts).Order(), "three parts (split output writes no manifest yet) and no temporary file");

        // every tensor of the single file, in the same order and bytes, spread over the parts; keys only in the first
        using var one = GgufReader.Open(single);
        var names = new List<string>();
        for (int p = 0; p < 3; p++)
        {
            using var part = GgufReader.Open(parts[p]);
            part["split.no"].AsUInt16().Should().Be((ushort)p);
            part["split.count"].AsUInt16().Should().Be(3);
            part["split.tensors.count"].AsInt32().Should().Be(one.Tensors.Count);
            part.TryGetValue("general.architecture", out _).Should().Be(p == 0);
            part.Tensors.Sum(t => GgufFormat.AlignUp(t.ByteSize, 32)).Should().BeLessThanOrEqualTo(2_500_000);
            foreach (var t in part.Tensors)
            {
                names.Add(t.Name);
                var o = one.GetTensor(t.Name);
                (t.Type, string.Join("x", t.Dimensions)).Should().Be((o.Type, string.Join("x", o.Dimensions)));
                part.GetTensorData(t).SequenceEqual(one.GetTensorData(o)).Should().BeTrue(t.Name);
            }
        }
        names.Should().Equal(one.Tensors.Select(t => t.Name));

        var a = VerifyJson(single);
        var b = VerifyJson(parts[0]);
        b.ToJsonString().Should().Be(a.ToJsonString(), "llama.cpp computes the same logits from the split file");
        a["kl_mean"]!.GetValue<double>().Should().BeLessThan(5e-3);
    }

    [Fact]
    public void SplitByTensorCountAndExistingPartsAreRefused()
    {
        string split = _tmp["t.gguf"];
        Converter.Tests.Cli.Run("export", "gguf", TestData.Model("tiny-dsv3"), "-o", split, "--type", "q4_k_m", "--split-max-tensors", "30", "-q").ExitCode.Should().Be(0);
        string[] parts = [_tmp["t-00001-of-00003.gguf"], _tmp["t-00002-of-00003.gguf"], _tmp["t-00003-of-00003.gguf"]];
        parts.Select(p => { using var g = GgufReader.Open(p); return g.Tensors.Count; }).Should().Equal(30, 30, 10);
        var again = Converter.Tests.Cli.Run("export", "gguf", TestData.Model("tiny-dsv3"), "-o", split, "--type", "q4_k_m", "--split-max-tensors", "30", "-q");
        again.ExitCode.Should().Be(2);
        again.StdErr.Should().Contain("t-00001-of-00003.gguf: already exists");
        Directory.GetFiles(_tmp.Path).Should().HaveCount(3, "no temporary file left");
    }

    [Theory]
    [InlineData("unknown GGUF type 'q4_k_x'", "--type", "q4_k_x")]
    [InlineData("bad regular expression", "--type", "q4_k_m", "--tensor-type", "ffn_(down=q6_k")]
    [InlineData("unknown ggml type 'q7_k'", "--type", "q4_k_m", "--tensor-type", "ffn_down=q7_k")]
    [InlineData("expected REGEX=TYPE", "--type", "q4_k_m", "--tensor-type", "ffn_down")]
    [InlineData("'12X' is not a size", "--type", "q8_0", "--split-max-size", "12X")]
    [InlineData("--split-max-tensors 0: must be at least 1", "--type", "q8_0", "--split-max-tensors", "0")]
    [InlineData("--output-type 'q9': unknown ggml type", "--type", "q8_0", "--output-type", "q9")]
    public void BadTypeOptionsExitWith2AndOneLine(string message, params string[] options)
    {
        string output = _tmp["bad.gguf"];
        var r = Converter.Tests.Cli.Run(["export", "gguf", TestData.Model("tiny-dsv3"), "-o", output, .. options]);
        r.ExitCode.Should().Be(2, r.ToString());
        // one line (a usage error adds the pointer to --help)
        r.StdErr.Trim().Split('\n').Where(l => !l.StartsWith("see 'converter", StringComparison.Ordinal)).Should().ContainSingle().Which.Should().Contain(message);
        Directory.GetFiles(_tmp.Path).Should().BeEmpty();
    }

    [Fact]
    public void TensorTypeOverridesApplyAsLlamaQuantizes()
    {
        string path = _tmp["o.gguf"];
        var r = Converter.Tests.Cli.Run("export", "gguf", TestData.Model("tiny-dsv3"), "-o", path, "--type", "Q4_K_M", "--tensor-type", @"blk\.[12]\.ffn_up_exps=Q8_0",
            "--tensor-type", "ffn_down_exps=q4_k", "-q");
        r.ExitCode.Should().Be(0, r.ToString());
        using var g = GgufReader.Open(path);
        g.GetTensor("blk.1.ffn_up_exps.weight").Type.Should().Be(Numerics.Ggml.GgmlType.Q8_0);
        g.GetTensor("blk.3.ffn_up_exps.weight").Type.Should().Be(Numerics.Ggml.GgmlType.Q4_K);
        g.GetTensor("blk.3.ffn_down_exps.weight").Type.Should().Be(Numerics.Ggml.GgmlType.Q5_0, "the override asks Q4_K; 128-wide rows fall back");
        g["general.file_type"].AsUInt32().Should().Be(15);
    }
}
