using System.Buffers.Binary;
using System.Text;
using Converter.Formats.Gguf;
using Converter.Numerics.Ggml;

namespace Converter.Core.Tests.Gguf;

public sealed class GgufRoundTripTests : IDisposable
{
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "gguf-tests-" + Guid.NewGuid().ToString("N"));

    public GgufRoundTripTests() => Directory.CreateDirectory(_dir);

    public void Dispose() => Directory.Delete(_dir, true);

    private static List<KeyValuePair<string, GgufValue>> EveryValueType() =>
    [
        new("t.u8", GgufValue.UInt8(250)),
        new("t.i8", GgufValue.Int8(-100)),
        new("t.u16", GgufValue.UInt16(65000)),
        new("t.i16", GgufValue.Int16(-32000)),
        new("t.u32", GgufValue.UInt32(4_000_000_000)),
        new("t.i32", GgufValue.Int32(-2_000_000_000)),
        new("t.f32", GgufValue.Float32(3.25f)),
        new("t.bool.true", GgufValue.Bool(true)),
        new("t.bool.false", GgufValue.Bool(false)),
        new("t.string", GgufValue.String("héllo ✓ Ġworld")),
        new("t.string.empty", GgufValue.String("")),
        new("t.u64", GgufValue.UInt64(ulong.MaxValue - 5)),
        new("t.i64", GgufValue.Int64(long.MinValue + 7)),
        new("t.f64", GgufValue.Float64(-1.0e300)),
        new("a.u8", GgufValue.Array(new byte[] { 0, 1, 255 })),
        new("a.i8", GgufValue.Array(new sbyte[] { -128, 0, 127 })),
        new("a.u16", GgufValue.Array(new ushort[] { 1, 65535 })),
        new("a.i16", GgufValue.Array(new short[] { -32768, 32767 })),
        new("a.u32", GgufValue.Array(new uint[] { 7, uint.MaxValue })),
        new("a.i32", GgufValue.Array(new[] { -1, 1, int.MinValue })),
        new("a.f32", GgufValue.Array(new[] { 0.5f, float.NegativeInfinity, -0f })),
        new("a.bool", GgufValue.Array(new[] { true, false, true })),
        new("a.string", GgufValue.Array(new[] { "a", "", "Ā" })),
        new("a.string.empty", GgufValue.Array(Array.Empty<string>())),
        new("a.u64", GgufValue.Array(new[] { 0UL, ulong.MaxValue })),
        new("a.i64", GgufValue.Array(new[] { long.MinValue, 3L })),
        new("a.f64", GgufValue.Array(new[] { Math.PI, double.Epsilon })),
        new("a.nested", GgufValue.Array(new[] { GgufValue.Array(new[] { 1, 2 }), GgufValue.Array(new[] { "x" }) })),
    ];

    [Fact]
    public void EveryValueTypeAndTensorRoundTrips()
    {
        string path = Path.Combine(_dir, "all.gguf");
        var rng = new Random(3);
        var f32 = Enumerable.Range(0, 3 * 5).Select(i => (float)rng.NextDouble()).ToArray();
        var q4k = Enumerable.Range(0, 512 * 2).Select(i => (float)(rng.NextDouble() - 0.5)).ToArray();
        var i8 = new byte[] { 1, 2, 3 };
        var meta = EveryValueType();
        using (var w = new GgufWriter(path))
        {
            foreach (var (k, v) in meta) w.Add(k, v);
            w.AddTensor("f32", [5, 3], GgmlType.F32);
            w.AddTensor("q4k", [512, 2], GgmlType.Q4_K);
            w.AddTensor("bf16", [5, 3], GgmlType.BF16);
            w.AddTensor("i8", [3], GgmlType.I8);
            w.AppendTensor("f32", f32);
            w.AppendTensor("q4k", q4k);
            w.AppendTensor("bf16", f32);
            w.AppendTensor("i8", i8);
            w.Commit();
        }
        Directory.GetFiles(_dir).Should().Equal(path); // the temp file was renamed, nothing left behind

        using var r = GgufReader.Open(path);
        r.Version.Should().Be(3);
        r.Alignment.Should().Be(32);
        r.Metadata.Select(kv => kv.Key).Should().Equal(meta.Select(kv => kv.Key));
        foreach (var (k, v) in meta)
        {
            r[k].Type.Should().Be(v.Type, k);
            r[k].ElementType.Should().Be(v.ElementType, k);
            r[k].Should().Be(v, k);
        }
        r["t.u32"].AsUInt32().Should().Be(4_000_000_000);
        r["a.string"].AsArray<string>().Should().Equal("a", "", "Ā");
        r["a.nested"].AsArray<GgufValue>()[1].AsArray<string>().Should().Equal("x");
        var act = () => r["t.u32"].AsInt32();
        act.Should().Throw<InvalidOperationException>();

        r.Tensors.Select(t => t.Name).Should().Equal("f32", "q4k", "bf16", "i8");
        foreach (var t in r.Tensors) (t.Offset % 32).Should().Be(0, t.Name);
        r.DataOffset.Should().Be(GgufFormat.AlignUp(r.DataOffset, 32));
        r.GetTensor("f32").Dimensions.Should().Equal(5L, 3L);

        var f32Back = new float[15];
        GgmlQuantizer.Dequantize(GgmlType.F32, r.GetTensorData(r.GetTensor("f32")), f32Back);
        f32Back.Should().Equal(f32);
        var q4kExpected = new byte[GgmlTypeInfo.ByteSize(GgmlType.Q4_K, q4k.Length)];
        GgmlQuantizer.Quantize(GgmlType.Q4_K, q4k, q4kExpected);
        r.GetTensorData(r.GetTensor("q4k")).ToArray().Should().Equal(q4kExpected);
        r.GetTensorData(r.GetTensor("bf16")).Length.Should().Be(30);
        r.GetTensorData(r.GetTensor("i8")).ToArray().Should().Equal(i8);
        r.GetTensorData(r.GetTensor("q4k"), 144, 10).ToArray().Should().Equal(q4kExpected.AsSpan(144, 10).ToArray());
        // the writer pads the last tensor to the alignment too
        r.FileLength.Should().Be(GgufFormat.AlignUp(r.DataOffset + r.GetTensor("i8").Offset + 3, 32));
    }

    [Fact]
    public void BytesMatchTheSpecLayout()
    {
        // expected file assembled by hand from the GGUF spec, independent of the writer
        string path = Path.Combine(_dir, "tiny.gguf");
        using (var w = new GgufWriter(path))
        {
            w.Add("k", GgufValue.UInt32(7));
            w.Add("s", GgufValue.Array(new[] { "ab" }));
            w.AddTensor("t", [2], GgmlType.F32);
            w.AppendTensor("t", new float[] { 1.5f, -2f });
            w.Commit();
        }
        var e = new List<byte>();
        void U32(uint v) { var b = new byte[4]; BinaryPrimitives.WriteUInt32LittleEndian(b, v); e.AddRange(b); }
        void U64(ulong v) { var b = new byte[8]; BinaryPrimitives.WriteUInt64LittleEndian(b, v); e.AddRange(b); }
        void Str(string s) { U64((ulong)s.Length); e.AddRange(Encoding.UTF8.GetBytes(s)); }
        e.AddRange("GGUF"u8.ToArray());
        U32(3); U64(1); U64(2);
        Str("k"); U32(4); U32(7);
        Str("s"); U32(9); U32(8); U64(1); Str("ab");
        Str("t"); U32(1); U64(2); U32(0); U64(0);
        while (e.Count % 32 != 0) e.Add(0);
        e.AddRange(BitConverter.GetBytes(1.5f));
        e.AddRange(BitConverter.GetBytes(-2f));
        while (e.Count % 32 != 0) e.Add(0);
        File.ReadAllBytes(path).Should().Equal(e);
    }

    [Fact]
    public void CustomAlignmentIsWrittenAndHonoured()
    {
        string path = Path.Combine(_dir, "a64.gguf");
        using (var w = new GgufWriter(path, alignment: 64))
        {
            w.AddTensor("a", [3], GgmlType.F32);
            w.AddTensor("b", [32], GgmlType.Q8_0);
            w.AppendTensor("a", new float[3]);
            w.AppendTensor("b", new float[32]);
            w.Commit();
        }
        using var r = GgufReader.Open(path);
        r["general.alignment"].AsUInt32().Should().Be(64);
        r.Alignment.Should().Be(64);
        r.DataOffset.Should().Be(GgufFormat.AlignUp(r.DataOffset, 64));
        r.GetTensor("b").Offset.Should().Be(64);
    }

    [Fact]
    public void WriterEnforcesDeclarationOrderAndSizes()
    {
        string path = Path.Combine(_dir, "order.gguf");
        using (var w = new GgufWriter(path))
        {
            w.AddTensor("a", [4], GgmlType.F32);
            w.AddTensor("b", [4], GgmlType.F32);
            ((Action)(() => w.AddTensor("a", [4], GgmlType.F32))).Should().Throw<ArgumentException>();
            ((Action)(() => w.AddTensor("c", [33], GgmlType.Q8_0))).Should().Throw<ArgumentException>();
            ((Action)(() => w.AddTensor(new string('x', 64), [4], GgmlType.F32))).Should().Throw<ArgumentException>();
            ((Action)(() => w.Add("general.alignment", GgufValue.Int32(32)))).Should().Throw<ArgumentException>();
            ((Action)(() => w.BeginTensor("b"))).Should().Throw<InvalidOperationException>().WithMessage("*expected 'a'*");
            w.BeginTensor("a");
            ((Action)(() => w.WriteTensorData(new byte[17]))).Should().Throw<InvalidOperationException>();
            w.WriteTensorData(new byte[8]);
            ((Action)(() => w.EndTensor())).Should().Throw<InvalidOperationException>().WithMessage("*8 bytes written, declared 16*");
            w.WriteTensorData(new byte[8]);
            w.EndTensor();
            ((Action)(() => w.Add("late", GgufValue.Bool(true)))).Should().Throw<InvalidOperationException>();
            ((Action)(() => w.Commit())).Should().Throw<InvalidOperationException>().WithMessage("*'b'*");
        }
        // never committed: neither the target nor a temp file remains
        Directory.GetFiles(_dir).Should().BeEmpty();
    }

    [Fact]
    public void StreamingChunksEqualOneShotWrite()
    {
        var rng = new Random(11);
        var x = Enumerable.Range(0, 256 * 8).Select(_ => (float)rng.NextDouble()).ToArray();
        string one = Path.Combine(_dir, "one.gguf"), chunked = Path.Combine(_dir, "chunked.gguf");
        using (var w = new GgufWriter(one))
        {
            w.AddTensor("q", [256, 8], GgmlType.Q6_K);
            w.AppendTensor("q", x);
            w.Commit();
        }
        using (var w = new GgufWriter(chunked))
        {
            w.AddTensor("q", [256, 8], GgmlType.Q6_K);
            w.BeginTensor("q");
            for (int r = 0; r < 8; r += 2) w.WriteTensorValues(x.AsSpan(r * 256, 512));
            w.EndTensor();
            w.Commit();
        }
        File.ReadAllBytes(chunked).Should().Equal(File.ReadAllBytes(one));
    }
}
