using System.Buffers.Binary;
using System.Text;
using Converter.Formats.Gguf;
using Converter.Numerics.Ggml;

namespace Converter.Core.Tests.Gguf;

public sealed class GgufCorruptFileTests : IDisposable
{
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "gguf-bad-" + Guid.NewGuid().ToString("N"));

    public GgufCorruptFileTests() => Directory.CreateDirectory(_dir);

    public void Dispose() => Directory.Delete(_dir, true);

    /// <summary>A valid file: two keys, tensors "first" (F32 [8]) and "second" (Q8_0 [32, 2]).</summary>
    private byte[] ValidFile()
    {
        string path = Path.Combine(_dir, "valid.gguf");
        using (var w = new GgufWriter(path))
        {
            w.Add("general.architecture", GgufValue.String("test"));
            w.Add("test.vocab", GgufValue.Array(new[] { "alpha", "beta", "gamma" }));
            w.AddTensor("first", [8], GgmlType.F32);
            w.AddTensor("second", [32, 2], GgmlType.Q8_0);
            w.AppendTensor("first", new float[8]);
            w.AppendTensor("second", new float[64]);
            w.Commit();
        }
        return File.ReadAllBytes(path);
    }

    private InvalidDataException OpenFails(byte[] bytes, string name = "bad.gguf")
    {
        string path = Path.Combine(_dir, name);
        File.WriteAllBytes(path, bytes);
        var act = () => { using var r = GgufReader.Open(path); };
        var ex = act.Should().Throw<InvalidDataException>().Which;
        ex.Message.Should().Contain(path);
        return ex;
    }

    /// <summary>Byte position of a tensor info's offset field: after the name, n_dims, dims and type.</summary>
    private static int OffsetFieldOf(byte[] file, string tensor, int nDims)
    {
        byte[] needle = [.. BitConverter.GetBytes((ulong)tensor.Length), .. Encoding.UTF8.GetBytes(tensor)];
        int at = file.AsSpan().IndexOf(needle);
        at.Should().BePositive();
        return at + needle.Length + 4 + 8 * nDims + 4;
    }

    [Fact]
    public void ValidFileOpens()
    {
        string path = Path.Combine(_dir, "ok.gguf");
        File.WriteAllBytes(path, ValidFile());
        using var r = GgufReader.Open(path);
        r.Tensors.Should().HaveCount(2);
    }

    [Fact]
    public void EveryTruncationIsRejected()
    {
        var file = ValidFile();
        using (var probe = GgufReader.Open(Path.Combine(_dir, "valid.gguf")))
        {
            // cutting anywhere before the end of the last tensor's data must fail
            long dataEnd = probe.DataOffset + probe.GetTensor("second").Offset + probe.GetTensor("second").ByteSize;
            for (int cut = 0; cut < dataEnd; cut += cut < 200 ? 1 : 7)
                OpenFails(file[..cut], $"cut{cut}.gguf");
        }
    }

    [Fact]
    public void TruncationInsideAStringNamesTheKey()
    {
        var file = ValidFile();
        int at = file.AsSpan().IndexOf("gamma"u8);
        OpenFails(file[..(at + 2)]).Message.Should().Contain("test.vocab");
    }

    [Fact]
    public void TruncatedDataNamesTheTensor()
    {
        var file = ValidFile();
        OpenFails(file[..(file.Length - 40)]).Message.Should().Contain("second");
    }

    [Fact]
    public void OffsetPastTheEndIsRejected()
    {
        var file = ValidFile();
        BinaryPrimitives.WriteUInt64LittleEndian(file.AsSpan(OffsetFieldOf(file, "second", 2)), 1UL << 40);
        OpenFails(file).Message.Should().Contain("second");
    }

    [Fact]
    public void MisalignedOffsetIsRejected()
    {
        var file = ValidFile();
        int field = OffsetFieldOf(file, "second", 2);
        ulong off = BinaryPrimitives.ReadUInt64LittleEndian(file.AsSpan(field));
        BinaryPrimitives.WriteUInt64LittleEndian(file.AsSpan(field), off - 4);
        OpenFails(file).Message.Should().Contain("second").And.Contain("alignment");
    }

    [Fact]
    public void OverlappingTensorsAreRejected()
    {
        var file = ValidFile();
        BinaryPrimitives.WriteUInt64LittleEndian(file.AsSpan(OffsetFieldOf(file, "second", 2)), 0);
        OpenFails(file).Message.Should().Contain("overlaps");
    }

    [Fact]
    public void BadMagicVersionCountsAndTypesAreRejected()
    {
        var file = ValidFile();
        var m = (byte[])file.Clone();
        m[0] = (byte)'X';
        OpenFails(m).Message.Should().Contain("magic");

        var v = (byte[])file.Clone();
        BinaryPrimitives.WriteUInt32LittleEndian(v.AsSpan(4), 1);
        OpenFails(v).Message.Should().Contain("version");

        var c = (byte[])file.Clone();
        BinaryPrimitives.WriteUInt64LittleEndian(c.AsSpan(8), 1UL << 50);
        OpenFails(c).Message.Should().Contain("tensor count");

        var k = (byte[])file.Clone();
        BinaryPrimitives.WriteUInt64LittleEndian(k.AsSpan(16), 1UL << 50);
        OpenFails(k).Message.Should().Contain("metadata count");

        var t = (byte[])file.Clone();
        int typeField = OffsetFieldOf(t, "first", 1) - 4;
        BinaryPrimitives.WriteUInt32LittleEndian(t.AsSpan(typeField), 77);
        OpenFails(t).Message.Should().Contain("first").And.Contain("77");

        var vt = (byte[])file.Clone();
        int keyAt = vt.AsSpan().IndexOf("general.architecture"u8) + "general.architecture".Length;
        BinaryPrimitives.WriteUInt32LittleEndian(vt.AsSpan(keyAt), 13);
        OpenFails(vt).Message.Should().Contain("general.architecture");
    }

    [Fact]
    public void WrongAlignmentKeyTypeIsRejected()
    {
        string path = Path.Combine(_dir, "align.gguf");
        // written by hand: the writer refuses a non-u32 alignment
        var e = new List<byte>("GGUF"u8.ToArray());
        e.AddRange(BitConverter.GetBytes(3u));
        e.AddRange(BitConverter.GetBytes(0UL));
        e.AddRange(BitConverter.GetBytes(1UL));
        e.AddRange(BitConverter.GetBytes((ulong)"general.alignment".Length));
        e.AddRange("general.alignment"u8.ToArray());
        e.AddRange(BitConverter.GetBytes(5u));
        e.AddRange(BitConverter.GetBytes(64));
        OpenFails(e.ToArray()).Message.Should().Contain("general.alignment");
    }
}
