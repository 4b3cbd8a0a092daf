using Converter.Formats.CompressedTensors;
using Converter.Formats.Safetensors;
using Converter.Tensors;

namespace Converter.Models;

/// <summary>How a checkpoint stores its linear weights.</summary>
public enum WeightLayout
{
    Dense,
    /// <summary>FP8 e4m3 128x128 blocks (float32 or E8M0 scales) for the projection weights.</summary>
    Fp8Block,
    PackedInt4,
    /// <summary>FP8 blocks plus FP4 e2m1 1x32 groups (DeepSeek-V4's official layout: FP4 routed experts).</summary>
    Fp8Fp4Block,
}

/// <summary>
/// A model folder opened and checked against its architecture: every expected tensor present with the right
/// shape, nothing unknown, FP8 weights paired with correctly shaped scales. Reads return logical weights.
/// </summary>
public sealed class ModelCheckpoint : IDisposable
{
    public string Directory { get; }
    public ModelArchitecture Architecture { get; }
    public SafetensorsCheckpoint Tensors { get; }
    public WeightLayout Layout { get; }
    /// <summary>The compressed-tensors INT4 config when the checkpoint declares one (layout PackedInt4), else null.</summary>
    public CompressedTensorsConfig? Int4Config { get; }

    private ModelCheckpoint(string dir, ModelArchitecture arch, SafetensorsCheckpoint tensors, WeightLayout layout, CompressedTensorsConfig? int4)
    {
        Directory = dir;
        Architecture = arch;
        Tensors = tensors;
        Layout = layout;
        Int4Config = int4;
    }

    public static ModelCheckpoint Open(string dir)
    {
        var arch = ArchitectureRegistry.Load(dir);
        var st = SafetensorsCheckpoint.Open(dir);
        try
        {
            var int4 = arch.Config.Root["quantization_config"] is System.Text.Json.Nodes.JsonObject q && CompressedTensorsConfig.IsCompressedTensors(q)
                ? CompressedTensorsConfig.Parse(q, arch.Config.Path)
                : null;
            var encodings = new Dictionary<string, WeightEncoding>(StringComparer.Ordinal);
            var logical = new Dictionary<string, (long, long)>(StringComparer.Ordinal);
            var layout = Validate(arch, st, int4, encodings, logical);
            var ckpt = new ModelCheckpoint(dir, arch, st, layout, int4);
            foreach (var (k, v) in encodings) ckpt._encodings[k] = v;
            foreach (var (k, v) in logical) ckpt._logical[k] = v;
            return ckpt;
        }
        catch
        {
            st.Dispose();
            throw;
        }
    }

    /// <summary>DeepSeek-V3's scale name (<c>&lt;weight&gt;_scale_inv</c>); a family may name its scales otherwise:
    /// use <see cref="ScaleOf"/> for a tensor of an open checkpoint.</summary>
    public static string ScaleName(string weightName) => weightName + "_scale_inv";

    private readonly Dictionary<string, WeightEncoding> _encodings = new(StringComparer.Ordinal);
    private readonly Dictionary<string, (long Rows, long Cols)> _logical = new(StringComparer.Ordinal);

    /// <summary>How the named tensor is stored (<see cref="WeightEncoding.Dense"/> for anything not block-scaled or packed).</summary>
    public WeightEncoding Encoding(string name) => _encodings.TryGetValue(name, out var e) ? e
        : IsPackedInt4(name) ? WeightEncoding.PackedInt4 : WeightEncoding.Dense;

    /// <summary>The scale tensor of a block-scaled weight.</summary>
    public string ScaleOf(string weightName) => Architecture.ScaleTensorName(weightName);

    /// <summary>[rows, cols] of a 2-D weight as the model uses it (an FP4 weight holds two values a stored byte).</summary>
    public (long Rows, long Cols) LogicalShape(string name)
    {
        if (_logical.TryGetValue(name, out var s)) return s;
        var info = Tensors.Info(name);
        long r = info.Shape.Length == 0 ? 1 : Math.Max(1, info.Shape[0]);
        return (r, info.ElementCount / r);
    }

    private static WeightLayout Validate(ModelArchitecture arch, SafetensorsCheckpoint st, CompressedTensorsConfig? int4,
        Dictionary<string, WeightEncoding> encodings, Dictionary<string, (long, long)> logical)
    {
        var layout = WeightLayout.Dense;
        bool fp8 = false, fp4 = false;
        foreach (var name in st.Names)
        {
            var info = st.Info(name);
            try { arch.Classify(name); }
            catch (InvalidDataException e) { throw new InvalidDataException($"{info.File}: {e.Message}"); }
        }
        foreach (var t in arch.ExpectedTensors())
        {
            if (!st.Contains(t.Name))
            {
                if (st.Contains(PackQuantized.PartName(t.Name, PackQuantized.Packed)))
                {
                    if (int4 == null)
                        throw new InvalidDataException($"{st.Directory}: '{t.Name}' is stored packed (weight_packed) but config.json has no compressed-tensors quantization_config");
                    if (!t.Role.IsLinearWeight || t.Shape.Length != 2)
                        throw new InvalidDataException($"{st.Directory}: '{t.Name}' is stored packed but is not a projection weight");
                    if (int4.IsIgnored(t.Name[..^".weight".Length]))
                        throw new InvalidDataException($"{st.Directory}: '{t.Name}' is stored packed but quantization_config.ignore lists it");
                    PackQuantized.Validate(st, t.Name, t.Shape[0], t.Shape[1], int4.Scheme);
                    layout = WeightLayout.PackedInt4;
                    continue;
                }
                throw new InvalidDataException($"{st.Directory}: tensor '{t.Name}' is missing from the checkpoint");
            }
            var info = st.Info(t.Name);
            if (info.DType == DType.I8 && t.Role.IsLinearWeight && t.Shape.Length == 2)
            {
                // FP4 e2m1, two values a byte, with an [N, K/32] E8M0 scale: recognised from the dtypes (no config key names it)
                if (info.Shape.Length != 2 || info.Shape[1] * 2 % 32 != 0)
                    throw new InvalidDataException($"{info.File}: FP4 weight '{t.Name}' is I8 {info.ShapeText}: {(info.Shape.Length == 2 ? info.Shape[1] * 2 + " values a row is" : "not 2-D, so")} not whole 1x32 scale groups");
                if (info.Shape[0] != t.Shape[0] || info.Shape[1] * 2 != t.Shape[1])
                    throw new InvalidDataException($"{info.File}: FP4 weight '{t.Name}' is I8 {info.ShapeText} ([{info.Shape[0]}, {info.Shape[1] * 2}] values, two a byte), config implies [{string.Join(", ", t.Shape)}]");
                var scaleName = arch.ScaleTensorName(t.Name);
                if (!st.Contains(scaleName))
                    throw new InvalidDataException($"{info.File}: FP4 weight '{t.Name}' has no '{scaleName}'");
                var s = st.Info(scaleName);
                long sc = t.Shape[1] / 32;
                if (s.DType is not (DType.F8_E8M0 or DType.U8) || s.Shape.Length != 2 || s.Shape[0] != t.Shape[0] || s.Shape[1] != sc)
                    throw new InvalidDataException($"{s.File}: scale '{scaleName}' is {s.DType} {s.ShapeText}, expected F8_E8M0 [{t.Shape[0]}, {sc}] for FP4 weight '{t.Name}' (I8 {info.ShapeText})");
                encodings[t.Name] = WeightEncoding.Fp4Group32;
                logical[t.Name] = (t.Shape[0], t.Shape[1]);
                fp4 = true;
                continue;
            }
            if (!info.Shape.AsSpan().SequenceEqual(t.Shape))
                throw new InvalidDataException($"{info.File}: tensor '{t.Name}' has shape {info.ShapeText}, config implies [{string.Join(", ", t.Shape)}]");
            if (info.DType is DType.F8_E4M3)
            {
                if (!t.Role.IsLinearWeight || t.Shape.Length != 2)
                    throw new InvalidDataException($"{info.File}: tensor '{t.Name}' is FP8 but is not a projection weight");
                var scaleName = arch.ScaleTensorName(t.Name);
                if (!st.Contains(scaleName))
                    throw new InvalidDataException($"{info.File}: FP8 weight '{t.Name}' has no '{scaleName}'");
                var s = st.Info(scaleName);
                long sr = (t.Shape[0] + 127) / 128, sc = (t.Shape[1] + 127) / 128;
                if (s.DType is not (DType.F32 or DType.F8_E8M0 or DType.U8) || s.Shape.Length != 2 || s.Shape[0] != sr || s.Shape[1] != sc)
                    throw new InvalidDataException($"{s.File}: scale '{scaleName}' is {s.DType} {s.ShapeText}, expected F32 [{sr}, {sc}] (or F8_E8M0 power-of-two scales of that shape) for FP8 weight '{t.Name}' {info.ShapeText}");
                encodings[t.Name] = s.DType == DType.F32 ? WeightEncoding.Fp8Block : WeightEncoding.Fp8BlockPow2;
                fp8 = true;
            }
            else if (!DTypeInfo.IsFloat(info.DType) && t.Role.Kind != TensorKind.Auxiliary)
            {
                throw new InvalidDataException($"{info.File}: tensor '{t.Name}' has dtype {info.DType}, expected a floating-point weight");
            }
        }
        foreach (var name in st.Names)
        {
            if (arch.Classify(name).Kind != TensorKind.QuantScale) continue;
            var weight = arch.ScaledWeightName(name);
            if (weight == null || !encodings.TryGetValue(weight, out var e) || !e.IsBlockScaled())
                throw new InvalidDataException($"{st.Info(name).File}: scale '{name}' has no FP8 or FP4 weight '{weight ?? name}'");
        }
        foreach (var name in st.Names)
        {
            if (!PackQuantized.IsPart(name, out var weight) || name.EndsWith(".weight_scale_inv", StringComparison.Ordinal)) continue;
            if (arch.Classify(name).Kind == TensorKind.QuantScale) continue;
            if (!st.Contains(PackQuantized.PartName(weight, PackQuantized.Packed)))
                throw new InvalidDataException($"{st.Info(name).File}: '{name}' has no packed weight '{PackQuantized.PartName(weight, PackQuantized.Packed)}'");
        }
        if (fp4) layout = WeightLayout.Fp8Fp4Block;
        else if (fp8) layout = WeightLayout.Fp8Block;
        return layout;
    }

    /// <summary>True when the named weight is stored as FP8 e4m3 with a block scale (float32 or E8M0).</summary>
    public bool IsFp8(string name) => Encoding(name) is WeightEncoding.Fp8Block or WeightEncoding.Fp8BlockPow2;

    /// <summary>True when the named weight is stored as compressed-tensors pack-quantized INT4.</summary>
    public bool IsPackedInt4(string name) => Int4Config != null && !Tensors.Contains(name) && name.EndsWith(".weight", StringComparison.Ordinal)
        && Tensors.Contains(PackQuantized.PartName(name, PackQuantized.Packed));

    /// <summary>The logical float32 value of a tensor: packed INT4 weights dequantized ((q - zp) * scale), FP8 and FP4
    /// weights dequantized with their block scales (exactly: every such value is a float32).</summary>
    public float[] ReadFloat32(string name)
    {
        if (IsPackedInt4(name)) return PackQuantized.Dequantize(Tensors, name, Int4Config!.Scheme);
        var enc = Encoding(name);
        if (enc == WeightEncoding.Dense)
        {
            using var t = Tensors.Read(name);
            return TensorConvert.ToFloat32(t);
        }
        var (rows, cols) = LogicalShape(name);
        var result = new float[rows * cols];
        ReadRows(name, 0, result);
        return result;
    }

    /// <summary>Rows [firstRow, firstRow + dst.Length / cols) of a dense or block-scaled 2-D tensor as float32, mapping
    /// only those rows (and their scale rows). For FP8 weights <paramref name="firstRow"/> must be a multiple of 128.</summary>
    public void ReadRows(string name, long firstRow, Span<float> dst)
    {
        var enc = Encoding(name);
        var (rows, cols) = LogicalShape(name);
        int n = CheckRows(name, enc, firstRow, dst.Length, rows, cols);
        var info = Tensors.Info(name);
        switch (enc)
        {
            case WeightEncoding.Dense:
            {
                int es = DTypeInfo.SizeOf(info.DType);
                using var v = Tensors.ReadRange(name, firstRow * cols * es, n * cols * es);
                TensorConvert.ToFloat32(info, v.Bytes, dst);
                return;
            }
            case WeightEncoding.Fp8Block:
            {
                using var w = Tensors.ReadRange(name, firstRow * cols, n * cols);
                using var s = ScaleRows(name, enc, firstRow, n, 4);
                Numerics.Fp8BlockQuantizer.Dequantize(w.Bytes, s.As<float>(), n, (int)cols, dst);
                return;
            }
            case WeightEncoding.Fp8BlockPow2:
            {
                using var w = Tensors.ReadRange(name, firstRow * cols, n * cols);
                using var s = ScaleRows(name, enc, firstRow, n, 1);
                Numerics.Fp8Pow2BlockQuantizer.Dequantize(w.Bytes, s.Bytes, n, (int)cols, dst);
                return;
            }
            case WeightEncoding.Fp4Group32:
            {
                using var w = Tensors.ReadRange(name, firstRow * cols / 2, n * cols / 2);
                using var s = ScaleRows(name, enc, firstRow, n, 1);
                Numerics.Fp4BlockQuantizer.Dequantize(w.Bytes, s.Bytes, n, (int)cols, dst);
                return;
            }
            default:
                throw new NotSupportedException($"{info.File}: '{name}' is {enc}; read it whole with ReadFloat32");
        }
    }

    /// <summary>Rows of a block-scaled weight dequantized straight to BF16 (exact for the power-of-two encodings).</summary>
    public void ReadRowsBf16(string name, long firstRow, Span<ushort> dst)
    {
        var enc = Encoding(name);
        var (rows, cols) = LogicalShape(name);
        int n = CheckRows(name, enc, firstRow, dst.Length, rows, cols);
        switch (enc)
        {
            case WeightEncoding.Fp8Block:
            {
                using var w = Tensors.ReadRange(name, firstRow * cols, n * cols);
                using var s = ScaleRows(name, enc, firstRow, n, 4);
                Numerics.Fp8BlockQuantizer.DequantizeToBf16(w.Bytes, s.As<float>(), n, (int)cols, dst);
                return;
            }
            case WeightEncoding.Fp8BlockPow2:
            {
                using var w = Tensors.ReadRange(name, firstRow * cols, n * cols);
                using var s = ScaleRows(name, enc, firstRow, n, 1);
                Numerics.Fp8Pow2BlockQuantizer.DequantizeToBf16(w.Bytes, s.Bytes, n, (int)cols, dst);
                return;
            }
            case WeightEncoding.Fp4Group32:
            {
                using var w = Tensors.ReadRange(name, firstRow * cols / 2, n * cols / 2);
                using var s = ScaleRows(name, enc, firstRow, n, 1);
                Numerics.Fp4BlockQuantizer.DequantizeToBf16(w.Bytes, s.Bytes, n, (int)cols, dst);
                return;
            }
            default:
                throw new NotSupportedException($"{Tensors.Info(name).File}: '{name}' is {enc}, not a block-scaled weight");
        }
    }

    private static int CheckRows(string name, WeightEncoding enc, long firstRow, int values, long rows, long cols)
    {
        if (cols <= 0 || values % cols != 0 || firstRow < 0 || firstRow + values / cols > rows || firstRow % enc.ScaleBlockRows() != 0)
            throw new ArgumentException($"tensor '{name}': rows [{firstRow}, +{values}/{cols}) are not whole rows of [{rows}, {cols}] starting at a multiple of {enc.ScaleBlockRows()}");
        return checked((int)(values / cols));
    }

    private TensorData ScaleRows(string name, WeightEncoding enc, long firstRow, int n, int elementSize)
    {
        var scale = Tensors.Info(ScaleOf(name));
        long scaleCols = scale.Shape[1];
        int block = enc.ScaleBlockRows();
        long r0 = firstRow / block, rn = (n + block - 1) / block;
        return Tensors.ReadRange(scale.Name, r0 * scaleCols * elementSize, rn * scaleCols * elementSize);
    }

    public void Dispose() => Tensors.Dispose();
}
