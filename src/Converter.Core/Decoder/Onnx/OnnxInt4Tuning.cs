using Converter.Formats.Onnx.Proto;

namespace Converter.Decoder.Onnx;

/// <summary>
/// CPU speed settings of an INT4 graph that change its arithmetic, applied to a built model. MatMulNBits'
/// accuracy_level picks the activations' type in ONNX Runtime's 4-bit kernels: 0 (the export's default) float32, as
/// exact as the dequantized weights allow; 4 quantizes each activation row to int8 blocks and multiplies in integers
/// (MLAS SQNBitGemm CompInt8), 1.3-1.8x the decode speed on the benchmark model (BENCHMARKS.md) for a small loss.
/// com.microsoft.QMoE (the routed experts) has no such attribute: it is not touched.
/// </summary>
public static class OnnxInt4Tuning
{
    public static readonly int[] AccuracyLevels = [0, 1, 2, 3, 4];

    /// <summary>Sets accuracy_level on every MatMulNBits node of the graph and its functions; returns how many.</summary>
    public static int SetAccuracyLevel(ModelProto model, int level)
    {
        if (Array.IndexOf(AccuracyLevels, level) < 0)
            throw new ArgumentException($"MatMulNBits accuracy_level {level} is not one of {string.Join(", ", AccuracyLevels)}");
        int count = 0;
        void Patch(IEnumerable<NodeProto> nodes)
        {
            foreach (var n in nodes)
            {
                if (n.OpType != "MatMulNBits") continue;
                var a = n.Attribute.FirstOrDefault(x => x.Name == "accuracy_level");
                if (a == null) n.Attribute.Add(Formats.Onnx.OnnxAttr.Int("accuracy_level", level));
                else a.I = level;
                count++;
            }
        }
        Patch(model.Graph.Node);
        foreach (var f in model.Functions) Patch(f.Node);
        return count;
    }
}
