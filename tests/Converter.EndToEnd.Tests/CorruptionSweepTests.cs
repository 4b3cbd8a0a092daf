using System.Buffers.Binary;
using System.CommandLine;
using System.Text;
using System.Text.Json.Nodes;
using Converter.Cli;
using Xunit.Abstractions;

namespace Converter.Tests;

/// <summary>
/// Hundreds of seeded random corruptions of each bundled input type, each run through `inspect` or `verify` in process
/// (ConverterApp.Run, the CLI's entry point): structural corruptions (truncation, a header length, offset, dtype or shape
/// that lies, broken JSON, a deleted shard) must exit 2 with exactly one line on stderr; no corruption at all may exit 3
/// (an unhandled exception) or run past 30 s. Byte flips may land where nothing checks them (a metadata string), so a
/// flip may also exit 0; it still may not crash.
/// </summary>
public class CorruptionSweepTests(ITestOutputHelper log) : IDisposable
{
    private static readonly TimeSpan PerRun = TimeSpan.FromSeconds(30);
    private readonly TestData.TempDir _tmp = new();

    public void Dispose() => _tmp.Dispose();

    private static string Seed(string target, string name) => Path.Combine(TestData.Root, "tests", "Converter.Fuzz", "corpus", target, name);

    private sealed record Outcome(int Exit, string StdErr);

    private static Outcome RunCli(params string[] args)
    {
        var err = new StringWriter();
        int exit = -1;
        var thread = new Thread(() => exit = ConverterApp.Run(args, new InvocationConfiguration { Output = new StringWriter(), Error = err }),
            16 << 20) { IsBackground = true };
        thread.Start();
        if (!thread.Join(PerRun)) throw new TimeoutException($"converter {string.Join(' ', args)} ran past {PerRun.TotalSeconds} s");
        return new Outcome(exit, err.ToString());
    }

    /// <summary>Applies each corruption to <paramref name="file"/>, runs, restores; returns how many exited 2.</summary>
    private int Sweep(string kind, string file, int count, Func<Random, byte[], (byte[] Bytes, bool Structural)?> corrupt, Func<string[]> args)
    {
        var original = File.ReadAllBytes(file);
        int bad = 0, accepted = 0;
        var failures = new List<string>();
        for (int i = 0; i < count; i++)
        {
            var rng = new Random(1000 * kind.Length + i);
            if (corrupt(rng, original) is not var (bytes, structural)) continue;
            File.WriteAllBytes(file, bytes);
            var r = RunCli(args());
            var lines = r.StdErr.TrimEnd('\n', '\r').Split('\n');
            if (r.Exit == 2)
            {
                bad++;
                if (lines.Length != 1 || !lines[0].StartsWith("error: ", StringComparison.Ordinal))
                    failures.Add($"#{i}: exit 2 but stderr is not one error line: {r.StdErr}");
            }
            else if (r.Exit == 0 && !structural) accepted++;
            else failures.Add($"#{i} ({(structural ? "structural" : "flip")}): exit {r.Exit}: {r.StdErr}");
        }
        File.WriteAllBytes(file, original);
        log.WriteLine($"{kind}: {count} corruptions, {bad} exit 2, {accepted} byte flips not detected (exit 0)");
        failures.Should().BeEmpty();
        return bad;
    }

    /// <summary>Truncation, flips, or (safetensors) a header whose length, offsets, dtype or shape lies.</summary>
    private static (byte[], bool)? CorruptSafetensors(Random rng, byte[] file)
    {
        long headerLen = BinaryPrimitives.ReadInt64LittleEndian(file);
        switch (rng.Next(4))
        {
            case 0: return (file[..rng.Next(file.Length - 1)], true);
            case 1:
            {
                var b = (byte[])file.Clone();
                for (int k = rng.Next(1, 4); k > 0; k--) b[8 + rng.Next((int)headerLen)] ^= (byte)rng.Next(1, 256);
                return (b, false);
            }
            case 2:
            {
                var b = (byte[])file.Clone();
                long lie = rng.Next(2) == 0 ? headerLen + rng.Next(-8, 9) : rng.NextInt64();
                if (lie == headerLen) lie++;
                BinaryPrimitives.WriteInt64LittleEndian(b, lie);
                return (b, true);
            }
            default:
            {
                var json = JsonNode.Parse(file.AsSpan(8, (int)headerLen))!.AsObject();
                var names = json.Where(p => p.Key != "__metadata__").Select(p => p.Key).ToList();
                var t = json[names[rng.Next(names.Count)]]!.AsObject();
                var shape = t["shape"]!.AsArray();
                switch (rng.Next(3))
                {
                    case 0:
                        var off = t["data_offsets"]!.AsArray();
                        int which = rng.Next(2);
                        off[which] = off[which]!.GetValue<long>() + (rng.Next(2) == 0 ? -1 : 1) * rng.Next(1, 4096);
                        break;
                    case 1:
                        // a dtype of another element size (or none): the byte span no longer matches the shape
                        var dtype = t["dtype"]!.GetValue<string>();
                        t["dtype"] = new[] { "F32", "F64", "I8", "Q7" }.First(d => d != dtype && (d != "I8" || dtype is not ("F8_E4M3" or "U8" or "F8_E8M0")));
                        break;
                    default:
                        if (shape.Count == 0) shape.Add(2);
                        else shape[rng.Next(shape.Count)] = shape[0]!.GetValue<long>() + rng.Next(1, 1000);
                        break;
                }
                var header = Encoding.UTF8.GetBytes(json.ToJsonString());
                var b = new byte[8 + header.Length + file.Length - 8 - headerLen];
                BinaryPrimitives.WriteInt64LittleEndian(b, header.Length);
                header.CopyTo(b, 8);
                file.AsSpan(8 + (int)headerLen).CopyTo(b.AsSpan(8 + header.Length));
                return (b, true);
            }
        }
    }

    /// <summary>JSON: truncated (always invalid), a few flipped bytes, or a value of the wrong type.</summary>
    private static (byte[], bool)? CorruptJson(Random rng, byte[] file)
    {
        switch (rng.Next(3))
        {
            case 0: return (file[..rng.Next(file.Length - 2)], true);
            case 1:
            {
                var b = (byte[])file.Clone();
                for (int k = rng.Next(1, 4); k > 0; k--) b[rng.Next(b.Length)] = (byte)rng.Next(256);
                return (b, false);
            }
            default:
            {
                var o = JsonNode.Parse(file)!.AsObject();
                var target = o.ContainsKey("weight_map") ? o["weight_map"]!.AsObject() : o;
                var keys = target.Select(p => p.Key).ToList();
                var key = keys[rng.Next(keys.Count)];
                target[key] = rng.Next(4) switch { 0 => "lie", 1 => -rng.Next(1, 1 << 30), 2 => new JsonArray(), _ => null };
                return (Encoding.UTF8.GetBytes(o.ToJsonString()), false);
            }
        }
    }

    private string CopyModel(string name)
    {
        var dir = _tmp[name];
        TestCheckpoints.Copy(TestData.Model(name), dir);
        return dir;
    }

    [Fact]
    public void SafetensorsShardsIndexAndConfigThroughInspect()
    {
        var model = CopyModel("tiny-dsv3-fp8");
        var shards = Directory.GetFiles(model, "*.safetensors").Order(StringComparer.Ordinal).ToArray();
        string[] Inspect() => ["inspect", model, "-q"];
        int structural = 0;
        foreach (var shard in shards)
            structural += Sweep("shard " + Path.GetFileName(shard), shard, 80, CorruptSafetensors, Inspect);
        structural.Should().BeGreaterThan(150);
        Sweep("index", Path.Combine(model, "model.safetensors.index.json"), 80, CorruptJson, Inspect).Should().BeGreaterThan(30);
        Sweep("config.json", Path.Combine(model, "config.json"), 120, CorruptJson, Inspect).Should().BeGreaterThan(40);

        // a deleted shard, each in turn
        foreach (var shard in shards)
        {
            var bytes = File.ReadAllBytes(shard);
            File.Delete(shard);
            var r = RunCli(Inspect());
            File.WriteAllBytes(shard, bytes);
            r.Exit.Should().Be(2, r.StdErr);
            r.StdErr.TrimEnd().Split('\n').Should().ContainSingle().Which.Should().Contain(Path.GetFileName(shard));
        }
        RunCli(Inspect()).Exit.Should().Be(0, "the restored model inspects cleanly");
    }

    [Fact]
    public void GgufGoldenAndOnnxThroughVerify()
    {
        // The GGUF seed states a hidden width of 32, not tiny-dsv3's 256: a file that still parses stops at the shape
        // check before llama.cpp would start, so every run here is in-process and fast.
        var gguf = _tmp["model.gguf"];
        File.Copy(Seed("gguf", "deepseek2-f32-q8_0.gguf"), gguf);
        var golden = _tmp["eval.safetensors"];
        File.Copy(TestData.Golden("tiny-dsv3", "eval.safetensors"), golden);
        string[] VerifyGguf() => ["verify", gguf, "--golden", golden, "-q"];

        Sweep("gguf", gguf, 200, CorruptSafetensorsLikeGguf, VerifyGguf);
        Sweep("golden", golden, 150, (rng, b) => rng.Next(3) == 0 ? CorruptGoldenData(rng, b) : CorruptSafetensors(rng, b), VerifyGguf);

        var onnx = _tmp["model.onnx"];
        File.Copy(Seed("onnx", "fp8.onnx"), onnx);
        Sweep("onnx", onnx, 60, (rng, b) => rng.Next(2) == 0 ? (b[..rng.Next(b.Length - 1)], false) : Flip(rng, b, 0), () => ["verify", onnx, "--golden", golden, "-q"]);
    }

    private static (byte[], bool) Flip(Random rng, byte[] file, int from)
    {
        var b = (byte[])file.Clone();
        for (int k = rng.Next(1, 4); k > 0; k--) b[from + rng.Next(b.Length - from)] ^= (byte)rng.Next(1, 256);
        return (b, false);
    }

    /// <summary>A golden whose tokens leave the vocabulary or whose logits are not finite (data checks, not header ones).</summary>
    private static (byte[], bool)? CorruptGoldenData(Random rng, byte[] file)
    {
        long headerLen = BinaryPrimitives.ReadInt64LittleEndian(file);
        var json = JsonNode.Parse(file.AsSpan(8, (int)headerLen))!.AsObject();
        bool tokens = rng.Next(2) == 0;
        var t = json[tokens ? "tokens" : "logits"]!.AsObject();
        long begin = t["data_offsets"]![0]!.GetValue<long>(), end = t["data_offsets"]![1]!.GetValue<long>();
        var b = (byte[])file.Clone();
        int at = (int)(8 + headerLen + begin + rng.NextInt64((end - begin) / 4) * 4);
        if (tokens) BinaryPrimitives.WriteInt32LittleEndian(b.AsSpan(at), rng.Next(2) == 0 ? -1 - rng.Next(100) : 1 << 20);
        else BinaryPrimitives.WriteSingleLittleEndian(b.AsSpan(at), rng.Next(2) == 0 ? float.NaN : float.PositiveInfinity);
        return (b, true);
    }

    /// <summary>GGUF: truncation, flips, or a count, string length, type or dimension in the header that lies.</summary>
    private static (byte[], bool)? CorruptSafetensorsLikeGguf(Random rng, byte[] file)
    {
        var b = (byte[])file.Clone();
        switch (rng.Next(4))
        {
            case 0: return (file[..rng.Next(file.Length - 1)], true);
            case 1: return Flip(rng, file, 0);
            case 2:
                // tensor count (offset 8) or metadata count (16): larger than the file can hold, or off by one
                BinaryPrimitives.WriteUInt64LittleEndian(b.AsSpan(rng.Next(2) == 0 ? 8 : 16), rng.Next(2) == 0 ? (ulong)rng.NextInt64() : 1000);
                return (b, true);
            default:
            {
                // an 8-byte little-endian field somewhere in the header set to a huge or negative value
                int at = 24 + rng.Next(Math.Min(b.Length, 1200) - 32);
                BinaryPrimitives.WriteInt64LittleEndian(b.AsSpan(at), rng.Next(2) == 0 ? -rng.NextInt64(1, long.MaxValue) : rng.NextInt64(1L << 40, long.MaxValue));
                return (b, false);
            }
        }
    }
}
