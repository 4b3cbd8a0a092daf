using System.Text.Json;
using Converter.Formats.Gguf;
using Converter.Numerics.Ggml;
using Converter.Runtime;
using Converter.Tests;
using Converter.Verification;
using Xunit.Abstractions;

namespace Converter.EndToEnd.Tests;

/// <summary>
/// <c>converter export gguf</c> then <c>converter verify</c> through llama.cpp itself (node-llama-cpp in tests/interop,
/// installed by <c>npm ci</c>; .ci/run does it) against the transformers goldens of tiny-dsv3 and tiny-dsv3-fp8.
/// Each file is exported once per run (the fixture) and verified once.
/// </summary>
public sealed class GgufVerifyTests(GgufVerifyTests.Exports exports, ITestOutputHelper output) : IClassFixture<GgufVerifyTests.Exports>
{
    /// <summary>Exports on first use, shared by the class's tests; deleted at the end.</summary>
    public sealed class Exports : IDisposable
    {
        private readonly TestData.TempDir _dir = new();
        private readonly Dictionary<string, string> _files = new();

        public string Get(string model, string type)
        {
            lock (_files)
            {
                string key = $"{model}-{type}";
                if (_files.TryGetValue(key, out var path)) return path;
                path = _dir[key + ".gguf"];
                var r = Converter.Tests.Cli.Run("export", "gguf", TestData.Model(model), "-o", path, "--type", type);
                r.ExitCode.Should().Be(0, r.ToString());
                Log[key] = r.StdOut + r.StdErr;
                return _files[key] = path;
            }
        }

        public Dictionary<string, string> Log { get; } = new();

        public string Temp(string name) => _dir[name];

        public void Dispose() => _dir.Dispose();
    }

    private sealed record Report(int ExitCode, string Preset, double MaxAbs, double Top1, double KlMean, double PplRatio, bool RoutingNull, string Artifact);

    private Report Verify(string model, string type, params string[] extra)
    {
        string gguf = exports.Get(model, type);
        var r = Converter.Tests.Cli.Run(["verify", gguf, "--golden", TestData.Golden(model, "eval.safetensors"), "--json", .. extra]);
        r.ExitCode.Should().BeOneOf([0, 1], r.ToString());
        using var doc = JsonDocument.Parse(r.StdOut);
        var e = doc.RootElement;
        var report = new Report(r.ExitCode, e.GetProperty("preset").GetString()!, e.GetProperty("max_abs_logit_diff").GetDouble(),
            e.GetProperty("top1_agreement").GetDouble(), e.GetProperty("kl_mean").GetDouble(), e.GetProperty("ppl_ratio").GetDouble(),
            e.GetProperty("routing_agreement").ValueKind == JsonValueKind.Null, e.GetProperty("artifact").GetString()!);
        long bytes = new FileInfo(gguf).Length;
        output.WriteLine($"{model} {type}: preset {report.Preset}, max_abs {report.MaxAbs:G3}, top1 {report.Top1:G4}, kl_mean {report.KlMean:G3}, " +
                         $"ppl_ratio {report.PplRatio:G5}, {bytes} bytes; {report.Artifact}");
        report.RoutingNull.Should().BeTrue("llama.cpp does not expose routing");
        return report;
    }

    [Theory]
    [InlineData("tiny-dsv3")]
    [InlineData("tiny-dsv3-fp8")]
    public void F32MatchesTheGoldenThroughLlamaCpp(string model)
    {
        var r = Verify(model, "f32");
        r.Preset.Should().Be("gguf-f32");
        r.ExitCode.Should().Be(0);
        r.MaxAbs.Should().BeLessThanOrEqualTo(1e-3);
        r.Top1.Should().Be(1);
    }

    [Theory]
    [InlineData("tiny-dsv3", "bf16")]
    [InlineData("tiny-dsv3", "f16")]
    [InlineData("tiny-dsv3-fp8", "bf16")]
    [InlineData("tiny-dsv3-fp8", "f16")]
    public void HalfPrecisionStaysWithinKl1e3(string model, string type)
    {
        var r = Verify(model, type);
        r.Preset.Should().Be(type);
        r.ExitCode.Should().Be(0);
        r.KlMean.Should().BeLessThanOrEqualTo(1e-3);
    }

    [Theory]
    [InlineData("tiny-dsv3")]
    [InlineData("tiny-dsv3-fp8")]
    public void Q8_0StaysWithinKl5e3(string model)
    {
        var r = Verify(model, "q8_0");
        r.Preset.Should().Be("q8_0");
        r.ExitCode.Should().Be(0);
        r.KlMean.Should().BeLessThanOrEqualTo(5e-3);
    }

    /// <summary>Four-bit files are judged by their own presets (chosen from general.file_type), whose limits come from
    /// these measurements with margin; the bounds here also catch a broken file (a wrong block layout gives kl in the
    /// units, top-1 near chance).</summary>
    [Theory]
    [InlineData("tiny-dsv3", "q4_0", "q4_0")]
    [InlineData("tiny-dsv3", "q4_k", "q4_k")]
    [InlineData("tiny-dsv3", "q4_k_m", "q4_k_m")]
    [InlineData("tiny-dsv3", "q5_k", "q5_k")]
    [InlineData("tiny-dsv3", "q6_k", "q6_k")]
    [InlineData("tiny-dsv3-fp8", "q4_k", "q4_k")]
    public void FourToSixBitPassTheirPresets(string model, string type, string preset)
    {
        var r = Verify(model, type);
        r.Preset.Should().Be(preset);
        r.ExitCode.Should().Be(0, "within the preset's limits");
        r.KlMean.Should().BeLessThan(0.05);
        r.Top1.Should().BeGreaterThan(0.85);
    }

    /// <summary>A Q4_K_M file checked against another model's golden: refused (the golden's hidden states have another
    /// width), and with the shape check bypassed by a golden without hidden states, failed by the preset's limits.</summary>
    [Fact]
    public void Q4_K_MAgainstAnotherModelsGoldenFails()
    {
        string gguf = exports.Get("tiny-dsv3", "q4_k_m");
        var refused = Converter.Tests.Cli.Run("verify", gguf, "--golden", TestData.Golden("tiny-qwen3moe", "eval.safetensors"));
        refused.ExitCode.Should().Be(2, refused.ToString());
        refused.StdErr.Should().Contain("belongs to another model");
        // The same other-model logits and tokens, without hidden states or routing: nothing to refuse it on, so it runs and fails.
        var other = GoldenSet.Load(TestData.Golden("tiny-qwen3moe", "eval.safetensors"));
        string bare = exports.Temp("qwen-bare.safetensors");
        using (var w = new GoldenWriter(bare, other.Tokens, other.Batch, other.Seq, other.Vocab, new GoldenLogitsForm(true), GoldenIdentity.Unknown, 0, 0, 0, 0, true))
        {
            w.AddLogits(0, other.Batch, other.Logits);
            w.Commit();
        }
        var failed = Converter.Tests.Cli.Run("verify", gguf, "--golden", bare, "--json");
        failed.ExitCode.Should().Be(1, failed.ToString());
        using var doc = JsonDocument.Parse(failed.StdOut);
        doc.RootElement.GetProperty("status").GetString().Should().Be("failed");
        doc.RootElement.GetProperty("failures").EnumerateArray().Select(f => f.GetString()).Should().Contain("kl_mean");
        output.WriteLine($"q4_k_m vs tiny-qwen3moe's logits: kl_mean {doc.RootElement.GetProperty("kl_mean").GetDouble():G3}, " +
                         $"top1 {doc.RootElement.GetProperty("top1_agreement").GetDouble():G3}");
    }

    /// <summary>verify --reference computes the golden from the checkpoint on the fly: the same figures as the transformers golden.</summary>
    [Fact]
    public void ReferenceFromTheCheckpointMatchesTheGolden()
    {
        string gguf = exports.Get("tiny-dsv3", "q4_k_m");
        var g = Converter.Tests.Cli.Run("verify", gguf, "--golden", TestData.Golden("tiny-dsv3", "eval.safetensors"), "--json");
        var r = Converter.Tests.Cli.Run("verify", gguf, "--reference", TestData.Model("tiny-dsv3"), "--tokens", TestData.Golden("tiny-dsv3", "eval.safetensors"), "--json");
        g.ExitCode.Should().Be(0, g.ToString());
        r.ExitCode.Should().Be(0, r.ToString());
        double klG = JsonDocument.Parse(g.StdOut).RootElement.GetProperty("kl_mean").GetDouble();
        double klR = JsonDocument.Parse(r.StdOut).RootElement.GetProperty("kl_mean").GetDouble();
        output.WriteLine($"q4_k_m kl_mean: --golden {klG:E4}, --reference {klR:E4} ({(klR / klG - 1):P3})");
        Math.Abs(klR / klG - 1).Should().BeLessThan(0.02);
        r.StdErr.Should().Contain("computing the reference");
    }

    /// <summary>A type nothing here measures is REPORTED, never PASSED: a preset without limits.</summary>
    [Fact]
    public void ReportPresetPrintsReported()
    {
        var r = Converter.Tests.Cli.Run("verify", exports.Get("tiny-dsv3", "q8_0"), "--golden", TestData.Golden("tiny-dsv3", "eval.safetensors"), "--format-preset", "report");
        r.ExitCode.Should().Be(0, r.ToString());
        r.StdOut.Should().Contain("REPORTED").And.NotContain("PASSED");
    }

    [Fact]
    public void KvCacheF16ReportsLlamaCppDefaults()
    {
        var r = Verify("tiny-dsv3", "f32", "--kv-cache", "f16");
        r.Artifact.Should().Contain("F16 KV cache");
        r.Top1.Should().BeGreaterThan(0.9);
    }

    [Fact]
    public void Q4_K_MKeepsOutputAtQ6_KAndWritesItsFileType()
    {
        using var reader = GgufReader.Open(exports.Get("tiny-dsv3", "q4_k_m"));
        reader["general.file_type"].AsUInt32().Should().Be(15); // LLAMA_FTYPE_MOSTLY_Q4_K_M
        reader.GetTensor("output.weight").Type.Should().Be(GgmlType.Q6_K);
        reader.GetTensor("token_embd.weight").Type.Should().Be(GgmlType.Q4_K);
        // layer 3 of 4 gets Q6_K (use_more_bits); its 128-wide rows are not whole 256-blocks: Q8_0, as llama.cpp
        reader.GetTensor("blk.3.ffn_down_exps.weight").Type.Should().Be(GgmlType.Q8_0);
        reader.GetTensor("blk.1.ffn_down_exps.weight").Type.Should().Be(GgmlType.Q5_0); // Q4_K asked: llama.cpp's fallback
        reader.GetTensor("blk.0.ffn_down.weight").Type.Should().Be(GgmlType.Q4_K); // layer 0 of 4 gets no extra bits
        reader.GetTensor("blk.1.ffn_gate_inp.weight").Type.Should().Be(GgmlType.F32);
    }

    /// <summary>general.file_type as llama.h numbers enum llama_ftype.</summary>
    [Theory]
    [InlineData("f32", 0u)]
    [InlineData("f16", 1u)]
    [InlineData("bf16", 32u)]
    [InlineData("q8_0", 7u)]
    [InlineData("q4_0", 2u)]
    [InlineData("q4_k", 14u)] // LLAMA_FTYPE_MOSTLY_Q4_K_S: what llama-quantize --pure calls an all-Q4_K file
    [InlineData("q4_k_m", 15u)]
    public void FileTypeKeyMatchesTheType(string type, uint fileType)
    {
        using var reader = GgufReader.Open(exports.Get("tiny-dsv3", type));
        reader["general.file_type"].AsUInt32().Should().Be(fileType);
    }

    [Fact]
    public void MtpLayerIsLeftOutWithALogLine()
    {
        string path = exports.Get("tiny-dsv3", "f32");
        exports.Log["tiny-dsv3-f32"].Should().Contain("left out").And.Contain("MTP");
        using var reader = GgufReader.Open(path);
        reader.Tensors.Should().NotContain(t => t.Name.StartsWith("blk.4.", StringComparison.Ordinal));
        reader["deepseek2.block_count"].AsUInt32().Should().Be(4);
    }

    [Fact]
    public void MissingNodeSaysWhatToInstall()
    {
        // converter runs from the dotnet host's own folder as PATH, which holds no node
        string dotnet = Path.GetFullPath(Environment.ProcessPath!);
        if (!Path.GetFileNameWithoutExtension(dotnet).Equals("dotnet", StringComparison.OrdinalIgnoreCase))
            dotnet = new FileInfo("/usr/bin/dotnet").ResolveLinkTarget(true)?.FullName ?? "/usr/bin/dotnet";
        string hostDir = Path.GetDirectoryName(dotnet)!;
        File.Exists(Path.Combine(hostDir, "node")).Should().BeFalse("the test needs a PATH without node");
        var psi = new System.Diagnostics.ProcessStartInfo(dotnet)
        {
            RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false,
        };
        foreach (var a in new[] { Path.Combine(AppContext.BaseDirectory, "converter.dll"), "verify", exports.Get("tiny-dsv3", "f32"),
                     "--golden", TestData.Golden("tiny-dsv3", "eval.safetensors") })
            psi.ArgumentList.Add(a);
        psi.Environment["PATH"] = hostDir;
        using var p = System.Diagnostics.Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        string stderr = p.StandardError.ReadToEnd();
        p.WaitForExit(120_000).Should().BeTrue();
        p.ExitCode.Should().Be(2, stderr + stdout.Result);
        stderr.Should().Contain("Node.js 20+").And.Contain("cd tests/interop && npm ci");
    }

    [Fact]
    public void MissingNodePackageSaysWhatToInstall()
    {
        string interop = exports.Temp("bare-interop");
        Directory.CreateDirectory(interop);
        File.Copy(Path.Combine(TestData.Root, "tests", "interop", GgufArtifactRunner.Script), Path.Combine(interop, GgufArtifactRunner.Script));
        var r = Converter.Tests.Cli.Run("verify", exports.Get("tiny-dsv3", "f32"), "--golden", TestData.Golden("tiny-dsv3", "eval.safetensors"),
            "--interop-dir", interop);
        r.ExitCode.Should().Be(2, r.ToString());
        r.StdErr.Should().Contain("npm ci").And.Contain("Node.js 20+");
    }
}
