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
    [InlineData("imatrix.gguf", "manifest.tsv", "Q4_K_M.imatrix.gguf")]
    // llama-imatrix's conversion of the same file: weights equal to float32 rounding, which moves some of llama-quantize's
    // own bytes (manifest.legacy-imatrix.tsv: llama-quantize --imatrix imatrix.legacy.dat ... Q4_K_M)
    [InlineData("imatrix.legacy.dat", "manifest.legacy-imatrix.tsv", "Q4_K_M.legacy-imatrix.gguf")]
    public void TensorsOfLlamaQuantizesTypeHaveItsBytes(string imatrix, string manifest, string file)
    {
        string output = _tmp["q4km.gguf"];
        using (var ckpt = ModelCheckpoint.Open(TestData.Model("tiny-dsv3")))
            GgufExportPipeline.Run(ckpt, new GgufExportOptions(output, GgmlType.Q4_K) { Scheme = GgufTypeScheme.Q4_K_M, Overwrite = true,
                Imatrix = (ImatrixFile.Read(Peer(imatrix)), Peer(imatrix)) }, NullLogger.Instance);
        var withImatrix = Manifest(file, manifest);
        var without = Manifest("Q4_K_M.gguf");
        using var r = GgufReader.Open(output);
        int same = 0, changedByImatrix = 0;
        foreach (var t in r.Tensors)
        {
            var (type, sha) = withImatrix[t.Name];
            if (t.Type.ToString() != type) continue; // the mix's fallbacks for rows that are not whole blocks: not this test's concern
            Convert.ToHexStringLower(SHA256.HashData(r.GetTensorData(t))).Should().Be(sha, t.Name);
            same++;
            if (without[t.Name].Sha != sha) changedByImatrix++;
        }
        same.Should().BeGreaterThanOrEqualTo(52);
        changedByImatrix.Should().BeGreaterThanOrEqualTo(20); // the importance changed these bytes in llama-quantize, and here alike
    }
}
