using Converter.Numerics.Ggml;

namespace Converter.Formats.Gguf;

/// <summary>What a streaming GGUF export writes to: one file (<see cref="GgufWriter"/>) or llama.cpp's split files
/// (<see cref="GgufSplitWriter"/>). Declare every key and tensor, then write the tensors' data in declaration order,
/// then <see cref="Commit"/>; disposing without committing leaves nothing behind.</summary>
public interface IGgufWriter : IDisposable
{
    void Add(string key, GgufValue value);

    /// <summary>Declares the next tensor (ggml ne[], innermost first); the info's offset is within its file.</summary>
    GgufTensorInfo AddTensor(string name, ReadOnlySpan<long> dimensions, GgmlType type);

    void WriteHeader();

    void BeginTensor(string name);

    void WriteTensorData(ReadOnlySpan<byte> data);

    void WriteTensorValues(ReadOnlySpan<float> values);

    /// <summary>Quantizes with per-column importance weights (one per value of a row; see <see cref="GgufWriter.WriteTensorValues(ReadOnlySpan{float}, ReadOnlySpan{float})"/>).</summary>
    void WriteTensorValues(ReadOnlySpan<float> values, ReadOnlySpan<float> importance);

    void EndTensor();

    void Commit();
}
