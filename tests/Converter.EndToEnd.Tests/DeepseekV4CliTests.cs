using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Nodes;
using Converter.Formats.Gguf;
using Converter.Formats.Safetensors;
using Converter.Models;
using Converter.Numerics.Ggml;
using Converter.Pipelines;
using Converter.Tensors;

namespace Converter.Tests;

/// <summary>
/// DeepSeek-V4 through the CLI: the official FP8/FP4 layout from BF16 (byte for byte the reference), BF16 from the
/// official layout (exact), GGUF deepseek4 as llama.cpp's converter writes it (tensor by tensor against its output),
/// f32 GGUF (exact dequantization), the hc_mult refusal and bad inputs (exit 2, one line, nothing written).
/// </summary>
public sealed class DeepseekV4CliTests : IDisposable
{
    private readonly TestData.TempDir _tmp = new();

    public void Dispose() => _tmp.Dispose();

    // ---- independent scalar references of the official layout's values ----

    /// <summary>e4m3fn by its bit layout: bias 7, subnormals below exponent 1, 0x7F/0xFF NaN.</summary>
    private static double E4M3(byte b)
    {
        int s = b >> 7, e = (b >> 3) & 15, m = b & 7;
        if (e == 15 && m == 7) return double.NaN;
        double v = e == 0 ? m / 8.0 * Math.Pow(2, -6) : (1 + m / 8.0) * Math.Pow(2, e - 7);
        return s == 1 ? -v : v;
    }

    private static readonly double[] E2M1 = [0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6];

    private static double E8M0(byte b) => Math.Pow(2, b - 127);

    /// <summary>bf16 of a double that float32 holds exactly, rounded to nearest even.</summary>
    private static ushort Bf16(double v)
    {
        uint bits = BitConverter.SingleToUInt32Bits((float)v);
        return (ushort)((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16);
    }

    private static string ScaleOf(string weight) => weight[..^".weight".Length] + ".scale";

    [Theory]
    [InlineData("tiny-dsv4")]
    [InlineData("tiny-dsv4-hc4")]
    public void Fp8BlockOfBf16ReproducesTheOfficialLayoutByteForByte(string model)
    {
        var outDir = _tmp["fp8"];
        var r = Cli.Run("quantize", TestData.Model(model), "-o", outDir, "--scheme", "fp8-block", "-q");
        r.ExitCode.Should().Be(0, r.ToString());
        using var got = SafetensorsCheckpoint.Open(outDir);
        using var want = SafetensorsCheckpoint.Open(TestData.Model(model + "-fp8"));
        got.Names.Should().Equal(want.Names); // the same order too
        int scales = 0;
        foreach (var name in want.Names)
        {
            var (a, e) = (got.Info(name), want.Info(name));
            a.DType.Should().Be(e.DType, name);
            a.Shape.Should().Equal(e.Shape, name);
            using var ad = got.Read(name);
            using var ed = want.Read(name);
            ad.Bytes.SequenceEqual(ed.Bytes).Should().BeTrue($"{name} must match byte for byte");
            if (e.DType == DType.F8_E8M0) scales++;
        }
        scales.Should().Be(130);
        // the whole file: header, order, padding and data
        File.ReadAllBytes(Path.Combine(outDir, "model.safetensors")).AsSpan()
            .SequenceEqual(File.ReadAllBytes(Path.Combine(TestData.Model(model + "-fp8"), "model.safetensors"))).Should().BeTrue();
        var q = JsonNode.Parse(File.ReadAllText(Path.Combine(outDir, "config.json")))!["quantization_config"]!.ToJsonString();
        q.Should().Be(JsonNode.Parse(File.ReadAllText(Path.Combine(TestData.Model(model + "-fp8"), "config.json")))!["quantization_config"]!.ToJsonString());
    }

    [Fact]
    public void Bf16OfTheOfficialLayoutIsExactlyCodeTimesScale()
    {
        var outDir = _tmp["bf16"];
        var r = Cli.Run("quantize", TestData.Model("tiny-dsv4-fp8"), "-o", outDir, "--scheme", "bf16", "-q");
        r.ExitCode.Should().Be(0, r.ToString());
        using var src = SafetensorsCheckpoint.Open(TestData.Model("tiny-dsv4-fp8"));
        using var dst = SafetensorsCheckpoint.Open(outDir);
        using var hub = SafetensorsCheckpoint.Open(TestData.Model("tiny-dsv4"));
        dst.Names.Should().NotContain(n => n.EndsWith(".scale"));
        dst.Names.Should().Equal(hub.Names); // the hub BF16 layout: same tensors, dtypes, shapes, order
        foreach (var n in hub.Names)
        {
            dst.Info(n).DType.Should().Be(hub.Info(n).DType, n);
            dst.Info(n).Shape.Should().Equal(hub.Info(n).Shape, n);
        }
        int fp8 = 0, fp4 = 0;
        foreach (var name in dst.Names)
        {
            var info = src.Info(name);
            using var d = dst.Read(name);
            using var s = src.Read(name);
            if (info.DType is not (DType.F8_E4M3 or DType.I8))
            {
                d.Bytes.SequenceEqual(s.Bytes).Should().BeTrue($"{name} ({info.DType}) must be unchanged");
                continue;
            }
            using var sc = src.Read(ScaleOf(name));
            var got = d.As<ushort>();
            var codes = s.Bytes;
            var scales = sc.Bytes;
            int rows = (int)info.Shape[0];
            if (info.DType == DType.F8_E4M3)
            {
                int cols = (int)info.Shape[1], scaleCols = (cols + 127) / 128;
                for (int i = 0; i < rows; i++)
                    for (int j = 0; j < cols; j++)
                        if (got[i * cols + j] != Bf16(E4M3(codes[i * cols + j]) * E8M0(scales[i / 128 * scaleCols + j / 128])))
                            Assert.Fail($"{name} ({i},{j})");
                fp8++;
            }
            else
            {
                int cols = (int)info.Shape[1] * 2;
                for (int i = 0; i < rows; i++)
                    for (int j = 0; j < cols; j++)
                    {
                        byte packed = codes[(i * cols + j) / 2];
                        int code = j % 2 == 0 ? packed & 15 : packed >> 4;
                        double want = E2M1[code] * E8M0(scales[i * (cols / 32) + j / 32]);
                        // code 8 is -0: its bf16 is 0x8000, what the codec writes to keep the nibble recoverable
                        if (got[i * cols + j] != (code == 8 ? 0x8000 : Bf16(want))) Assert.Fail($"{name} ({i},{j}) code {code}");
                    }
                fp4++;
            }
        }
        (fp8, fp4).Should().Be((34, 96));
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(outDir, "config.json")))!.AsObject();
        config.ContainsKey("quantization_config").Should().BeFalse();
        config["torch_dtype"]!.GetValue<string>().Should().Be("bfloat16");
    }

    /// <summary>Every tensor of <paramref name="ours"/> equals llama.cpp's converter output in name, order, type,
    /// shape and bytes; metadata keys as it writes them (general.name, size_label and chat_template aside: the folder
    /// name prettified, a parameter-count label and llama.cpp's own template file).</summary>
    private static void AssertSameAsPeer(string ours, string peer)
    {
        using var a = GgufReader.Open(ours);
        using var b = GgufReader.Open(peer);
        a.Tensors.Select(t => t.Name).Should().Equal(b.Tensors.Select(t => t.Name));
        foreach (var t in b.Tensors)
        {
            var o = a.GetTensor(t.Name);
            o.Type.Should().Be(t.Type, t.Name);
            o.Dimensions.Should().Equal(t.Dimensions, t.Name);
            a.GetTensorData(o).SequenceEqual(b.GetTensorData(t)).Should().BeTrue($"{t.Name} ({t.Type}) must match byte for byte");
        }
        var skip = new HashSet<string> { "general.name", "general.size_label", "tokenizer.chat_template" };
        var want = b.Metadata.Where(kv => !skip.Contains(kv.Key)).ToDictionary(kv => kv.Key, kv => kv.Value);
        var got = a.Metadata.Where(kv => !skip.Contains(kv.Key)).ToDictionary(kv => kv.Key, kv => kv.Value);
        got.Keys.Should().BeEquivalentTo(want.Keys);
        foreach (var (k, v) in want) got[k].Should().Be(v, k);
        // deepseek4.* keys in llama.cpp's order
        a.Metadata.Select(kv => kv.Key).Where(k => k.StartsWith("deepseek4.")).Should()
            .Equal(b.Metadata.Select(kv => kv.Key).Where(k => k.StartsWith("deepseek4.")));
    }

    [Fact]
    public void GgufMxfp4MoeIsWhatLlamaCppsConverterWrites()
    {
        var gguf = _tmp["hc4.gguf"];
        var r = Cli.Run("export", "gguf", TestData.Model("tiny-dsv4-hc4-fp8"), "-o", gguf, "--type", "mxfp4_moe", "-q");
        r.ExitCode.Should().Be(0, r.ToString());
        AssertSameAsPeer(gguf, TestData.Golden("peer", "tiny-dsv4-hc4-fp8.llama-cpp-convert.gguf"));
        using var g = GgufReader.Open(gguf);
        g.Tensors.Count(t => t.Type == GgmlType.MXFP4).Should().Be(12);
        g.Tensors.Count(t => t.Type == GgmlType.Q8_0).Should().Be(34);
        g["general.file_type"].AsUInt32().Should().Be(38);
    }

    [Fact]
    public void Hc2IsRefusedForGgufUnlessForcedAndThenMatchesLlamaCppsConverter()
    {
        var gguf = _tmp["hc2.gguf"];
        var r = Cli.Run("export", "gguf", TestData.Model("tiny-dsv4-fp8"), "-o", gguf, "--type", "mxfp4_moe");
        r.ExitCode.Should().Be(2, r.ToString());
        r.StdErr.Should().Contain("hc_mult is 2").And.Contain("asserts 4 hyper-connection streams").And.Contain("--force");
        File.Exists(gguf).Should().BeFalse();
        Directory.EnumerateFileSystemEntries(_tmp.Path).Should().BeEmpty("nothing is written");
        r = Cli.Run("export", "gguf", TestData.Model("tiny-dsv4-fp8"), "-o", gguf, "--type", "mxfp4_moe", "--force", "-q");
        r.ExitCode.Should().Be(0, r.ToString());
        AssertSameAsPeer(gguf, TestData.Golden("peer", "tiny-dsv4-fp8.llama-cpp-convert.gguf"));
    }

    [Fact]
    public void GgufF32DequantizesFp8AndFp4Exactly()
    {
        var gguf = _tmp["f32.gguf"];
        var r = Cli.Run("export", "gguf", TestData.Model("tiny-dsv4-hc4-fp8"), "-o", gguf, "--type", "f32", "-q");
        r.ExitCode.Should().Be(0, r.ToString());
        using var ckpt = ModelCheckpoint.Open(TestData.Model("tiny-dsv4-hc4-fp8"));
        var plan = GgufExportPipeline.Plan(ckpt);
        using var g = GgufReader.Open(gguf);
        int quantized = 0;
        foreach (var t in plan.Tensors)
        {
            var info = g.GetTensor(t.Name);
            if (t.FixedType != null)
            {
                info.Type.Should().Be(GgmlType.I32);
                using var table = ckpt.Tensors.Read(t.Sources[0]);
                g.GetTensorData(info).SequenceEqual(table.Bytes).Should().BeTrue(t.Name);
                continue;
            }
            info.Type.Should().Be(GgmlType.F32, t.Name);
            var values = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(g.GetTensorData(info));
            long at = 0;
            foreach (var s in t.Sources)
            {
                var sInfo = ckpt.Tensors.Info(s);
                using var data = ckpt.Tensors.Read(s);
                if (sInfo.DType is DType.F8_E4M3 or DType.I8)
                {
                    using var sc = ckpt.Tensors.Read(ScaleOf(s));
                    int rows = (int)sInfo.Shape[0], cols = (int)sInfo.Shape[1] * (sInfo.DType == DType.I8 ? 2 : 1);
                    for (int i = 0; i < rows; i++)
                        for (int j = 0; j < cols; j++)
                        {
                            double want = sInfo.DType == DType.I8
                                ? E2M1[j % 2 == 0 ? data.Bytes[(i * cols + j) / 2] & 15 : data.Bytes[(i * cols + j) / 2] >> 4] * E8M0(sc.Bytes[i * (cols / 32) + j / 32])
                                : E4M3(data.Bytes[i * cols + j]) * E8M0(sc.Bytes[i / 128 * ((cols + 127) / 128) + j / 128]);
                            if ((double)values[(int)(at + (long)i * cols + j)] != want) Assert.Fail($"{t.Name} from {s} ({i},{j})");
                        }
                    at += (long)rows * cols;
                    quantized++;
                }
                else
                {
                    var want = TensorConvert.ToFloat32(data);
                    values.Slice((int)at, want.Length).SequenceEqual(want).Should().BeTrue($"{t.Name} from {s}");
                    at += want.Length;
                }
            }
            at.Should().Be(values.Length, t.Name);
        }
        quantized.Should().Be(34 + 96);
    }

    [Fact]
    public void GgufQ8_0AndQ4KMAreWrittenAsForV3()
    {
        var q8 = _tmp["q8.gguf"];
        var r = Cli.Run("export", "gguf", TestData.Model("tiny-dsv4-hc4-fp8"), "-o", q8, "--type", "q8_0", "-q");
        r.ExitCode.Should().Be(0, r.ToString());
        var mx = _tmp["mx.gguf"];
        Cli.Run("export", "gguf", TestData.Model("tiny-dsv4-hc4-fp8"), "-o", mx, "--type", "mxfp4_moe", "-q").ExitCode.Should().Be(0);
        using (var a = GgufReader.Open(q8))
        using (var b = GgufReader.Open(mx))
        {
            foreach (var t in a.Tensors)
            {
                bool keep = t.Dimensions.Count == 1 || t.Name.Contains("hc_") || t.Name.EndsWith("_ape.weight") || t.Name.EndsWith("ffn_gate_inp.weight")
                    || t.Name.EndsWith("indexer.proj.weight");
                t.Type.Should().Be(t.Name.Contains("tid2eid") ? GgmlType.I32 : keep ? GgmlType.F32 : GgmlType.Q8_0, t.Name);
                // FP8 weights: the same Q8_0 blocks as the mxfp4_moe file's (both from the exact dequantized values)
                var o = b.GetTensor(t.Name);
                if (o.Type == GgmlType.Q8_0) a.GetTensorData(t).SequenceEqual(b.GetTensorData(o)).Should().BeTrue(t.Name);
            }
            a["general.file_type"].AsUInt32().Should().Be(7);
        }
        var km = _tmp["q4km.gguf"];
        r = Cli.Run("export", "gguf", TestData.Model("tiny-dsv4-hc4-fp8"), "-o", km, "--type", "q4_k_m", "-q");
        r.ExitCode.Should().Be(0, r.ToString());
        using var k = GgufReader.Open(km);
        k.GetTensor("output.weight").Type.Should().Be(GgmlType.Q6_K);
        k.GetTensor("blk.0.ffn_down_exps.weight").Type.Should().Be(GgmlType.Q5_0); // Q4_K asked, 128-wide rows fall back (llama-quantize's choice)
        k.GetTensor("blk.2.ffn_down_exps.weight").Type.Should().Be(GgmlType.Q8_0); // Q6_K asked (use_more_bits), 128-wide rows fall back
        k.GetTensor("blk.1.ffn_gate_exps.weight").Type.Should().Be(GgmlType.Q4_K);
        k.GetTensor("blk.1.attn_q_a.weight").Type.Should().Be(GgmlType.Q4_K);
        k.GetTensor("blk.1.attn_q_b.weight").Type.Should().Be(GgmlType.Q5_0); // 128-wide rows are not whole 256-blocks: llama.cpp's fallback
        k["general.file_type"].AsUInt32().Should().Be(15);
    }

    [Fact]
    public void InspectReportsLayerKindsParametersLayoutAndKvCache()
    {
        var r = Cli.Run("inspect", TestData.Model("tiny-dsv4-fp8"), "--json");
        r.ExitCode.Should().Be(0, r.ToString());
        var j = JsonNode.Parse(r.StdOut)!;
        j["model_type"]!.GetValue<string>().Should().Be("deepseek_v4");
        j["weight_layout"]!.GetValue<string>().Should().Be("Fp8Fp4Block");
        using var bf16 = SafetensorsCheckpoint.Open(TestData.Model("tiny-dsv4"));
        long total = bf16.Names.Sum(n => bf16.Info(n).ElementCount);
        long routed = bf16.Names.Where(n => n.Contains(".ffn.experts.")).Sum(n => bf16.Info(n).ElementCount);
        j["total_parameters"]!.GetValue<long>().Should().Be(total);
        j["active_parameters_per_token"]!.GetValue<long>().Should().Be(total - routed + routed * 2 / 8);
        j["family"]!["layer_kinds"]!.GetValue<string>().Should().StartWith("sliding [0]; CSA m=4 [1, 3]; HCA m=128 [2]");
        j["family"]!["kv_cache"]!.GetValue<string>().Should().StartWith("97 bytes per token over 4 layers");
        j["tensors_by_dtype"]!["F8_E8M0"]!.GetValue<long>().Should().Be(130);
        j["notes"]!.AsArray().Select(n => n!.GetValue<string>()).Should()
            .Contain("block-scaled weights: 34 FP8 e4m3 (E8M0 128x128 scales) (AttentionProjection, SharedExpert); 96 FP4 e2m1 (E8M0 1x32 scales) (RoutedExpert)");
    }

    // ---- bad input: exit 2, one line naming the file and the tensor, nothing written ----

    private string BadCopy(Func<TestCheckpoints.Entry, TestCheckpoints.Entry?>? edit = null, Action<JsonObject>? config = null)
    {
        var dir = _tmp["src-" + Guid.NewGuid().ToString("N")[..8]];
        TestCheckpoints.Copy(TestData.Model("tiny-dsv4-fp8"), dir, edit, config);
        return dir;
    }

    private void AssertRefused(string src, params string[] mentions)
    {
        foreach (var args in new[] { new[] { "quantize", src, "-o", _tmp["out"], "--scheme", "bf16" }, ["export", "gguf", src, "-o", _tmp["out.gguf"], "--force"] })
        {
            var r = Cli.Run(args);
            r.ExitCode.Should().Be(2, r.ToString());
            var lines = r.StdErr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
            lines.Should().ContainSingle(r.ToString());
            foreach (var m in mentions) lines[0].Should().Contain(m);
            Directory.Exists(_tmp["out"]).Should().BeFalse();
            File.Exists(_tmp["out.gguf"]).Should().BeFalse();
            Directory.EnumerateFileSystemEntries(_tmp.Path).Should().OnlyContain(p => Path.GetFileName(p).StartsWith("src-"), "nothing is written");
        }
    }

    [Fact]
    public void MissingScaleIsRefused() =>
        AssertRefused(BadCopy(t => t.Name == "layers.3.ffn.shared_experts.w2.scale" ? null : t),
            "model.safetensors", "'layers.3.ffn.shared_experts.w2.weight' has no 'layers.3.ffn.shared_experts.w2.scale'");

    [Fact]
    public void ScaleOfWrongShapeIsRefused() =>
        AssertRefused(BadCopy(t => t.Name == "layers.0.ffn.experts.6.w2.scale" ? t with { Shape = [128, 8] } : t),
            "model.safetensors", "'layers.0.ffn.experts.6.w2.scale' is F8_E8M0 [128, 8], expected F8_E8M0 [256, 4]");

    [Fact]
    public void ScaleOfWrongDTypeIsRefused() =>
        AssertRefused(BadCopy(t => t.Name == "layers.1.attn.wo_a.scale" ? t with { DType = DType.I8 } : t),
            "model.safetensors", "'layers.1.attn.wo_a.scale' is I8 [1, 1]");

    [Fact]
    public void Fp4WithOddKIsRefused() =>
        AssertRefused(BadCopy(t => t.Name == "layers.1.ffn.experts.2.w3.weight" ? t with { Shape = [128, 127], Bytes = new byte[128 * 127] } : t),
            "model.safetensors", "FP4 weight 'layers.1.ffn.experts.2.w3.weight' is I8 [128, 127]: 254 values a row is not whole 1x32 scale groups");

    [Fact]
    public void UnknownCompressRatioIsRefused() =>
        AssertRefused(BadCopy(config: c => c["compress_ratios"]![2] = 64), "config.json", "'compress_ratios[2]' is 64: not a known compress ratio");

    // ---- llama.cpp ----

    /// <summary>llama.cpp (node-llama-cpp 3.22.1, v0.5.0) loads every deepseek4 file the exporter writes: its loader
    /// checks the architecture, keys and every tensor's name, type and shape. Evaluating them is another matter: its
    /// graph forces a Hadamard rotation of at least 64 x 64 on the lightning indexer's keys, so an index_head_dim of 32
    /// (the tiny references') fails at context creation (ggml_reshape_2d's element-count assert in
    /// llama_mul_mat_hadamard), for llama.cpp's own converter output as for ours.</summary>
    [Fact]
    public void LlamaCppLoadsEveryDeepseek4File()
    {
        string interop = Path.Combine(TestData.Root, "tests", "interop");
        Directory.Exists(Path.Combine(interop, "node_modules", "node-llama-cpp"))
            .Should().BeTrue("tests/interop needs its packages: run `npm ci` there (.ci/run does)");
        foreach (var type in new[] { "f32", "mxfp4_moe", "q8_0", "q4_k_m", "bf16" })
        {
            var gguf = _tmp[$"{type}.gguf"];
            var r = Cli.Run("export", "gguf", TestData.Model("tiny-dsv4-hc4-fp8"), "-o", gguf, "--type", type, "-q");
            r.ExitCode.Should().Be(0, r.ToString());
            var psi = new ProcessStartInfo("node", [Path.Combine(interop, "load.mjs"), gguf])
            {
                WorkingDirectory = interop, RedirectStandardError = true, RedirectStandardOutput = true,
            };
            using var p = Process.Start(psi)!;
            string err = p.StandardError.ReadToEnd(), output = p.StandardOutput.ReadToEnd();
            p.WaitForExit(120_000).Should().BeTrue();
            p.ExitCode.Should().Be(0, $"{type}: {err}");
            using var doc = JsonDocument.Parse(output.Trim());
            doc.RootElement.GetProperty("architecture").GetString().Should().Be("deepseek4", type);
        }
    }
}
