using System.Buffers.Binary;
using System.Text;
using Converter.Formats.Gguf;
using Converter.Numerics.Ggml;
using Converter.Tests;

namespace Converter.Core.Tests.Gguf;

/// <summary>The imatrix file against what llama-imatrix v0.5.0 itself wrote for tiny-dsv3 (golden/peer/llama-quantize-tiny-dsv3):
/// its GGUF, and the legacy .dat it converts the same GGUF to (<c>llama-imatrix --in-file imatrix.gguf --output-format dat</c>).</summary>
public sealed class ImatrixFileTests : IDisposable
{
    private readonly TestData.TempDir _tmp = new();

    public void Dispose() => _tmp.Dispose();

    private static string Peer(string name) => TestData.Golden("peer", "llama-quantize-tiny-dsv3", name);

    [Fact]
    public void ReadsLlamaImatrixsGguf()
    {
        var f = ImatrixFile.Read(Peer("imatrix.gguf"));
        f.IsLegacy.Should().BeFalse();
        f.Datasets.Should().Equal("calib.bin");
        (f.ChunkCount, f.ChunkSize).Should().Be((64, 128));
        f.Entries.Should().HaveCount(48);
        var exps = f.Entries["blk.1.ffn_gate_exps.weight"];
        (exps.Columns, exps.Matrices).Should().Be((256, 16));
        exps.Counts.Sum().Should().Be(8192 * 4); // top-4 of every token
        var kb = f.Entries["blk.0.attn_k_b.weight"];
        (kb.Columns, kb.Matrices, kb.Counts[0]).Should().Be((128, 1, 8192f)); // 4 heads of 32 under one count
    }

    [Fact]
    public void WritesTheBytesLlamaImatrixWrote()
    {
        var f = ImatrixFile.Read(Peer("imatrix.gguf"));
        string path = _tmp["copy.gguf"];
        f.Write(path);
        File.ReadAllBytes(path).Should().Equal(File.ReadAllBytes(Peer("imatrix.gguf")));
    }

    [Fact]
    public void LegacyDatGivesTheImportanceOfTheGgufItCameFrom()
    {
        var dat = ImatrixFile.Read(Peer("imatrix.legacy.dat"));
        var gguf = ImatrixFile.Read(Peer("imatrix.gguf"));
        dat.IsLegacy.Should().BeTrue();
        dat.ChunkCount.Should().Be(16); // the converting run's chunks: 8,192 tokens over its default -c 512
        dat.Entries.Keys.Should().Equal(gguf.Entries.Keys);
        foreach (var (name, e) in gguf.Entries)
        {
            var a = dat.Entries[name].Importance(legacy: true);
            var b = e.Importance(legacy: false);
            a.Length.Should().Be(b.Length, name);
            for (int i = 0; i < a.Length; i++)
                Math.Abs(a[i] - b[i]).Should().BeLessThanOrEqualTo(2e-6f * Math.Abs(b[i]), $"{name}[{i}]"); // (sum/count)*ncall/ncall in float32
        }
    }

    [Fact]
    public void ImportanceIsSumOverCountAndOneWhereNoTokenCame()
    {
        var e = new ImatrixEntry([2, 4, 6, 8, 10, 12], [2, 0, 4]);
        e.Importance(legacy: false).Should().Equal(1, 2, 1, 1, 2.5f, 3);
    }

    [Fact]
    public void MissingCountsNameTheFileAndTensor()
    {
        var path = _tmp["bad.gguf"];
        using (var w = new GgufWriter(path))
        {
            AddKeys(w);
            w.AddTensor("blk.0.ffn_up.weight.in_sum2", [4], GgmlType.F32);
            w.WriteHeader();
            w.AppendTensor("blk.0.ffn_up.weight.in_sum2", new float[4]);
            w.Commit();
        }
        var act = () => ImatrixFile.Read(path);
        act.Should().Throw<InvalidDataException>().WithMessage($"{path}*blk.0.ffn_up.weight.in_sum2*no*blk.0.ffn_up.weight.counts*");
    }

    [Fact]
    public void NonF32AndNonFiniteEntriesAreRefused()
    {
        var path = _tmp["f16.gguf"];
        using (var w = new GgufWriter(path))
        {
            AddKeys(w);
            w.AddTensor("a.weight.in_sum2", [32], GgmlType.F16);
            w.AddTensor("a.weight.counts", [1], GgmlType.F32);
            w.WriteHeader();
            w.AppendTensor("a.weight.in_sum2", new float[32]);
            w.AppendTensor("a.weight.counts", new float[1]);
            w.Commit();
        }
        FluentActions.Invoking(() => ImatrixFile.Read(path)).Should().Throw<InvalidDataException>().WithMessage($"{path}*'a.weight.in_sum2' is F16*");

        var nan = new ImatrixFile { ChunkCount = 1, ChunkSize = 1 };
        nan.Entries["b.weight"] = new ImatrixEntry([1, float.NaN], [1]);
        nan.Write(_tmp["nan.gguf"]);
        FluentActions.Invoking(() => ImatrixFile.Read(_tmp["nan.gguf"])).Should().Throw<InvalidDataException>().WithMessage("*'b.weight.in_sum2' element 1 is NaN*");
    }

    [Fact]
    public void GgufWithoutImatrixKeysIsRefusedAsLlamaQuantizeDoes()
    {
        var path = _tmp["nokeys.gguf"];
        using (var w = new GgufWriter(path))
        {
            w.Add("general.type", GgufValue.String("imatrix"));
            w.AddTensor("a.weight.in_sum2", [4], GgmlType.F32);
            w.AddTensor("a.weight.counts", [1], GgmlType.F32);
            w.WriteHeader();
            w.AppendTensor("a.weight.in_sum2", new float[4]);
            w.AppendTensor("a.weight.counts", new float[1]);
            w.Commit();
        }
        FluentActions.Invoking(() => ImatrixFile.Read(path)).Should().Throw<InvalidDataException>().WithMessage($"{path}*imatrix.datasets*");
    }

    [Fact]
    public void TruncatedLegacyFileNamesTheEntry()
    {
        var full = File.ReadAllBytes(Peer("imatrix.legacy.dat"));
        // the first entry's name, then cut inside its values
        int len = BinaryPrimitives.ReadInt32LittleEndian(full.AsSpan(4));
        string name = Encoding.UTF8.GetString(full, 8, len);
        var path = _tmp["cut.dat"];
        File.WriteAllBytes(path, full[..(8 + len + 8 + 40)]);
        FluentActions.Invoking(() => ImatrixFile.Read(path)).Should().Throw<InvalidDataException>().WithMessage($"{path}*'{name}'*");
        File.WriteAllBytes(_tmp["junk.dat"], [1, 2]);
        FluentActions.Invoking(() => ImatrixFile.Read(_tmp["junk.dat"])).Should().Throw<InvalidDataException>().WithMessage("*junk.dat*");
    }

    private static void AddKeys(GgufWriter w)
    {
        w.Add(ImatrixFile.TypeKey, GgufValue.String(ImatrixFile.TypeValue));
        w.Add(ImatrixFile.DatasetsKey, GgufValue.Array(new[] { "x" }));
        w.Add(ImatrixFile.ChunkCountKey, GgufValue.UInt32(1));
        w.Add(ImatrixFile.ChunkSizeKey, GgufValue.UInt32(1));
    }
}
