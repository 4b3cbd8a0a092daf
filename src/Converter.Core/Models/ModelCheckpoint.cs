using Converter.Formats.CompressedTensors;
using Converter.Formats.Safetensors;
using Converter.Tensors;

namespace Converter.Models;

/// <summary>How a checkpoint stores its linear weights.</summary>
public enum WeightLayout { Dense, Fp8Block, PackedInt4 }

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
            var layout = Validate(arch, st, int4);
            return new ModelCheckpoint(dir, arch, st, layout, int4);
        }
        catch
        {
            st.Dispose();
            throw;
        }
    }

    public static string ScaleName(string weightName) => weightName + "_scale_inv";

    private static WeightLayout Validate(ModelArchitecture arch, SafetensorsCheckpoint st, CompressedTensorsConfig? int4)
    {
        var layout = WeightLayout.Dense;
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
            if (!info.Shape.AsSpan().SequenceEqual(t.Shape))
                throw new InvalidDataException($"{info.File}: tensor '{t.Name}' has shape {info.ShapeText}, config implies [{string.Join(", ", t.Shape)}]");
            if (info.DType is DType.F8_E4M3)
            {
                if (!t.Role.IsLinearWeight || t.Shape.Length != 2)
                    throw new InvalidDataException($"{info.File}: tensor '{t.Name}' is FP8 but is not a projection weight");
                var scaleName = ScaleName(t.Name);
                if (!st.Contains(scaleName))
                    throw new InvalidDataException($"{info.File}: FP8 weight '{t.Name}' has no '{scaleName}'");
                var s = st.Info(scaleName);
                long sr = (t.Shape[0] + 127) / 128, sc = (t.Shape[1] + 127) / 128;
                if (s.DType != DType.F32 || s.Shape.Length != 2 || s.Shape[0] != sr || s.Shape[1] != sc)
                    throw new InvalidDataException($"{s.File}: scale '{scaleName}' is {s.DType} {s.ShapeText}, expected F32 [{sr}, {sc}] for weight {info.ShapeText}");
                layout = WeightLayout.Fp8Block;
            }
            else if (!DTypeInfo.IsFloat(info.DType))
            {
                throw new InvalidDataException($"{info.File}: tensor '{t.Name}' has dtype {info.DType}, expected a floating-point weight");
            }
        }
        foreach (var name in st.Names)
        {
            if (!name.EndsWith(".weight_scale_inv", StringComparison.Ordinal)) continue;
            var weight = name[..^"_scale_inv".Length];
            if (!st.Contains(weight) || st.Info(weight).DType != DType.F8_E4M3)
                throw new InvalidDataException($"{st.Info(name).File}: scale '{name}' has no FP8 weight '{weight}'");
        }
        foreach (var name in st.Names)
        {
            if (!PackQuantized.IsPart(name, out var weight) || name.EndsWith(".weight_scale_inv", StringComparison.Ordinal)) continue;
            if (!st.Contains(PackQuantized.PartName(weight, PackQuantized.Packed)))
                throw new InvalidDataException($"{st.Info(name).File}: '{name}' has no packed weight '{PackQuantized.PartName(weight, PackQuantized.Packed)}'");
        }
        return layout;
    }

    /// <summary>True when the named weight is stored as FP8 e4m3 with a block scale.</summary>
    public bool IsFp8(string name) => Tensors.Contains(name) && Tensors.Info(name).DType == DType.F8_E4M3;

    /// <summary>True when the named weight is stored as compressed-tensors pack-quantized INT4.</summary>
    public bool IsPackedInt4(string name) => Int4Config != null && !Tensors.Contains(name) && name.EndsWith(".weight", StringComparison.Ordinal)
        && Tensors.Contains(PackQuantized.PartName(name, PackQuantized.Packed));

    /// <summary>The logical float32 value of a tensor: packed INT4 weights dequantized ((q - zp) * scale), FP8 weights dequantized with their 128x128 block scales.</summary>
    public float[] ReadFloat32(string name)
    {
        if (IsPackedInt4(name)) return PackQuantized.Dequantize(Tensors, name, Int4Config!.Scheme);
        using var t = Tensors.Read(name);
        if (t.Info.DType != DType.F8_E4M3) return TensorConvert.ToFloat32(t);
        using var s = Tensors.Read(ScaleName(name));
        var (rows, cols) = t.Info.Matrix;
        var result = new float[rows * cols];
        Numerics.Fp8BlockQuantizer.Dequantize(t.Bytes, s.As<float>(), rows, cols, result);
        return result;
    }

    public void Dispose() => Tensors.Dispose();
}
