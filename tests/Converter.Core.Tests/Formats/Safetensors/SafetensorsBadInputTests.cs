using System.Buffers.Binary;
using System.Text;
using Converter.Formats.Safetensors;

namespace Converter.Tests.Formats.Safetensors;

/// <summary>Every way a safetensors file can lie gets an InvalidDataException naming the file (and tensor).</summary>
public class SafetensorsBadInputTests : IDisposable
{
    private readonly TestData.TempDir _tmp = new();

    public void Dispose() => _tmp.Dispose();

    private string WriteRaw(string headerJson, int dataBytes, long? declaredHeaderLength = null, string name = "bad.safetensors")
    {
        var header = Encoding.UTF8.GetBytes(headerJson);
        var bytes = new byte[8 + header.Length + dataBytes];
        BinaryPrimitives.WriteUInt64LittleEndian(bytes, (ulong)(declaredHeaderLength ?? header.Length));
        header.CopyTo(bytes, 8);
        var path = _tmp[name];
        File.WriteAllBytes(path, bytes);
        return path;
    }

    private static void ShouldFail(string path, params string[] fragments)
    {
        var act = () => SafetensorsFile.Open(path).Dispose();
        var e = act.Should().Throw<InvalidDataException>().Which;
        e.Message.Should().Contain(path);
        foreach (var f in fragments) e.Message.Should().Contain(f);
    }

    private const string Good = """{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"b":{"dtype":"BF16","shape":[4],"data_offsets":[16,24]}}""";

    [Fact]
    public void ValidFileOpens()
    {
        using var f = SafetensorsFile.Open(WriteRaw(Good, 24));
        f.Tensors.Should().HaveCount(2);
        f.Info("b").ByteLength.Should().Be(8);
    }

    [Fact]
    public void TruncatedData() => ShouldFail(WriteRaw(Good, 20), "'b'", "truncated");

    [Fact]
    public void FileShorterThanLengthPrefix()
    {
        var path = _tmp["tiny.safetensors"];
        File.WriteAllBytes(path, [1, 2, 3]);
        ShouldFail(path, "shorter than the 8-byte header length");
    }

    [Fact]
    public void HeaderLengthLargerThanFile() => ShouldFail(WriteRaw(Good, 24, declaredHeaderLength: 10_000), "larger than the file");

    [Fact]
    public void HeaderOver100MB() => ShouldFail(WriteRaw(Good, 24, declaredHeaderLength: 200L * 1024 * 1024), "exceeds");

    [Fact]
    public void HeaderNotJson() => ShouldFail(WriteRaw("{not json at all", 0), "not valid JSON");

    [Fact]
    public void HeaderNotObject() => ShouldFail(WriteRaw("[1,2,3]", 0), "not an object");

    [Fact]
    public void OffsetsOutOfRange() =>
        ShouldFail(WriteRaw("""{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[100,108]}}""", 16), "'b'");

    [Fact]
    public void OverlappingOffsets() =>
        ShouldFail(WriteRaw("""{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}""", 12), "'b'", "overlaps");

    [Fact]
    public void GapInDataRegion() =>
        ShouldFail(WriteRaw("""{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[12,20]}}""", 20), "'b'", "gap");

    [Fact]
    public void TrailingBytesNotCovered() => ShouldFail(WriteRaw(Good, 32), "trailing");

    [Fact]
    public void ShapeTimesDtypeMismatch() =>
        ShouldFail(WriteRaw("""{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}""", 8), "'a'", "12 bytes");

    [Fact]
    public void DuplicateNames() =>
        ShouldFail(WriteRaw("""{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}""", 8), "'a'", "twice");

    [Fact]
    public void UnknownDtype() =>
        ShouldFail(WriteRaw("""{"a":{"dtype":"F12","shape":[1],"data_offsets":[0,4]}}""", 4), "'a'", "unknown dtype 'F12'");

    [Fact]
    public void NegativeDimension() =>
        ShouldFail(WriteRaw("""{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}""", 4), "'a'", "dimension");

    [Fact]
    public void IndexNamesMissingShard()
    {
        var dir = Directory.CreateDirectory(_tmp["ckpt"]).FullName;
        WriteRaw(Good, 24, name: "ckpt/model-00001-of-00002.safetensors");
        File.WriteAllText(Path.Combine(dir, SafetensorsCheckpoint.IndexFileName),
            """{"metadata":{},"weight_map":{"a":"model-00001-of-00002.safetensors","b":"model-00001-of-00002.safetensors","c":"model-00002-of-00002.safetensors"}}""");
        var act = () => SafetensorsCheckpoint.Open(dir).Dispose();
        act.Should().Throw<FileNotFoundException>().WithMessage("*model-00002-of-00002.safetensors*'c'*missing*");
    }

    [Fact]
    public void IndexNamesTensorTheShardLacks()
    {
        var dir = Directory.CreateDirectory(_tmp["ckpt"]).FullName;
        WriteRaw(Good, 24, name: "ckpt/model-00001-of-00001.safetensors");
        File.WriteAllText(Path.Combine(dir, SafetensorsCheckpoint.IndexFileName),
            """{"metadata":{},"weight_map":{"a":"model-00001-of-00001.safetensors","b":"model-00001-of-00001.safetensors","zzz":"model-00001-of-00001.safetensors"}}""");
        var act = () => SafetensorsCheckpoint.Open(dir).Dispose();
        act.Should().Throw<InvalidDataException>().WithMessage("*model-00001-of-00001.safetensors*'zzz'*lacks*");
    }

    [Fact]
    public void ShardHoldsTensorTheIndexDoesNotPlace()
    {
        var dir = Directory.CreateDirectory(_tmp["ckpt"]).FullName;
        WriteRaw(Good, 24, name: "ckpt/model-00001-of-00001.safetensors");
        File.WriteAllText(Path.Combine(dir, SafetensorsCheckpoint.IndexFileName),
            """{"metadata":{},"weight_map":{"a":"model-00001-of-00001.safetensors"}}""");
        var act = () => SafetensorsCheckpoint.Open(dir).Dispose();
        act.Should().Throw<InvalidDataException>().WithMessage("*'b'*");
    }
}
