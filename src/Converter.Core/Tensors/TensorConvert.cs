using System.Runtime.InteropServices;

namespace Converter.Tensors;

/// <summary>Widening reads of a tensor's elements into float32 or int64, whatever its stored dtype.</summary>
public static class TensorConvert
{
    public static float[] ToFloat32(TensorData t)
    {
        var result = new float[checked((int)t.Info.ElementCount)];
        ToFloat32(t.Info, t.Bytes, result);
        return result;
    }

    public static void ToFloat32(TensorInfo info, ReadOnlySpan<byte> src, Span<float> dst)
    {
        switch (info.DType)
        {
            case DType.F32: MemoryMarshal.Cast<byte, float>(src).CopyTo(dst); break;
            case DType.BF16: Numerics.Bf16.ToSingle(MemoryMarshal.Cast<byte, ushort>(src), dst); break;
            case DType.F16: Numerics.F16.ToSingle(MemoryMarshal.Cast<byte, ushort>(src), dst); break;
            case DType.F8_E4M3: Numerics.Fp8E4M3.ToSingle(src, dst); break;
            case DType.F8_E5M2: Numerics.Fp8E5M2.ToSingle(src, dst); break;
            case DType.F64:
                var d = MemoryMarshal.Cast<byte, double>(src);
                for (int i = 0; i < d.Length; i++) dst[i] = (float)d[i];
                break;
            default: throw new InvalidDataException($"{info.File}: tensor '{info.Name}' is {info.DType}, expected a floating-point dtype");
        }
    }

    public static long[] ToInt64(TensorData t)
    {
        var info = t.Info;
        var result = new long[checked((int)info.ElementCount)];
        var src = t.Bytes;
        switch (info.DType)
        {
            case DType.I64: MemoryMarshal.Cast<byte, long>(src).CopyTo(result); break;
            case DType.I32: { var s = MemoryMarshal.Cast<byte, int>(src); for (int i = 0; i < s.Length; i++) result[i] = s[i]; break; }
            case DType.I16: { var s = MemoryMarshal.Cast<byte, short>(src); for (int i = 0; i < s.Length; i++) result[i] = s[i]; break; }
            case DType.I8: for (int i = 0; i < src.Length; i++) result[i] = (sbyte)src[i]; break;
            case DType.U8: for (int i = 0; i < src.Length; i++) result[i] = src[i]; break;
            default: throw new InvalidDataException($"{info.File}: tensor '{info.Name}' is {info.DType}, expected an integer dtype");
        }
        return result;
    }
}
