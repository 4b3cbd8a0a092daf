using System.Runtime.InteropServices;
using Converter.Formats.Onnx;
using Converter.Formats.CompressedTensors;
using Converter.Models;
using Converter.Numerics;
using Converter.Numerics.Int4;
using Converter.Tensors;

namespace Converter.Decoder.Onnx;

/// <summary>
/// Produces the bytes of each planned initializer from a checkpoint, one source tensor at a time (stacked
/// experts are streamed expert by expert; plain BF16/F32 tensors a slab at a time), so memory stays bounded by the
/// largest tensor that is quantized or dequantized whole (an FP8 or INT4 weight, an expert), not by the embedding.
/// FP8 codes from an FP8 source are copied byte for byte with their scales; other sources are quantized with
/// <see cref="Fp8BlockQuantizer"/>. Scales are small and are held until their initializer is written.
/// INT4 codes come from a packed INT4 source unchanged (codes, BF16 scales widened to float32, zero points) or are
/// quantized with <see cref="Int4GroupQuantizer"/> (RTN with the MSE clipping search, as `quantize --scheme int4`).
/// Packed weights read as float32 (fp32/fp8 exports of an INT4 checkpoint) are dequantized.
/// </summary>
public sealed class OnnxWeightWriter
{
    private readonly ModelCheckpoint _ckpt;
    private readonly Int4Scheme? _int4;
    private readonly long _slabElements;
    private readonly Dictionary<string, float[]> _pendingScales = new(StringComparer.Ordinal);
    private readonly Dictionary<string, byte[]> _pendingZeros = new(StringComparer.Ordinal);

    /// <param name="slabElements">Elements of a plain BF16/F32 tensor mapped at a time, so a 129280-row embedding
    /// does not stay mapped (and resident) whole.</param>
    public OnnxWeightWriter(ModelCheckpoint checkpoint, Int4Scheme? int4 = null, long slabElements = 1 << 23)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(slabElements, 1);
        _ckpt = checkpoint;
        _int4 = int4;
        _slabElements = slabElements;
    }


    public void Write(OnnxInitializerPlan p, OnnxExternalDataWriter.TensorSink sink)
    {
        switch (p.Source)
        {
            case InitializerSource.Computed:
                sink.Write<float>(p.Values!);
                break;
            case InitializerSource.Int64:
            {
                using var t = _ckpt.Tensors.Read(p.Tensors[0]);
                sink.Write<long>(TensorConvert.ToInt64(t));
                break;
            }
            case InitializerSource.Float32:
            case InitializerSource.StackedFloat32:
                foreach (var name in p.Tensors)
                {
                    if (p.Official) sink.Write<float>(OfficialFloat32(name));
                    else WriteFloat32(name, sink);
                }
                break;
            case InitializerSource.StackedFc1Float32:
                WriteInterleaved(p, sink);
                break;
            case InitializerSource.Fp8Codes:
                WriteFp8(p, sink);
                break;
            case InitializerSource.Int4Codes:
            case InitializerSource.Int4CodesFc1:
                WriteInt4(p, sink);
                break;
            case InitializerSource.Int4Scales:
            {
                var codes = p.Name[..^"_scales".Length];
                if (_pendingScales.Remove(codes, out var s4)) sink.Write<float>(s4);
                else ForEachInt4(p, w => sink.Write<float>(Widen(w.Scales))); // packed source: read again
                break;
            }
            case InitializerSource.Int4Zeros:
            {
                var codes = p.Name[..^"_zero_points".Length];
                if (_pendingZeros.Remove(codes, out var z)) sink.Write(z);
                else ForEachInt4(p, w => sink.Write(OnnxInt4Layout.PackZeroPoints(w.Zeros, w.Rows, w.Groups)));
                break;
            }
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

    /// <summary>
    /// Streams one tensor as float32 from source slabs, each mapped only while it is converted. FP8 and packed INT4
    /// are dequantized whole.
    /// </summary>
    private void WriteFloat32(string name, OnnxExternalDataWriter.TensorSink sink)
    {
        if (_ckpt.Encoding(name) != WeightEncoding.Dense)
        {
            sink.Write<float>(_ckpt.ReadFloat32(name));
            return;
        }
        var info = _ckpt.Tensors.Info(name);
        int size = DTypeInfo.SizeOf(info.DType);
        long count = info.ElementCount;
        float[]? buffer = info.DType == DType.F32 ? null : new float[(int)Math.Min(count, Math.Min(_slabElements, 1 << 20))];
        for (long s0 = 0; s0 < count; s0 += _slabElements)
        {
            long slab = Math.Min(_slabElements, count - s0);
            using var view = _ckpt.Tensors.ReadRange(name, s0 * size, slab * size);
            if (buffer == null)
            {
                sink.Write(view.Bytes);
                continue;
            }
            for (long i = 0; i < slab; i += buffer.Length)
            {
                int n = (int)Math.Min(buffer.Length, slab - i);
                TensorConvert.ToFloat32(info, view.Bytes.Slice(checked((int)(i * size)), n * size), buffer.AsSpan(0, n));
                sink.Write<float>(buffer.AsSpan(0, n));
            }
        }
    }

    /// <summary>
    /// A weight's float32 values as the family's official layout holds it: as stored where the source is block-scaled
    /// or packed (exact), else rounded to the official encoding (FP4 e2m1 1x32 groups, FP8 blocks) and read back.
    /// </summary>
    private float[] OfficialFloat32(string name)
    {
        var values = _ckpt.ReadFloat32(name);
        if (_ckpt.Encoding(name) != WeightEncoding.Dense) return values;
        var arch = _ckpt.Architecture;
        var enc = arch.OfficialEncoding(arch.Classify(name));
        if (enc == WeightEncoding.Dense) return values;
        var (rows, cols) = _ckpt.Tensors.Info(name).Matrix;
        var back = new float[values.Length];
        try
        {
            switch (enc)
            {
                case WeightEncoding.Fp4Group32:
                {
                    var (pr, pc) = Fp4BlockQuantizer.PackedShape(rows, cols);
                    var (sr, sc) = Fp4BlockQuantizer.ScaleShape(rows, cols);
                    var packed = new byte[pr * pc];
                    var scales = new byte[sr * sc];
                    Fp4BlockQuantizer.Quantize(values, rows, cols, packed, scales);
                    Fp4BlockQuantizer.Dequantize(packed, scales, rows, cols, back);
                    return back;
                }
                case WeightEncoding.Fp8BlockPow2:
                {
                    var (sr, sc) = Fp8Pow2BlockQuantizer.ScaleShape(rows, cols);
                    var codes = new byte[rows * cols];
                    var scales = new byte[sr * sc];
                    Fp8Pow2BlockQuantizer.Quantize(values, rows, cols, codes, scales);
                    Fp8Pow2BlockQuantizer.Dequantize(codes, scales, rows, cols, back);
                    return back;
                }
                case WeightEncoding.Fp8Block:
                {
                    var (sr, sc) = Fp8BlockQuantizer.ScaleShape(rows, cols);
                    var codes = new byte[rows * cols];
                    var scales = new float[sr * sc];
                    Fp8BlockQuantizer.Quantize(values, rows, cols, codes, scales);
                    Fp8BlockQuantizer.Dequantize(codes, scales, rows, cols, back);
                    return back;
                }
                default:
                    throw new NotSupportedException($"'{name}': no float32 rounding to {enc}");
            }
        }
        catch (ArgumentException ex)
        {
            throw new InvalidDataException($"{_ckpt.Tensors.Info(name).File}: tensor '{name}': {ex.Message}");
        }
    }

    private void WriteInterleaved(OnnxInitializerPlan p, OnnxExternalDataWriter.TensorSink sink)
    {
        int e = p.Tensors.Length / 2;
        float[]? rows = null;
        for (int i = 0; i < e; i++)
        {
            var gate = p.Official ? OfficialFloat32(p.Tensors[i]) : _ckpt.ReadFloat32(p.Tensors[i]);
            var up = p.Official ? OfficialFloat32(p.Tensors[e + i]) : _ckpt.ReadFloat32(p.Tensors[e + i]);
            int cols = checked((int)p.Dims[2]), inter = gate.Length / cols;
            rows ??= new float[2 * gate.Length];
            InterleaveRows<float>(gate, up, inter, cols, rows);
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
            if (_ckpt.IsPackedInt4(name))
            {
                // Dequantized INT4 values quantized to FP8 like any float source.
                var w = _ckpt.ReadFloat32(name);
                int pr = (int)(p.Dims[^2]), pc = (int)p.Dims[^1];
                var (qr, qc) = Fp8BlockQuantizer.ScaleShape(pr, pc);
                var pcodes = new byte[pr * pc];
                var pscales = new float[qr * qc];
                Fp8BlockQuantizer.Quantize(w, pr, pc, pcodes, pscales);
                sink.Write(pcodes);
                allScales.AddRange(pscales);
                continue;
            }
            var info = _ckpt.Tensors.Info(name);
            var (rows, cols) = info.Matrix;
            var stored = _ckpt.Encoding(name);
            if (stored is WeightEncoding.Fp8Block or WeightEncoding.Fp8BlockPow2)
            {
                using (var t = _ckpt.Tensors.Read(name)) sink.Write(t.Bytes);
                using var s = _ckpt.Tensors.Read(_ckpt.ScaleOf(name));
                if (stored == WeightEncoding.Fp8Block)
                {
                    allScales.AddRange(s.As<float>().ToArray());
                }
                else
                {
                    var widened = new float[s.Bytes.Length];
                    E8M0.ToSingle(s.Bytes, widened); // power-of-two scales, exact in float32
                    allScales.AddRange(widened);
                }
                continue;
            }
            if (stored != WeightEncoding.Dense)
                throw new NotSupportedException($"{info.File}: '{name}' is stored {stored}; an fp8 export keeps it in its own format");
            if (_ckpt.Architecture.OfficialEncoding(_ckpt.Architecture.Classify(name)) == WeightEncoding.Fp8BlockPow2)
            {
                // The family's official rule: power-of-two (E8M0) scales, as its FP8 checkpoints store them.
                var (pr, pc) = Fp8Pow2BlockQuantizer.ScaleShape(rows, cols);
                var pcodes = new byte[rows * cols];
                var pscales = new byte[pr * pc];
                try
                {
                    if (info.DType == DType.BF16)
                    {
                        using var t = _ckpt.Tensors.Read(name);
                        Fp8Pow2BlockQuantizer.Quantize(t.As<ushort>(), rows, cols, pcodes, pscales);
                    }
                    else
                    {
                        Fp8Pow2BlockQuantizer.Quantize(_ckpt.ReadFloat32(name), rows, cols, pcodes, pscales);
                    }
                }
                catch (ArgumentException ex)
                {
                    throw new InvalidDataException($"{info.File}: tensor '{name}': {ex.Message}");
                }
                sink.Write(pcodes);
                var widened = new float[pscales.Length];
                E8M0.ToSingle(pscales, widened);
                allScales.AddRange(widened);
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

    /// <summary>
    /// INT4 codes of one weight or of stacked experts (fc1: gate and up rows interleaved), two codes per byte, low
    /// nibble first; the scales and zero points are kept for the initializers that follow.
    /// </summary>
    private void WriteInt4(OnnxInitializerPlan p, OnnxExternalDataWriter.TensorSink sink)
    {
        // Scales and zero points of a packed source are read again when their initializers come (cheap, no
        // quantization), so nothing is held; RTN results are kept until then (quantizing twice would cost more).
        bool keep = p.Tensors.Any(t => !_ckpt.IsPackedInt4(t));
        var scales = keep ? new List<float>() : null;
        var zeros = keep ? new List<byte>() : null;
        ForEachInt4(p, w =>
        {
            sink.Write(OnnxInt4Layout.PackCodes(w.Q));
            if (!keep) return;
            scales!.AddRange(Widen(w.Scales));
            if (!w.Scheme.Symmetric) zeros!.AddRange(OnnxInt4Layout.PackZeroPoints(w.Zeros, w.Rows, w.Groups));
        });
        if (!keep) return;
        _pendingScales[p.Name] = scales!.ToArray();
        if (!_int4!.Value.Symmetric) _pendingZeros[p.Name] = zeros!.ToArray();
    }

    /// <summary>The INT4 weights of a codes initializer in file order: one per tensor, or gate/up interleaved per expert for fc1.</summary>
    private void ForEachInt4(OnnxInitializerPlan p, Action<Int4Weight> use)
    {
        var scheme = _int4 ?? throw new InvalidOperationException($"'{p.Name}': INT4 initializer but the writer has no INT4 scheme");
        var tensors = p.Tensors;
        if (p.Source == InitializerSource.Int4CodesFc1 || p.Interleaved)
        {
            int e = tensors.Length / 2;
            for (int i = 0; i < e; i++) use(Interleave(ReadInt4(tensors[i], scheme), ReadInt4(tensors[e + i], scheme)));
        }
        else
        {
            foreach (var name in tensors) use(ReadInt4(name, scheme));
        }
    }

    /// <summary>The INT4 weight of a tensor: the packed codes as stored, or RTN-quantized from its float values.</summary>
    public Int4Weight ReadInt4(string name, Int4Scheme scheme)
    {
        if (_ckpt.IsPackedInt4(name))
        {
            var stored = _ckpt.Int4Config!.Scheme;
            if (stored != scheme)
                throw new InvalidDataException($"{_ckpt.Directory}: '{name}' is packed INT4 group {stored.GroupSize} {(stored.Symmetric ? "symmetric" : "asymmetric")}, the export asked for group {scheme.GroupSize} {(scheme.Symmetric ? "symmetric" : "asymmetric")}");
            return PackQuantized.Read(_ckpt.Tensors, name, scheme);
        }
        var (rows, cols) = _ckpt.Tensors.Info(name).Matrix;
        return Int4GroupQuantizer.Quantize(_ckpt.ReadFloat32(name), rows, cols, scheme, Int4ClipSearch.Default, tensor: name);
    }

    /// <summary>Rows 2i = gate row i, 2i + 1 = up row i (QMoE's swiglu_fusion=1), with their scales and zero points.</summary>
    private static Int4Weight Interleave(Int4Weight gate, Int4Weight up)
    {
        var w = Int4Weight.Allocate(2 * gate.Rows, gate.Cols, gate.Scheme);
        InterleaveRows<sbyte>(gate.Q, up.Q, gate.Rows, gate.Cols, w.Q);
        InterleaveRows<ushort>(gate.Scales, up.Scales, gate.Rows, gate.Groups, w.Scales);
        InterleaveRows<sbyte>(gate.Zeros, up.Zeros, gate.Rows, gate.Groups, w.Zeros);
        return w;
    }

    /// <summary>dst row 2i = gate row i, row 2i + 1 = up row i, for <paramref name="rows"/> rows of <paramref name="cols"/>.</summary>
    private static void InterleaveRows<T>(ReadOnlySpan<T> gate, ReadOnlySpan<T> up, int rows, int cols, Span<T> dst)
    {
        for (int r = 0; r < rows; r++)
        {
            gate.Slice(r * cols, cols).CopyTo(dst.Slice(2 * r * cols, cols));
            up.Slice(r * cols, cols).CopyTo(dst.Slice((2 * r + 1) * cols, cols));
        }
    }

    /// <summary>BF16 scales as float32 (exact).</summary>
    private static float[] Widen(ushort[] bf16)
    {
        var f = new float[bf16.Length];
        Bf16.ToSingle(bf16, f);
        return f;
    }
}
