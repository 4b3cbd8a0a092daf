using System.Security.Cryptography;
using Converter.Formats.Gguf;
using Converter.Models;
using Converter.Numerics.Ggml;
using Converter.Pipelines;
using Microsoft.Extensions.Logging.Abstractions;
using Converter.Tests;
using Xunit.Abstractions;

namespace Converter.Core.Tests.Ggml;

/// <summary>
/// The byte-parity reference of issue #18: golden/peer/llama-quantize-tiny-dsv3/manifest.tsv lists every tensor
/// llama-quantize (llama.cpp v0.5.0) wrote for 13 file types of tiny-dsv3, each with and without
/// <c>--imatrix imatrix.gguf</c> (llama-imatrix's output on the calibration tokens): ggml type, shape, bytes,
/// sha256. Each quantized row of the manifest is redone here from the F32 export with the manifest's type and,
/// for the <c>.imatrix.gguf</c> files, the importance llama-quantize derives (in_sum2 / counts per expert), so
/// the kernels are checked apart from the type-choice policy.
/// </summary>
public sealed class LlamaQuantizeParityTests : IDisposable
{
    private readonly ITestOutputHelper _out;
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "llama-quantize-parity-" + Guid.NewGuid().ToString("N"));

    public LlamaQuantizeParityTests(ITestOutputHelper output)
    {
        _out = output;
        Directory.CreateDirectory(_dir);
    }

    public void Dispose() => Directory.Delete(_dir, true);

    private static string Peer(string file) => TestData.Golden("peer", "llama-quantize-tiny-dsv3", file);

    private sealed record Row(string File, string Tensor, string Type, string Shape, long Bytes, string Sha256);

    private static List<Row> Manifest()
    {
        var rows = new List<Row>();
        foreach (var line in File.ReadLines(Peer("manifest.tsv")).Skip(1))
        {
            var f = line.Split('\t');
            rows.Add(new Row(f[0], f[1], f[2], f[3], long.Parse(f[4]), f[5]));
        }
        return rows;
    }

    /// <summary>llama-quantize's importance per tensor: in_sum2 / counts for each expert's slice, 1 where counts is 0.</summary>
    private static Dictionary<string, float[]> Importance()
    {
        using var r = GgufReader.Open(Peer("imatrix.gguf"));
        var result = new Dictionary<string, float[]>();
        foreach (var t in r.Tensors)
        {
            if (!t.Name.EndsWith(".in_sum2", StringComparison.Ordinal)) continue;
            string name = t.Name[..^".in_sum2".Length];
            var sums = F32(r, t);
            var counts = F32(r, r.GetTensor(name + ".counts"));
            int ne0 = sums.Length / counts.Length;
            var e = new float[sums.Length];
            for (int j = 0; j < counts.Length; j++)
                for (int i = 0; i < ne0; i++)
                    e[j * ne0 + i] = counts[j] > 0 ? sums[j * ne0 + i] / counts[j] : 1;
            result[name] = e;
        }
        return result;
    }

    private static float[] F32(GgufReader r, GgufTensorInfo t)
    {
        t.Type.Should().Be(GgmlType.F32, t.Name);
        var f = new float[t.ElementCount];
        GgmlQuantizer.Dequantize(GgmlType.F32, r.GetTensorData(t), f);
        return f;
    }

    private string ExportF32()
    {
        string output = Path.Combine(_dir, "input-f32.gguf");
        using var ckpt = ModelCheckpoint.Open(TestData.Golden("models", "tiny-dsv3"));
        GgufExportPipeline.Run(ckpt, new GgufExportOptions(output, GgmlType.F32), NullLogger.Instance);
        return output;
    }

    [Fact]
    public void EveryQuantizedTensorOfLlamaQuantizeIsReproducedByteForByte()
    {
        var manifest = Manifest();
        var importance = Importance();
        using var input = GgufReader.Open(ExportF32());

        // the F32 rows are llama-quantize's copies of the input: they pin that the input is the same
        foreach (var row in manifest.Where(r => r.Type == "F32"))
            Sha256(input.GetTensorData(input.GetTensor(row.Tensor)).ToArray()).Should().Be(row.Sha256, $"{row.File} {row.Tensor} (F32 input)");

        // one tensor, type and importance choice recurs across file types: quantize each once
        var cache = new Dictionary<(string, GgmlType, bool), (long Bytes, string Sha)>();
        var perType = new SortedDictionary<string, (int Match, int Total)>();
        var failures = new List<string>();
        foreach (var row in manifest.Where(r => r.Type != "F32"))
        {
            var type = Enum.Parse<GgmlType>(row.Type);
            var t = input.GetTensor(row.Tensor);
            string.Join("x", t.Dimensions).Should().Be(row.Shape, row.Tensor);
            bool withImatrix = row.File.EndsWith(".imatrix.gguf", StringComparison.Ordinal);
            float[]? w = null;
            // llama-quantize uses an entry only when it has ne0 x ne2 values (token_embd has none)
            if (withImatrix && importance.TryGetValue(row.Tensor, out var e) && e.Length == t.Dimensions[0] * (t.Dimensions.Count > 2 ? t.Dimensions[2] : 1))
                w = e;
            var key = (row.Tensor, type, w != null);
            if (!cache.TryGetValue(key, out var got))
            {
                var q = Quantize(input, t, type, w);
                got = (q.Length, Sha256(q));
                cache[key] = got;
            }
            bool ok = got.Bytes == row.Bytes && got.Sha == row.Sha256;
            string label = row.Type + (withImatrix ? "+imatrix" : "");
            var c = perType.GetValueOrDefault(label);
            perType[label] = (c.Match + (ok ? 1 : 0), c.Total + 1);
            if (!ok) failures.Add($"{row.File} {row.Tensor} {row.Type} {row.Shape}: {got.Bytes} bytes sha {got.Sha[..12]}, llama-quantize {row.Bytes} bytes sha {row.Sha256[..12]}");
        }
        string summary = string.Join(", ", perType.Select(kv => $"{kv.Key} {kv.Value.Match}/{kv.Value.Total}"));
        int total = perType.Values.Sum(v => v.Total), matched = perType.Values.Sum(v => v.Match);
        _out.WriteLine($"{matched} of {total} quantized tensors match llama-quantize: {summary}");
        foreach (var f in failures.Take(50)) _out.WriteLine(f);
        total.Should().Be(1222, "the manifest's quantized rows");
        failures.Should().BeEmpty($"{matched} of {total} match ({summary}); first: {failures.FirstOrDefault()}");
    }

    /// <summary>Quantizes every matrix of a (possibly 3-D, expert-stacked) tensor with its own importance slice.</summary>
    private static byte[] Quantize(GgufReader input, GgufTensorInfo t, GgmlType type, float[]? importance)
    {
        var x = new float[t.ElementCount];
        GgmlQuantizer.Dequantize(GgmlType.F32, input.GetTensorData(t), x);
        int ne0 = (int)t.Dimensions[0];
        int matrices = t.Dimensions.Count > 2 ? (int)t.Dimensions[2] : 1;
        int perMatrix = x.Length / matrices;
        long bytesPerMatrix = GgmlTypeInfo.ByteSize(type, perMatrix);
        var y = new byte[bytesPerMatrix * matrices];
        for (int m = 0; m < matrices; m++)
        {
            var w = importance == null ? default : importance.AsSpan(m * ne0, ne0);
            GgmlQuantizer.Quantize(type, x.AsSpan(m * perMatrix, perMatrix), y.AsSpan((int)(m * bytesPerMatrix), (int)bytesPerMatrix), w, -1);
        }
        return y;
    }

    private static string Sha256(byte[] data) => Convert.ToHexString(SHA256.HashData(data)).ToLowerInvariant();
}
