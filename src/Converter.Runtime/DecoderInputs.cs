using Converter.Decoder.Onnx;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;

namespace Converter.Runtime;

/// <summary>
/// The int64 [batch, sequence] inputs of an exported decoder run over whole, unpadded sequences: token ids, an
/// all-ones attention mask and positions 0..sequence-1, each added only where the graph declares it.
/// </summary>
internal static class DecoderInputs
{
    public static NamedOnnxValue Ids(ReadOnlySpan<int> tokens, int batch, int seq)
    {
        var ids = new long[batch * seq];
        for (int i = 0; i < ids.Length; i++) ids[i] = tokens[i];
        return NamedOnnxValue.CreateFromTensor(OnnxDecoderNames.InputIds, new DenseTensor<long>(ids, [batch, seq]));
    }

    public static void AddMaskAndPositions(List<NamedOnnxValue> inputs, int batch, int seq, bool mask, bool positions)
    {
        if (mask)
        {
            var ones = new long[batch * seq];
            Array.Fill(ones, 1L);
            inputs.Add(NamedOnnxValue.CreateFromTensor(OnnxDecoderNames.AttentionMask, new DenseTensor<long>(ones, [batch, seq])));
        }
        if (positions)
        {
            var pos = new long[batch * seq];
            for (int i = 0; i < pos.Length; i++) pos[i] = i % seq;
            inputs.Add(NamedOnnxValue.CreateFromTensor(OnnxDecoderNames.PositionIds, new DenseTensor<long>(pos, [batch, seq])));
        }
    }
}
