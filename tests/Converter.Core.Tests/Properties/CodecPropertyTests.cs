using System.Buffers.Binary;
using Converter.Formats.Gguf;
using Converter.Formats.Safetensors;
using Converter.Numerics;
using Converter.Numerics.Ggml;
using Converter.Tensors;
using CsCheck;

namespace Converter.Tests.Properties;

/// <summary>
/// Property tests (CsCheck) for what the fixed vectors cannot enumerate: random floats through the FP8/FP4/BF16 codecs
/// against oracles written from the format definitions (nearest value by brute force, ties to even), random span lengths
/// through the SIMD paths against the scalar definition, and writer -> reader round trips of random GGUF and
/// safetensors headers.
/// </summary>
public class CodecPropertyTests
{
    /// <summary>The representable value nearest x among <paramref name="values"/> (code index), ties to the even code.</summary>
    private static int Nearest(double x, float[] values)
    {
        int best = -1;
        double bestDist = double.PositiveInfinity;
        for (int c = 0; c < values.Length; c++)
        {
            if (!float.IsFinite(values[c])) continue;
            double d = Math.Abs(x - values[c]);
            if (d < bestDist || (d == bestDist && (c & 1) == 0 && (best & 1) == 1)) (best, bestDist) = (c, d);
        }
        return best;
    }

    [Fact]
    public void Fp8E4M3RoundsToTheNearestValueTiesToEven()
    {
        var table = Enumerable.Range(0, 256).Select(c => Fp8E4M3.ToSingle((byte)c)).ToArray();
        Gen.Float[-448f, 448f].Sample(x =>
        {
            double got = Fp8E4M3.ToSingle(Fp8E4M3.FromSingle(x));
            return got == table[Nearest(x, table)];
        }, iter: 20_000);
    }

    [Fact]
    public void Fp4E2M1RoundsToTheNearestValueTiesToEven()
    {
        var table = Enumerable.Range(0, 16).Select(Fp4E2M1.ToSingle).ToArray();
        Gen.Float[-6f, 6f].Sample(x => Fp4E2M1.ToSingle(Fp4E2M1.FromSingle(x)) == table[Nearest(x, table)], iter: 20_000);
    }

    [Fact]
    public void E8M0IsAPowerOfTwo() =>
        Gen.Byte[0, 254].Sample(c => E8M0.ToSingle(c) == (float)Math.ScaleB(1.0, c - 127));

    [Fact]
    public void Bf16SpansMatchTheDefinitionAtEveryLength()
    {
        // widening is exact (bits << 16); narrowing rounds to nearest even, written here with integer arithmetic
        static ushort Rne(uint bits)
        {
            uint lower = bits & 0xFFFF, upper = bits >> 16;
            if (lower > 0x8000 || (lower == 0x8000 && (upper & 1) == 1)) upper++;
            return (ushort)upper;
        }
        Gen.UInt.Array[0, 300].Sample(raw =>
        {
            var floats = raw.Select(b => BitConverter.UInt32BitsToSingle(b)).Where(float.IsFinite).ToArray();
            var narrow = new ushort[floats.Length];
            Bf16.FromSingle(floats, narrow);
            var wide = new float[floats.Length];
            Bf16.ToSingle(narrow, wide);
            for (int i = 0; i < floats.Length; i++)
            {
                if (narrow[i] != Rne(BitConverter.SingleToUInt32Bits(floats[i]))) return false;
                if (BitConverter.SingleToUInt32Bits(wide[i]) != (uint)narrow[i] << 16) return false;
            }
            return true;
        }, iter: 500);
    }

    private static readonly Gen<GgufValue> Scalar = Gen.OneOf(
        Gen.Byte.Select(GgufValue.UInt8), Gen.SByte.Select(GgufValue.Int8), Gen.UShort.Select(GgufValue.UInt16),
        Gen.Short.Select(GgufValue.Int16), Gen.UInt.Select(GgufValue.UInt32), Gen.Int.Select(GgufValue.Int32),
        Gen.Float.Select(GgufValue.Float32), Gen.Bool.Select(GgufValue.Bool), Gen.String.Select(GgufValue.String),
        Gen.ULong.Select(GgufValue.UInt64), Gen.Long.Select(GgufValue.Int64), Gen.Double.Select(GgufValue.Float64),
        Gen.Int.Array[0, 20].Select(GgufValue.Array), Gen.String.Array[0, 5].Select(GgufValue.Array),
        Gen.Float.Array[0, 9].Select(a => GgufValue.Array(new[] { GgufValue.Array(a), GgufValue.Array(new bool[] { true }) })));

    [Fact]
    public void GgufWriterToReaderRoundTripsMetadataAndTensorTables()
    {
        var types = new[] { GgmlType.F32, GgmlType.F16, GgmlType.Q8_0, GgmlType.Q4_0 };
        var gen = Gen.Select(Scalar.Array[0, 12], Gen.Int[0, 3].Array[0, 5], Gen.Int[1, 3], Gen.Int[0, 2].Select(i => new[] { 32u, 64u, 256u }[i]));
        using var tmp = new TestData.TempDir();
        int run = 0;
        gen.Sample((values, tensorTypes, rows, alignment) =>
        {
            var path = tmp[$"r{run++}.gguf"];
            using (var w = new GgufWriter(path, alignment))
            {
                if (alignment != GgufFormat.DefaultAlignment) w.Add(GgufFormat.AlignmentKey, GgufValue.UInt32(alignment));
                for (int i = 0; i < values.Length; i++) w.Add($"test.key{i}", values[i]);
                for (int i = 0; i < tensorTypes.Length; i++) w.AddTensor($"t{i}", [64, rows], types[tensorTypes[i]]);
                w.WriteHeader();
                for (int i = 0; i < tensorTypes.Length; i++)
                    w.AppendTensor($"t{i}", Enumerable.Range(0, 64 * rows).Select(v => (float)v / 7).ToArray());
                w.Commit();
            }
            using var r = GgufReader.Open(path);
            var meta = r.Metadata.Where(kv => kv.Key.StartsWith("test.", StringComparison.Ordinal)).ToList();
            if (meta.Count != values.Length || r.Alignment != alignment) return false;
            for (int i = 0; i < values.Length; i++)
                if (meta[i].Key != $"test.key{i}" || !meta[i].Value.Equals(values[i])) return false;
            if (r.Tensors.Count != tensorTypes.Length) return false;
            for (int i = 0; i < tensorTypes.Length; i++)
            {
                var t = r.Tensors[i];
                if (t.Name != $"t{i}" || t.Type != types[tensorTypes[i]] || t.Offset % alignment != 0 || t.Dimensions.Count != 2 || t.Dimensions[0] != 64 || t.Dimensions[1] != rows) return false;
            }
            File.Delete(path);
            return true;
        }, iter: 150);
    }

    [Fact]
    public void SafetensorsHeaderBuildToReadRoundTrips()
    {
        var dtypes = new[] { DType.F32, DType.BF16, DType.F16, DType.I32, DType.I8, DType.F8_E4M3 };
        var gen = Gen.Select(Gen.Int[0, dtypes.Length - 1], Gen.Long[0, 9].Array[0, 4]).Array[0, 10];
        gen.Sample(specs =>
        {
            var entries = new List<(string, DType, long[], long, long)>();
            long at = 0;
            for (int i = 0; i < specs.Length; i++)
            {
                var (d, shape) = specs[i];
                long n = DTypeInfo.SizeOf(dtypes[d]);
                foreach (var s in shape) n *= s;
                entries.Add(($"layer.{i}.weight", dtypes[d], shape, at, at + n));
                at += n;
            }
            var header = SafetensorsHeader.Build(entries, new Dictionary<string, string> { ["format"] = "pt" });
            var file = new byte[8 + header.Length + at];
            BinaryPrimitives.WriteInt64LittleEndian(file, header.Length);
            header.CopyTo(file, 8);
            var (tensors, meta, dataStart) = SafetensorsHeader.Read("p.safetensors", new MemoryStream(file), file.Length);
            if (meta["format"] != "pt" || dataStart != 8 + header.Length || tensors.Count != specs.Length) return false;
            var byName = tensors.ToDictionary(t => t.Name);
            foreach (var (name, dtype, shape, begin, end) in entries)
            {
                var t = byName[name];
                if (t.DType != dtype || !t.Shape.SequenceEqual(shape) || t.FileOffset != dataStart + begin || t.ByteLength != end - begin) return false;
            }
            return true;
        }, iter: 1000);
    }
}
