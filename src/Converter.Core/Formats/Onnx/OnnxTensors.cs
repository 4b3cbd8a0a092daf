using System.Runtime.InteropServices;
using Converter.Formats.Onnx.Proto;
using Google.Protobuf;
using DataType = Converter.Formats.Onnx.Proto.TensorProto.Types.DataType;

namespace Converter.Formats.Onnx;

/// <summary>Small inline tensors (constants) and type descriptions.</summary>
public static class OnnxTensors
{
    public static int SizeOf(DataType t) => t switch
    {
        DataType.Double or DataType.Int64 or DataType.Uint64 => 8,
        DataType.Float or DataType.Int32 or DataType.Uint32 => 4,
        DataType.Float16 or DataType.Bfloat16 or DataType.Int16 or DataType.Uint16 => 2,
        DataType.Float8E4M3Fn or DataType.Float8E4M3Fnuz or DataType.Float8E5M2 or DataType.Float8E5M2Fnuz
            or DataType.Int8 or DataType.Uint8 or DataType.Bool => 1,
        _ => throw new ArgumentOutOfRangeException(nameof(t), t, "no fixed element size"),
    };

    public static long ByteLength(DataType t, IReadOnlyList<long> dims)
    {
        long n = SizeOf(t);
        foreach (var d in dims) n = checked(n * d);
        return n;
    }

    public static TensorProto Raw<T>(string name, DataType type, long[] dims, ReadOnlySpan<T> values) where T : unmanaged
    {
        var t = new TensorProto { Name = name, DataType = (int)type, RawData = ByteString.CopyFrom(MemoryMarshal.AsBytes(values)) };
        t.Dims.AddRange(dims);
        return t;
    }

    public static TensorProto Int64(string name, long[] dims, params long[] values) => Raw<long>(name, DataType.Int64, dims, values);
    public static TensorProto Float(string name, long[] dims, params float[] values) => Raw<float>(name, DataType.Float, dims, values);

    /// <summary>A tensor type with named (symbolic) or fixed dimensions; null entries leave a dimension unknown.</summary>
    public static TypeProto TensorType(DataType type, params object?[]? dims)
    {
        var tt = new TypeProto.Types.Tensor { ElemType = (int)type };
        if (dims != null)
        {
            tt.Shape = new TensorShapeProto();
            foreach (var d in dims)
            {
                var dim = new TensorShapeProto.Types.Dimension();
                if (d is string s) dim.DimParam = s;
                else if (d is long l) dim.DimValue = l;
                else if (d is int i) dim.DimValue = i;
                tt.Shape.Dim.Add(dim);
            }
        }
        return new TypeProto { TensorType = tt };
    }

    public static ValueInfoProto Value(string name, DataType type, params object?[]? dims) =>
        new() { Name = name, Type = TensorType(type, dims) };
}
