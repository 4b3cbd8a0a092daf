using Converter.Formats.Gguf;
using Converter.Models;
using Converter.Numerics.Ggml;
using Microsoft.Extensions.Logging;

namespace Converter.Pipelines;

/// <summary>
/// How llama-quantize uses an importance matrix (tools/quantize/quantize.cpp and src/llama-quant.cpp, v0.5.0), for
/// <c>export gguf --imatrix</c>: each entry becomes in_sum2 / count per expert (count 0: all ones; legacy .dat:
/// sums / ncall), looked up by the tensor's GGUF name for every tensor that is quantized (not kept F32); a tensor
/// without an entry is quantized without weights (llama-quantize logs "did not find weights"), an entry whose size is
/// not ne0 x ne2 is an error except for token_embd (then it goes without); the quantizer gets the slice of the
/// expert (or head) each row belongs to. The output records the file, dataset, entry and chunk counts under
/// <c>quantize.imatrix.*</c>, as llama-quantize does.
/// </summary>
public sealed class GgufImatrix
{
    private readonly ImatrixFile _file;
    private readonly string _path;
    private readonly float[]?[] _weights;

    public GgufImatrix(ImatrixFile file, string path, IReadOnlyList<GgufTensorPlan> tensors, IReadOnlyList<GgmlType> types, ILogger log)
    {
        (_file, _path) = (file, path);
        _weights = new float[tensors.Count][];
        var missing = new List<string>();
        int used = 0;
        for (int i = 0; i < tensors.Count; i++)
        {
            var t = tensors[i];
            if (types[i] == GgmlType.F32 || t.Dimensions.Length < 2) continue; // kept as read: llama-quantize does not quantize (nor look up) it
            if (!file.Entries.TryGetValue(t.Name, out var e))
            {
                missing.Add(t.Name);
                continue;
            }
            long expected = t.Dimensions[0] * (t.Dimensions.Length > 2 ? t.Dimensions[2] : 1);
            if (e.Sums.Length != expected)
            {
                if (t.Name == "token_embd.weight")
                {
                    log.LogWarning("{Path}: entry '{Name}' has {Size} values, the tensor needs {Expected}: quantized without importance (as llama-quantize)", path, t.Name, e.Sums.Length, expected);
                    continue;
                }
                throw new InvalidDataException($"{path}: entry '{t.Name}' has {e.Sums.Length} values, tensor '{t.Name}' needs {expected} " +
                                               $"({t.Dimensions[0]} columns x {(t.Dimensions.Length > 2 ? t.Dimensions[2] : 1)} matrices): the imatrix is of another model");
            }
            _weights[i] = e.Importance(file.IsLegacy);
            used++;
        }
        if (missing.Count > 0)
            log.LogInformation("{Path}: no importance for {Count} quantized tensor(s), quantized without (as llama-quantize): {Names}", path, missing.Count, string.Join(", ", missing));
        log.LogInformation("{Path}: importance matrix of {Entries} entries ({Chunks} chunks of {Size}), used for {Used} tensors",
            path, file.Entries.Count, file.ChunkCount, file.ChunkSize, used);
    }

    /// <summary>Tensor <paramref name="index"/>'s importance [matrices x ne0] (the quantizer takes row r's slice r / ne1), or null.</summary>
    public float[]? For(int index) => _weights[index];

    /// <summary>llama-quantize's keys: quantize.imatrix.file (the path as given), .dataset (the first), .entries_count, .chunks_count (when positive).</summary>
    public void AddKeys(IGgufWriter w)
    {
        w.Add("quantize.imatrix.file", GgufValue.String(Truncate(_path)));
        if (_file.Datasets.Count > 0) w.Add("quantize.imatrix.dataset", GgufValue.String(Truncate(_file.Datasets[0])));
        w.Add("quantize.imatrix.entries_count", GgufValue.UInt32((uint)_file.Entries.Count));
        if (_file.ChunkCount > 0) w.Add("quantize.imatrix.chunks_count", GgufValue.UInt32((uint)_file.ChunkCount));
    }

    /// <summary>llama-quantize copies these strings into a 128-byte override: at most 127 bytes.</summary>
    private static string Truncate(string s)
    {
        var bytes = System.Text.Encoding.UTF8.GetBytes(s);
        return bytes.Length <= 127 ? s : System.Text.Encoding.UTF8.GetString(bytes, 0, 127);
    }
}
