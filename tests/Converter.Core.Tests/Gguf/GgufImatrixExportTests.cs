using System.Security.Cryptography;
using Converter.Formats.Gguf;
using Converter.Models;
using Converter.Numerics.Ggml;
using Converter.Pipelines;
using Converter.Tests;
using Microsoft.Extensions.Logging.Abstractions;

namespace Converter.Core.Tests.Gguf;

/// <summary>
/// export gguf --imatrix against llama-quantize --imatrix (golden/peer/llama-quantize-tiny-dsv3/manifest.tsv, from the same
/// imatrix.gguf): every tensor written in llama-quantize's type has its bytes, so the importance reaches the quantizer as
/// llama-quantize hands it over (per tensor, per expert slice of the 3-D expert tensors, per head of attn_k_b/attn_v_b).
/// </summary>
public sealed class GgufImatrixExportTests : IDisposable
{
    private readonly TestData.TempDir _tmp = new();

    public void Dispose() => _tmp.Dispose();

    private static string Peer(string name) => TestData.Golden("peer", "llama-quantize-tiny-dsv3", name);

    private static Dictionary<string, (string Type, string Sha)> Manifest(string file, string manifest = "manifest.tsv") =>
        File.ReadLines(Peer(manifest)).Skip(1).Select(l => l.Split('\t')).Where(p => p[0] == file).ToDictionary(p => p[1], p => (p[2], p[5]));

    [Theory]
    [InlineData("Q2_K", "imatrix.gguf", "manifest.tsv", "Q2_K.imatrix.gguf")]
    [InlineData("Q3_K_S", "imatrix.gguf", "manifest.tsv", "Q3_K_S.imatrix.gguf")]
    [InlineData("Q3_K_M", "imatrix.gguf", "manifest.tsv", "Q3_K_M.imatrix.gguf")]
    [InlineData("Q3_K_L", "imatrix.gguf", "manifest.tsv", "Q3_K_L.imatrix.gguf")]
    [InlineData("Q4_K_S", "imatrix.gguf", "manifest.tsv", "Q4_K_S.imatrix.gguf")]
    [InlineData("Q4_K_M", "imatrix.gguf", "manifest.tsv", "Q4_K_M.imatrix.gguf")]
    [InlineData("Q5_K_S", "imatrix.gguf", "manifest.tsv", "Q5_K_S.imatrix.gguf")]
    [InlineData("Q5_K_M", "imatrix.gguf", "manifest.tsv", "Q5_K_M.imatrix.gguf")]
    [InlineData("Q6_K", "imatrix.gguf", "manifest.tsv", "Q6_K.imatrix.gguf")]
    [InlineData("IQ4_XS", "imatrix.gguf", "manifest.tsv", "IQ4_XS.imatrix.gguf")]
    [InlineData("IQ4_NL", "imatrix.gguf", "manifest.tsv", "IQ4_NL.imatrix.gguf")]
    [InlineData("Q5_0", "imatrix.gguf", "manifest.tsv", "Q5_0.imatrix.gguf")]
    [InlineData("Q5_1", "imatrix.gguf", "manifest.tsv", "Q5_1.imatrix.gguf")]
    // llama-imatrix's conversion of the same file: weights equal to float32 rounding, which moves some of llama-quantize's
    // own bytes (manifest.legacy-imatrix.tsv: llama-quantize --imatrix imatrix.legacy.dat ... Q4_K_M)
    [InlineData("Q4_K_M", "imatrix.legacy.dat", "manifest.legacy-imatrix.tsv", "Q4_K_M.legacy-imatrix.gguf")]
    public void EveryTensorHasLlamaQuantizesTypeAndBytes(string fileType, string imatrix, string manifest, string file)
    {
        string output = _tmp["q4km.gguf"];
        using (var ckpt = ModelCheckpoint.Open(TestData.Model("tiny-dsv3")))
            GgufExportPipeline.Run(ckpt, new GgufExportOptions(output, GgufQuantization.Parse(fileType), Overwrite: true)
                { Imatrix = (ImatrixFile.Read(Peer(imatrix)), Peer(imatrix)) }, NullLogger.Instance);
        var withImatrix = Manifest(file, manifest);
        var without = Manifest(fileType + ".gguf");
        using var r = GgufReader.Open(output);
        int changedByImatrix = 0;
        r.Tensors.Should().HaveCount(withImatrix.Count);
        foreach (var t in r.Tensors)
        {
            var (type, sha) = withImatrix[t.Name];
            t.Type.ToString().Should().Be(type, t.Name);
            Convert.ToHexStringLower(SHA256.HashData(r.GetTensorData(t))).Should().Be(sha, t.Name);
            if (without[t.Name].Sha != sha) changedByImatrix++;
        }
        changedByImatrix.Should().BePositive("the importance changed bytes in llama-quantize, and here alike");
    }
}
