using System.Buffers.Binary;
using System.Text;
using Converter.Formats.Safetensors;
using Converter.Tensors;

namespace Converter.Tests.Numerics;

/// <summary>
/// Opens golden/models/tiny-dsv4 and tiny-dsv4-fp8 with the project's safetensors reader. The official layout
/// stores its scales as <c>F8_E8M0</c>, a dtype <see cref="DType"/> does not have yet; until it does, the FP8
/// checkpoint is read from a copy whose header spells those entries <c>U8</c> (one byte per scale either way;
/// the shorter name is padded with JSON whitespace, so every offset stays put). Once the reader knows F8_E8M0,
/// the original file is opened instead.
/// </summary>
internal static class DeepseekV4GoldenCheckpoints
{
    public const string ScaleDType = "F8_E8M0";

    public static SafetensorsCheckpoint OpenBf16() => SafetensorsCheckpoint.Open(TestData.Model("tiny-dsv4"));

    public static SafetensorsCheckpoint OpenFp8() => SafetensorsCheckpoint.Open(Fp8Folder.Value);

    /// <summary>True for a scale entry: F8_E8M0, or U8 in the stand-in copy.</summary>
    public static bool IsScaleDType(DType t) => t.ToString() is ScaleDType or nameof(DType.U8);

    private static readonly Lazy<string> Fp8Folder = new(() =>
    {
        string dir = TestData.Model("tiny-dsv4-fp8");
        if (DTypeInfo.TryParseSafetensorsName(ScaleDType, out _)) return dir;
        string copy = Path.Combine(Path.GetTempPath(), "converter-test-dsv4fp8-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(copy);
        AppDomain.CurrentDomain.ProcessExit += (_, _) => { try { Directory.Delete(copy, true); } catch (IOException) { } };
        byte[] file = File.ReadAllBytes(Path.Combine(dir, "model.safetensors"));
        int headerLength = checked((int)BinaryPrimitives.ReadUInt64LittleEndian(file));
        byte[] from = Encoding.ASCII.GetBytes($"\"{ScaleDType}\""), to = Encoding.ASCII.GetBytes("\"U8\"".PadRight(from.Length));
        Span<byte> header = file.AsSpan(8, headerLength);
        int replaced = 0;
        for (int i = header.IndexOf(from); i >= 0; i = header.IndexOf(from))
        {
            to.CopyTo(header[i..]);
            replaced++;
        }
        if (replaced == 0) throw new InvalidDataException($"{dir}: no {ScaleDType} entries in the header");
        File.WriteAllBytes(Path.Combine(copy, "model.safetensors"), file);
        return copy;
    });
}
