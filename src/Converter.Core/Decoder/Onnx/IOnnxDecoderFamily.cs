namespace Converter.Decoder.Onnx;

/// <summary>Rotary cos/sin caches [positions, Half] (RotaryEmbedding's layout), shared by every layer.</summary>
public sealed record OnnxRopeTables(float[] Cos, float[] Sin, long Half);

/// <summary>A layer's key and value cache tensors as the graph holds them: [batch, Heads, sequence, HeadSize] each.</summary>
public sealed record OnnxKvCacheShape(int Heads, int HeadSize)
{
    /// <summary>Values one token adds to one layer's cache (key and value together).</summary>
    public long ValuesPerToken => 2L * Heads * HeadSize;
}

/// <summary>One layer's cache in a KV-cache decoder: the past inputs, and the present values the attention must produce
/// (past followed by this call's tokens).</summary>
public sealed record OnnxLayerCache(string PastKey, string PastValue, string PresentKey, string PresentValue);

/// <summary>
/// What a model family contributes to the shared ONNX decoder graph (<see cref="OnnxDecoderGraph"/>): its
/// attention, and where the family has more than the plain residual, how it carries the residual between the
/// sublayers (<see cref="Residual"/>). The scaffold owns the rest: embedding, mask and positions, the residual
/// chain with its norms, the dense and MoE feed-forward blocks (routing from the family's
/// <see cref="Models.RoutingRule"/>), the head, layer slices, expert-parallel rank graphs and the metadata the
/// runtime reads.
/// </summary>
public interface IOnnxDecoderFamily
{
    /// <summary>Positions the rotary tables cover (the graph accepts position ids below this).</summary>
    int MaxPositions { get; }

    /// <summary>The rotary tables the attention reads through <see cref="OnnxDecoderBuilder.Cos"/> / <see cref="OnnxDecoderBuilder.Sin"/>;
    /// null where the family computes its rotary angles in the graph (no tables are stored, both names stay empty).</summary>
    OnnxRopeTables? Rope(int positions);

    /// <summary>How the residual is carried from layer to layer: <see cref="OnnxPlainResidual"/> (x + f(norm(x))) unless
    /// the family says otherwise (hyper-connections keep several streams).</summary>
    IOnnxResidualStreams Residual => OnnxPlainResidual.Instance;

    /// <summary>The per-layer cache a KV-cache decoder keeps (what the family stores per token).</summary>
    OnnxKvCacheShape KvCache { get; }

    /// <summary>Emits layer <paramref name="layer"/>'s attention on its normed input [batch, sequence, hidden]
    /// and returns the attention output value (same shape), before the residual add. With <paramref name="cache"/>,
    /// keys and values of earlier tokens come from its past inputs and the attention writes its present outputs;
    /// <see cref="OnnxDecoderBuilder.Mask"/> then spans past and new tokens.</summary>
    string Attention(OnnxDecoderBuilder b, int layer, string normed, OnnxLayerCache? cache);
}

/// <summary>The two residual sites of a decoder layer.</summary>
public enum OnnxSublayer { Attention, FeedForward }

/// <summary>What <see cref="IOnnxResidualStreams.Collapse"/> hands the sublayer: its input [batch, sequence, hidden]
/// (the scaffold applies the sublayer's norm to it), and values the merge needs afterwards.</summary>
public sealed record OnnxResidualSplit(string BlockInput, IReadOnlyList<string> Carry);

/// <summary>
/// How a family carries the residual state between sublayers, in the scaffold's order: the embedding is expanded into
/// the state; per layer and site the state is collapsed to the sublayer's input, the scaffold norms it and runs the
/// sublayer (attention, or the MoE / dense feed-forward), and the sublayer's output is merged back into the state;
/// after the last layer the state is reduced to the hidden state the final norm reads.
/// </summary>
public interface IOnnxResidualStreams
{
    /// <summary>Dimensions of the state between the sequence and the hidden axes: none for one stream
    /// ([batch, sequence, hidden]), [n] for n streams ([batch, sequence, n, hidden]).</summary>
    long[] StreamDims { get; }

    /// <summary>The state from the embedded tokens [batch, sequence, hidden].</summary>
    string Expand(OnnxDecoderBuilder b, string embedded);

    /// <summary>Layer <paramref name="layer"/>'s sublayer input from the state.</summary>
    OnnxResidualSplit Collapse(OnnxDecoderBuilder b, int layer, OnnxSublayer site, string state);

    /// <summary>The state after the sublayer: its output merged into <paramref name="state"/>. The result is named
    /// <paramref name="name"/> when given (a stable graph value), else freshly.</summary>
    string Merge(OnnxDecoderBuilder b, int layer, OnnxSublayer site, string state, OnnxResidualSplit split, string blockOutput, string? name);

    /// <summary>The hidden state [batch, sequence, hidden] the final norm reads.</summary>
    string Head(OnnxDecoderBuilder b, string state);
}

/// <summary>The plain residual: one stream, each sublayer adds its output to it.</summary>
public sealed class OnnxPlainResidual : IOnnxResidualStreams
{
    public static OnnxPlainResidual Instance { get; } = new();

    private OnnxPlainResidual() { }

    public long[] StreamDims => [];

    public string Expand(OnnxDecoderBuilder b, string embedded) => embedded;

    public OnnxResidualSplit Collapse(OnnxDecoderBuilder b, int layer, OnnxSublayer site, string state) => new(state, []);

    public string Merge(OnnxDecoderBuilder b, int layer, OnnxSublayer site, string state, OnnxResidualSplit split, string blockOutput, string? name)
    {
        if (name == null) return b.Graph.Add(state, blockOutput);
        b.Graph.OpNamed("Add", [state, blockOutput], [name]);
        return name;
    }

    public string Head(OnnxDecoderBuilder b, string state) => state;
}
