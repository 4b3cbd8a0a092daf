using Converter.Formats.Gguf;

namespace Converter.Models;

/// <summary>Logical float32 values of checkpoint tensors (FP8 blocks dequantized), row-major in PyTorch shape.</summary>
public interface ICheckpointFloatSource
{
    /// <summary>The whole tensor.</summary>
    float[] Read(string name);

    /// <summary>Size of dimension 0 (the rows of a 2-D weight).</summary>
    long Rows(string name);

    long ElementCount(string name);

    /// <summary>Rows [firstRow, firstRow + dst.Length / cols) of a tensor; <paramref name="firstRow"/> must be a
    /// multiple of 128 (FP8 block rows).</summary>
    void ReadRows(string name, long firstRow, Span<float> dst);

    /// <summary>Preferred number of values per ReadRows call (bounds memory).</summary>
    long SlabValues { get; }
}

/// <summary>Writes a tensor's float32 values in GGUF element order, in chunks of whole rows (ne0 values).</summary>
/// <param name="source">The checkpoint's tensors.</param>
/// <param name="write">Receives the next chunk of the GGUF tensor.</param>
public delegate void GgufTensorProducer(ICheckpointFloatSource source, Action<ReadOnlySpan<float>> write);

/// <summary>
/// One GGUF tensor made from checkpoint tensors. <paramref name="Dimensions"/> are ggml ne[] (innermost first);
/// <paramref name="KeepF32"/> marks tensors llama.cpp needs in F32 (norms, router, biases) whatever the scheme.
/// </summary>
public sealed record GgufTensorPlan(string Name, long[] Dimensions, bool KeepF32, IReadOnlyList<string> Sources, GgufTensorProducer Produce)
{
    /// <summary>Written in this ggml type whatever the scheme, from its one source's stored integers (lookup tables
    /// such as I32 token-to-expert maps); <see cref="Produce"/> is not called then.</summary>
    public Numerics.Ggml.GgmlType? FixedType { get; init; }
}

/// <summary>Everything an architecture's GGUF mapping decides: metadata keys (exact types) and tensors.</summary>
public sealed record GgufModelPlan(string Architecture, IReadOnlyList<KeyValuePair<string, GgufValue>> Metadata, IReadOnlyList<GgufTensorPlan> Tensors)
{
    /// <summary>Why llama.cpp would not compute what the checkpoint computes (an export is refused unless forced).</summary>
    public IReadOnlyList<string> Inexact { get; init; } = [];

    /// <summary>Parts of the checkpoint deliberately left out (logged), e.g. the MTP layer.</summary>
    public IReadOnlyList<string> LeftOut { get; init; } = [];

    /// <summary>Number of <c>blk.N</c> blocks (the layer count type mixes use).</summary>
    public int BlockCount { get; init; }

    /// <summary>Routed experts per MoE layer (0 for a dense model); llama.cpp's mixes treat 8 specially.</summary>
    public int ExpertCount { get; init; }
}
