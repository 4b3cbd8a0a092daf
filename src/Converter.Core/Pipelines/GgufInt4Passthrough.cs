using Converter.Formats.CompressedTensors;
using Converter.Formats.Gguf;
using Converter.Models;
using Converter.Numerics.Ggml;
using Converter.Numerics.Int4;
using Microsoft.Extensions.Logging;

namespace Converter.Pipelines;

/// <summary>
/// Packed INT4 symmetric group-32 weights to GGUF Q4_0 without requantization: the codes are re-packed and the BF16
/// scales become fp16 (<see cref="Q4_0Mapping"/>), so every dequantized value equals the checkpoint's. Used when Q4_0
/// is the chosen type and the GGUF tensor is its sources' rows as they are (2-D [K, N] or stacked experts [K, N, E]);
/// anything else (a transposed or split tensor, another group size, asymmetric codes) goes through float32.
/// </summary>
public static class GgufInt4Passthrough
{
    public static bool Applies(ModelCheckpoint src, GgufTensorPlan t, GgmlType type)
    {
        if (type != GgmlType.Q4_0 || src.Int4Config is not { } cfg || !cfg.Symmetric || cfg.GroupSize != Q4_0Mapping.BlockValues) return false;
        if (t.Sources.Count == 0 || t.Dimensions.Length < 2) return false;
        long count = 1;
        foreach (var d in t.Dimensions) count *= d;
        foreach (var s in t.Sources)
        {
            if (!src.IsPackedInt4(s)) return false;
            var (rows, cols) = Shape(src, s);
            if (t.Dimensions[0] != cols || t.Dimensions[1] != rows) return false;
            count -= rows * cols;
        }
        return count == 0;
    }

    /// <summary>Writes the current tensor's Q4_0 blocks, source by source; returns how many blocks had a BF16 scale not exact in fp16 (written with the nearest fp16 scale).</summary>
    public static long Write(ModelCheckpoint src, GgufTensorPlan t, IGgufWriter writer, ILogger log)
    {
        long inexact = 0;
        var scheme = src.Int4Config!.Scheme;
        foreach (var s in t.Sources)
        {
            var w = PackQuantized.Read(src.Tensors, s, scheme);
            var blocks = new byte[(long)w.Rows * w.Groups * Q4_0Mapping.BlockBytes];
            inexact += Q4_0Mapping.Convert(w, blocks, Q4_0Inexact.RoundScale, s);
            writer.WriteTensorData(blocks);
        }
        if (inexact > 0)
            log.LogWarning("{Tensor}: {N} Q4_0 block(s) have a BF16 scale outside fp16's exact range; written with the nearest fp16 scale", t.Name, inexact);
        return inexact;
    }

    /// <summary>[rows, cols] of a packed weight from its parts.</summary>
    public static (long Rows, long Cols) Shape(ModelCheckpoint src, string name)
    {
        long rows = src.Tensors.Info(PackQuantized.PartName(name, PackQuantized.Packed)).Shape[0];
        long groups = src.Tensors.Info(PackQuantized.PartName(name, PackQuantized.Scale)).Shape[1];
        return (rows, groups * src.Int4Config!.GroupSize);
    }
}
