using System.Runtime.InteropServices;
using Converter.Formats.Onnx;
using Converter.Numerics;
using Converter.Tensors;

namespace Converter.Models.DeepseekV3.Onnx;

/// <summary>
/// Produces the bytes of each planned initializer from a checkpoint, one source tensor at a time (stacked
/// experts are streamed expert by expert), so memory stays bounded by the largest checkpoint tensor.
/// FP8 codes from an FP8 source are copied byte for byte with their scales; other sources are quantized with
/// <see cref="Fp8BlockQuantizer"/>. Scales are small and are held until their initializer is written.
/// </summary>
public sealed class DeepseekV3OnnxWeightWriter
{
    private readonly ModelCheckpoint _ckpt;
    private readonly Dictionary<string, float[]> _pendingScales = new(StringComparer.Ordinal);

    public DeepseekV3OnnxWeightWriter(ModelCheckpoint checkpoint) => _ckpt = checkpoint;

    public void Write(OnnxInitializerPlan p, OnnxExternalDataWriter.TensorSink sink)
    {
        switch (p.Source)
        {
            case InitializerSource.Computed:
                sink.Write<float>(p.Values!);
                break;
            case InitializerSource.Float32:
            case InitializerSource.StackedFloat32:
                foreach (var name in p.Tensors) WriteFloat32(name, sink);
                break;
            case InitializerSource.StackedFc1Float32:
                WriteInterleaved(p, sink);
                break;
            case InitializerSource.Fp8Codes:
                WriteFp8(p, sink);
                break;
            case InitializerSource.Fp8Scales:
                var key = p.Name[..^"_scale_inv".Length];
                if (!_pendingScales.Remove(key, out var scales))
                    throw new InvalidOperationException($"scales of '{key}' requested before its codes were written");
                sink.Write<float>(scales);
                break;
            default:
                throw new ArgumentOutOfRangeException(nameof(p), p.Source, null);
        }
    }

    /// <summary>Streams one tensor as float32, converting a chunk at a time from the mapped source (FP8 is dequantized whole).</summary>
    private void WriteFloat32(string name, OnnxExternalDataWriter.TensorSink sink)
    {
        if (_ckpt.IsFp8(name))
        {
            sink.Write<float>(_ckpt.ReadFloat32(name));
            return;
        }
        using var t = _ckpt.Tensors.Read(name);
        var info = t.Info;
        if (info.DType == DType.F32)
        {
            sink.Write(t.Bytes);
            return;
        }
        int size = DTypeInfo.SizeOf(info.DType);
        long count = info.ElementCount;
        var buffer = new float[(int)Math.Min(count, 1 << 20)];
        for (long i = 0; i < count; i += buffer.Length)
        {
            int n = (int)Math.Min(buffer.Length, count - i);
            TensorConvert.ToFloat32(info, t.Bytes.Slice(checked((int)(i * size)), n * size), buffer.AsSpan(0, n));
            sink.Write<float>(buffer.AsSpan(0, n));
        }
    }

    private void WriteInterleaved(OnnxInitializerPlan p, OnnxExternalDataWriter.TensorSink sink)
    {
        int e = p.Tensors.Length / 2;
        float[]? rows = null;
        for (int i = 0; i < e; i++)
        {
            var gate = _ckpt.ReadFloat32(p.Tensors[i]);
            var up = _ckpt.ReadFloat32(p.Tensors[e + i]);
            int cols = checked((int)p.Dims[2]), inter = gate.Length / cols;
            rows ??= new float[2 * gate.Length];
            for (int r = 0; r < inter; r++)
            {
                gate.AsSpan(r * cols, cols).CopyTo(rows.AsSpan(2 * r * cols, cols));
                up.AsSpan(r * cols, cols).CopyTo(rows.AsSpan((2 * r + 1) * cols, cols));
            }
            sink.Write<float>(rows);
        }
    }

    private void WriteFp8(OnnxInitializerPlan p, OnnxExternalDataWriter.TensorSink sink)
    {
        var allScales = new List<float>();
        byte[]? codes = null;
        float[]? scales = null;
        foreach (var name in p.Tensors)
        {
            var info = _ckpt.Tensors.Info(name);
            var (rows, cols) = info.Matrix;
            if (info.DType == DType.F8_E4M3)
            {
                using (var t = _ckpt.Tensors.Read(name)) sink.Write(t.Bytes);
                using var s = _ckpt.Tensors.Read(ModelCheckpoint.ScaleName(name));
                allScales.AddRange(s.As<float>().ToArray());
                continue;
            }
            codes ??= new byte[rows * cols];
            var (sr, sc) = Fp8BlockQuantizer.ScaleShape(rows, cols);
            scales ??= new float[sr * sc];
            try
            {
                if (info.DType == DType.BF16)
                {
                    using var t = _ckpt.Tensors.Read(name);
                    Fp8BlockQuantizer.Quantize(t.As<ushort>(), rows, cols, codes, scales);
                }
                else
                {
                    Fp8BlockQuantizer.Quantize(_ckpt.ReadFloat32(name), rows, cols, codes, scales);
                }
            }
            catch (ArgumentException ex)
            {
                throw new InvalidDataException($"{info.File}: tensor '{name}': {ex.Message}");
            }
            sink.Write(codes.AsSpan(0, rows * cols));
            allScales.AddRange(scales.AsSpan(0, sr * sc).ToArray());
        }
        _pendingScales[p.Name] = allScales.ToArray();
    }
}
