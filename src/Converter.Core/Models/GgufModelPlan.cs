using Converter.Formats.Gguf;

namespace Converter.Models;

/// <summary>Writes a tensor's float32 values in GGUF element order, in chunks of whole rows (ne0 values).</summary>
/// <param name="read">Returns a checkpoint tensor's logical float32 values, row-major in its PyTorch shape.</param>
/// <param name="write">Receives the next chunk of the GGUF tensor.</param>
public delegate void GgufTensorProducer(Func<string, float[]> read, Action<ReadOnlySpan<float>> write);

/// <summary>
/// One GGUF tensor made from checkpoint tensors. <paramref name="Dimensions"/> are ggml ne[] (innermost first);
/// <paramref name="KeepF32"/> marks tensors llama.cpp needs in F32 (norms, router, biases) whatever the scheme.
/// </summary>
public sealed record GgufTensorPlan(string Name, long[] Dimensions, bool KeepF32, IReadOnlyList<string> Sources, GgufTensorProducer Produce);

/// <summary>Everything an architecture's GGUF mapping decides: metadata keys (exact types) and tensors.</summary>
public sealed record GgufModelPlan(string Architecture, IReadOnlyList<KeyValuePair<string, GgufValue>> Metadata, IReadOnlyList<GgufTensorPlan> Tensors);
