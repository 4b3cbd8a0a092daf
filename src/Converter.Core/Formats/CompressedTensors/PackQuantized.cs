using System.Runtime.InteropServices;
using Converter.Formats.Safetensors;
using Converter.Numerics;
using Converter.Numerics.Int4;
using Converter.Tensors;

namespace Converter.Formats.CompressedTensors;

/// <summary>
/// compressed-tensors' <c>pack-quantized</c> tensors of one INT4 linear <c>&lt;module&gt;.weight</c> [N, K]:
/// <list type="bullet">
/// <item><c>weight_packed</c> I32 [N, ceil(K/8)]: element i of a row as q + 8 in bits 4*(i%8) of word i/8.</item>
/// <item><c>weight_scale</c> BF16 [N, K/group].</item>
/// <item><c>weight_shape</c> I64 [2] = (N, K) (torch.tensor(weight.shape) is int64).</item>
/// <item><c>weight_zero_point</c> (asymmetric only) I32 [ceil(N/8), K/group]: packed along the output
/// dimension (compressed-tensors packs zero points with packed_dim=0), zp + 8 in bits 4*(r%8) of word [r/8, g].</item>
/// </list>
/// Dequantization: (q - zp) * scale.
/// </summary>
public static class PackQuantized
{
    public const string Packed = "weight_packed", Scale = "weight_scale", Shape = "weight_shape", ZeroPoint = "weight_zero_point";

    /// <summary>The name of one part of a packed weight: "x.weight" -> "x.weight_packed".</summary>
    public static string PartName(string weightName, string part)
    {
        if (!weightName.EndsWith(".weight", StringComparison.Ordinal))
            throw new ArgumentException($"'{weightName}' is not a '.weight' tensor name");
        return weightName[..^"weight".Length] + part;
    }

    /// <summary>True when a tensor name is one of the parts (and which weight it belongs to).</summary>
    public static bool IsPart(string name, out string weightName)
    {
        foreach (var part in new[] { Packed, Scale, Shape, ZeroPoint })
            if (name.EndsWith("." + part, StringComparison.Ordinal))
            {
                weightName = name[..^part.Length] + "weight";
                return true;
            }
        weightName = "";
        return false;
    }

    public static int PackedCols(long cols) => (int)((cols + 7) / 8);

    /// <summary>The tensors a packed weight is written as, in write order.</summary>
    public static IReadOnlyList<TensorSpec> Plan(string weightName, int rows, int cols, Int4Scheme scheme)
    {
        var specs = new List<TensorSpec>
        {
            new(PartName(weightName, Packed), DType.I32, [rows, PackedCols(cols)]),
            new(PartName(weightName, Scale), DType.BF16, [rows, cols / scheme.GroupSize]),
            new(PartName(weightName, Shape), DType.I64, [2]),
        };
        if (!scheme.Symmetric) specs.Add(new(PartName(weightName, ZeroPoint), DType.I32, [PackedCols(rows), cols / scheme.GroupSize]));
        return specs;
    }

    public static void PackCodes(ReadOnlySpan<sbyte> q, int rows, int cols, Span<int> packed)
    {
        int pc = PackedCols(cols);
        for (int r = 0; r < rows; r++)
        {
            var src = q.Slice(r * cols, cols);
            var dst = packed.Slice(r * pc, pc);
            int c = 0;
            for (int word = 0; word < pc; word++)
            {
                uint v = 0;
                for (int j = 0; j < 8 && c < cols; j++, c++) v |= (uint)(src[c] + 8) << (4 * j);
                dst[word] = (int)v;
            }
        }
    }

    public static void UnpackCodes(ReadOnlySpan<int> packed, int rows, int cols, Span<sbyte> q)
    {
        int pc = PackedCols(cols);
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++)
                q[r * cols + c] = (sbyte)((((uint)packed[r * pc + c / 8] >> (4 * (c % 8))) & 15) - 8);
    }

    public static void PackZeroPoints(ReadOnlySpan<sbyte> zp, int rows, int groups, Span<int> packed)
    {
        packed[..(PackedCols(rows) * groups)].Clear();
        for (int r = 0; r < rows; r++)
            for (int g = 0; g < groups; g++)
                packed[r / 8 * groups + g] |= (int)((uint)(zp[r * groups + g] + 8) << (4 * (r % 8)));
    }

    public static void UnpackZeroPoints(ReadOnlySpan<int> packed, int rows, int groups, Span<sbyte> zp)
    {
        for (int r = 0; r < rows; r++)
            for (int g = 0; g < groups; g++)
                zp[r * groups + g] = (sbyte)((((uint)packed[r / 8 * groups + g] >> (4 * (r % 8))) & 15) - 8);
    }

    /// <summary>Writes the parts of <paramref name="w"/> (next in the writer's plan, in <see cref="Plan"/> order).</summary>
    public static void Write(SafetensorsWriter writer, string weightName, Int4Weight w)
    {
        var packed = new int[(long)w.Rows * PackedCols(w.Cols)];
        PackCodes(w.Q, w.Rows, w.Cols, packed);
        writer.Write(PartName(weightName, Packed), MemoryMarshal.AsBytes(packed.AsSpan()));
        writer.Write(PartName(weightName, Scale), MemoryMarshal.AsBytes(w.Scales.AsSpan()));
        long[] shape = [w.Rows, w.Cols];
        writer.Write(PartName(weightName, Shape), MemoryMarshal.AsBytes(shape.AsSpan()));
        if (!w.Scheme.Symmetric)
        {
            var zp = new int[PackedCols(w.Rows) * w.Groups];
            PackZeroPoints(w.Zeros, w.Rows, w.Groups, zp);
            writer.Write(PartName(weightName, ZeroPoint), MemoryMarshal.AsBytes(zp.AsSpan()));
        }
    }

    /// <summary>
    /// Checks the parts of a packed weight against the shape the model implies ([rows, cols]) and the scheme:
    /// dtypes, shapes, the stored weight_shape, zero points present exactly when asymmetric.
    /// </summary>
    public static void Validate(SafetensorsCheckpoint st, string weightName, long rows, long cols, Int4Scheme scheme)
    {
        TensorInfo Need(string part)
        {
            var n = PartName(weightName, part);
            if (!st.Contains(n)) throw new InvalidDataException($"{st.Directory}: packed INT4 weight '{weightName}' has no '{n}'");
            return st.Info(n);
        }
        if (cols % scheme.GroupSize != 0)
            throw new InvalidDataException($"{st.Directory}: packed INT4 weight '{weightName}' [{rows}, {cols}]: group size {scheme.GroupSize} does not divide {cols}");
        var p = Need(Packed);
        if (p.DType != DType.I32 || p.Shape.Length != 2 || p.Shape[0] != rows || p.Shape[1] != PackedCols(cols))
            throw new InvalidDataException($"{p.File}: '{p.Name}' is {p.DType} {p.ShapeText}, expected I32 [{rows}, {PackedCols(cols)}] for weight [{rows}, {cols}]");
        var s = Need(Scale);
        long groups = cols / scheme.GroupSize;
        if (s.DType is not (DType.BF16 or DType.F16 or DType.F32) || s.Shape.Length != 2 || s.Shape[0] != rows || s.Shape[1] != groups)
            throw new InvalidDataException($"{s.File}: '{s.Name}' is {s.DType} {s.ShapeText}, expected BF16 [{rows}, {groups}] (group size {scheme.GroupSize})");
        var sh = Need(Shape);
        if (sh.DType is not (DType.I64 or DType.I32) || sh.Shape.Length != 1 || sh.Shape[0] != 2)
            throw new InvalidDataException($"{sh.File}: '{sh.Name}' is {sh.DType} {sh.ShapeText}, expected I64 [2]");
        using (var d = st.Read(sh.Name))
        {
            var v = TensorConvert.ToInt64(d);
            if (v[0] != rows || v[1] != cols)
                throw new InvalidDataException($"{sh.File}: '{sh.Name}' holds [{v[0]}, {v[1]}], config implies [{rows}, {cols}]");
        }
        var zpName = PartName(weightName, ZeroPoint);
        if (scheme.Symmetric)
        {
            if (st.Contains(zpName)) throw new InvalidDataException($"{st.Info(zpName).File}: '{zpName}' present but the quantization is symmetric");
        }
        else
        {
            var z = Need(ZeroPoint);
            if (z.DType != DType.I32 || z.Shape.Length != 2 || z.Shape[0] != PackedCols(rows) || z.Shape[1] != groups)
                throw new InvalidDataException($"{z.File}: '{z.Name}' is {z.DType} {z.ShapeText}, expected I32 [{PackedCols(rows)}, {groups}] (packed along the output dimension)");
        }
    }

    /// <summary>Reads a packed weight back into codes, BF16 scales and zero points (scales must be BF16).</summary>
    public static Int4Weight Read(SafetensorsCheckpoint st, string weightName, Int4Scheme scheme)
    {
        var pInfo = st.Info(PartName(weightName, Packed));
        int rows = (int)pInfo.Shape[0];
        var (sRows, groups) = st.Info(PartName(weightName, Scale)).Matrix;
        int cols = groups * scheme.GroupSize;
        Validate(st, weightName, rows, cols, scheme);
        var w = Int4Weight.Allocate(rows, cols, scheme);
        using (var p = st.Read(pInfo.Name)) UnpackCodes(p.As<int>(), rows, cols, w.Q);
        using (var s = st.Read(PartName(weightName, Scale)))
        {
            if (s.Info.DType == DType.BF16) s.As<ushort>().CopyTo(w.Scales);
            else
            {
                var f = TensorConvert.ToFloat32(s);
                for (int i = 0; i < f.Length; i++)
                {
                    w.Scales[i] = Bf16.FromSingle(f[i]);
                    if (Bf16.ToSingle(w.Scales[i]) != f[i])
                        throw new InvalidDataException($"{s.Info.File}: '{s.Info.Name}' is {s.Info.DType} and value {f[i]} is not exact in BF16; read it with Dequantize");
                }
            }
        }
        if (!scheme.Symmetric)
            using (var z = st.Read(PartName(weightName, ZeroPoint))) UnpackZeroPoints(z.As<int>(), rows, groups, w.Zeros);
        return w;
    }

    /// <summary>The float32 weight (q - zp) * scale of a packed weight, with scales of any float dtype.</summary>
    public static float[] Dequantize(SafetensorsCheckpoint st, string weightName, Int4Scheme scheme)
    {
        var pInfo = st.Info(PartName(weightName, Packed));
        int rows = (int)pInfo.Shape[0];
        var (_, groups) = st.Info(PartName(weightName, Scale)).Matrix;
        int cols = groups * scheme.GroupSize;
        Validate(st, weightName, rows, cols, scheme);
        float[] scales;
        using (var s = st.Read(PartName(weightName, Scale))) scales = TensorConvert.ToFloat32(s);
        var zeros = new sbyte[rows * groups];
        if (!scheme.Symmetric)
            using (var z = st.Read(PartName(weightName, ZeroPoint))) UnpackZeroPoints(z.As<int>(), rows, groups, zeros);
        var result = new float[(long)rows * cols];
        int pc = PackedCols(cols), g = scheme.GroupSize;
        using var p = st.Read(pInfo.Name);
        var words = p.As<int>();
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++)
            {
                int q = (int)(((uint)words[r * pc + c / 8] >> (4 * (c % 8))) & 15) - 8;
                int k = r * groups + c / g;
                result[(long)r * cols + c] = Int4Scheme.Dequantize(q, scales[k], zeros[k]);
            }
        return result;
    }
}
