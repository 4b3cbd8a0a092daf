using System.Security.Cryptography;
using Converter.Formats.Gguf;
using Converter.Models;
using Converter.Tests;
using Converter.Numerics.Ggml;
using Converter.Pipelines;
using Microsoft.Extensions.Logging.Abstractions;

namespace Converter.Core.Tests.Gguf;

/// <summary>
/// tiny-dsv3 exported with each of llama-quantize's file types against what llama-quantize itself wrote from the F32
/// export of the same checkpoint (golden/peer/llama-quantize-tiny-dsv3/manifest.tsv: every tensor's ggml type, ggml
/// shape, byte count and sha256, llama.cpp v0.5.0; /work/shared's reference/peer/llama-quantize-tiny-dsv3/README.md
/// says how the files were made).
/// </summary>
public class GgufLlamaQuantizeExportTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("lq-parity-").FullName;

    public void Dispose() => Directory.Delete(_dir, true);

    private sealed record Row(string Tensor, GgmlType Type, string Shape, long Bytes, string Sha256);

    private static Dictionary<string, Row> Manifest(string file)
    {
        var rows = new Dictionary<string, Row>();
        foreach (var line in File.ReadLines(TestData.Golden("peer", "llama-quantize-tiny-dsv3", "manifest.tsv")).Skip(1))
        {
            var f = line.Split('\t');
            if (f[0] != file) continue;
            rows[f[1]] = new Row(f[1], GgufFileTypes.ParseGgmlType(f[2]) ?? throw new InvalidDataException(line), f[3], long.Parse(f[4]), f[5]);
        }
        return rows;
    }

    public static TheoryData<string> Types() =>
        new("Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K", "IQ4_XS", "IQ4_NL", "Q5_0", "Q5_1");

    [Theory]
    [MemberData(nameof(Types))]
    public void EveryTensorsTypeAndShapeEqualLlamaQuantizes(string type)
    {
        var expected = Manifest(type + ".gguf");
        expected.Should().HaveCount(70);
        using var src = ModelCheckpoint.Open(TestData.Model("tiny-dsv3"));
        var options = new GgufExportOptions(Path.Combine(_dir, "x.gguf"), GgufQuantization.Parse(type));
        var typed = GgufExportPipeline.PlanTypes(src, GgufExportPipeline.Plan(src), options);
        typed.Select(t => t.Tensor.Name).Should().BeEquivalentTo(expected.Keys);
        foreach (var (t, ggml) in typed)
        {
            ggml.Should().Be(expected[t.Name].Type, t.Name);
            string.Join("x", t.Dimensions).Should().Be(expected[t.Name].Shape, t.Name);
        }
    }

    /// <summary>The bytes too: the acceptance (without an importance matrix).</summary>
    [Theory]
    [MemberData(nameof(Types))]
    public void EveryTensorsBytesEqualLlamaQuantizes(string type)
    {
        var expected = Manifest(type + ".gguf");
        var output = Path.Combine(_dir, type + ".gguf");
        using (var src = ModelCheckpoint.Open(TestData.Model("tiny-dsv3")))
            GgufExportPipeline.Run(src, new GgufExportOptions(output, GgufQuantization.Parse(type)), NullLogger.Instance);
        using var r = GgufReader.Open(output);
        r.Tensors.Should().HaveCount(expected.Count);
        foreach (var t in r.Tensors)
        {
            var data = r.GetTensorData(t);
            data.Length.Should().Be((int)expected[t.Name].Bytes, t.Name);
            Convert.ToHexStringLower(SHA256.HashData(data)).Should().Be(expected[t.Name].Sha256, $"{type} {t.Name} ({t.Type})");
        }
    }

    /// <summary>qwen3moe and deepseek4 (8 experts: llama.cpp's 8-expert rules apply) against llama-quantize --dry-run
    /// on their F32 exports (golden/peer/llama-quantize-dry-run). One deliberate difference: Q8_0 is also what
    /// llama.cpp's converter writes (<c>--outtype q8_0</c>), and like it keeps DeepSeek-V4's hyper-connection mixing
    /// weights F32, where llama-quantize would quantize them.</summary>
    [Theory]
    [InlineData("tiny-qwen3moe-norm")]
    [InlineData("tiny-dsv4-hc4")]
    public void Qwen3MoeAndDeepseek4TypesEqualLlamaQuantizesDryRun(string model)
    {
        var rows = File.ReadLines(TestData.Golden("peer", "llama-quantize-dry-run", model + ".tsv")).Skip(1).Select(l => l.Split('\t')).ToList();
        using var src = ModelCheckpoint.Open(TestData.Model(model));
        var plan = GgufExportPipeline.Plan(src);
        int compared = 0, keptF32 = 0;
        foreach (var fileType in rows.Select(r => r[0]).Distinct())
        {
            var expected = rows.Where(r => r[0] == fileType).ToDictionary(r => r[1], r => (Type: r[2], Shape: r[3]));
            var typed = GgufExportPipeline.PlanTypes(src, plan, new GgufExportOptions(Path.Combine(_dir, "x.gguf"), GgufQuantization.Parse(fileType)));
            typed.Select(t => t.Tensor.Name).Should().BeEquivalentTo(expected.Keys, fileType);
            foreach (var (t, type) in typed)
            {
                string.Join("x", t.Dimensions).Should().Be(expected[t.Name].Shape, t.Name);
                if (fileType == "Q8_0" && t.KeepF32 && expected[t.Name].Type != "F32")
                {
                    type.Should().Be(GgmlType.F32, t.Name);
                    keptF32++;
                    continue;
                }
                type.ToString().Should().Be(expected[t.Name].Type, $"{fileType} {t.Name}");
                compared++;
            }
        }
        compared.Should().BeGreaterThan(500);
        keptF32.Should().Be(model == "tiny-dsv4-hc4" ? 16 : 0);
    }
}
