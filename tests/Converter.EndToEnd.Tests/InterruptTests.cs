using System.Diagnostics;
using System.Runtime.InteropServices;
using Converter.Cli;
using Converter.Staging;
using Converter.Tools.Synth;

namespace Converter.Tests;

/// <summary>
/// The real executable interrupted as users interrupt it: SIGINT mid-export, kill -9 mid-quantize and the next run,
/// --resume after a kill, a full disk for every command that writes (the enospc test hook), and `converter check`.
/// </summary>
public class InterruptTests : IDisposable
{
    private readonly TestData.TempDir _tmp = new();
    private static readonly string Model = TestData.Model("tiny-dsv3");
    private static readonly string Tokens = TestData.Golden("tiny-dsv3", "eval.safetensors");

    public void Dispose() => _tmp.Dispose();

    private static Dictionary<string, string> Fault(string value) => new() { [CommandRunner.FaultInjectionVariable] = value };

    private string[] Entries() => Directory.GetFileSystemEntries(_tmp.Path).Select(Path.GetFileName).Order().ToArray()!;

    [DllImport("libc", SetLastError = true)]
    private static extern int kill(int pid, int sig);

    [Fact]
    public void SigintDuringAnExportExits130AndLeavesNothing()
    {
        // ~260 MB of BF16 (fp32 export ~520 MB): long enough to be interrupted mid-write
        var src = _tmp["synth"];
        SyntheticCheckpoint.Write(src, new SynthOptions
        {
            Hidden = 1024, Vocab = 32000, Intermediate = 4096, MoeIntermediate = 1024, Heads = 16, QLoraRank = 384, KvLoraRank = 128, Experts = 16,
            ExpertsPerToken = 4, Groups = 4, TopkGroups = 2, Layers = 3,
        });
        var outDir = Path.Combine(_tmp.Path, "dest");
        Directory.CreateDirectory(outDir);
        var dest = Path.Combine(outDir, "onnx");
        using var p = Cli.Start(new Dictionary<string, string>(), "export", "onnx", src, "-o", dest, "-q");
        var stderr = p.StandardError.ReadToEndAsync();
        var clock = Stopwatch.StartNew();
        long staged = 0;
        while (!p.HasExited && clock.Elapsed < TimeSpan.FromMinutes(2))
        {
            var staging = Directory.GetDirectories(outDir, ".onnx" + StagingNames.Marker + "*");
            if (staging.Length == 1 && (staged = Leftovers.SizeOf(staging[0])) > 30_000_000) break;
            Thread.Sleep(20);
        }
        p.HasExited.Should().BeFalse("the export was still writing ({0} bytes staged)", staged);
        kill(p.Id, 2).Should().Be(0);
        p.WaitForExit(60_000).Should().BeTrue();
        p.ExitCode.Should().Be(130, stderr.Result);
        stderr.Result.Should().Contain("interrupted").And.Contain("cancelled");
        Directory.GetFileSystemEntries(outDir).Should().BeEmpty("the destination folder is empty after Ctrl-C");
    }

    [Fact]
    public void AfterKill9DuringQuantizeTheNextRunRemovesTheLeftoverAndLeavesOnlyItsOutput()
    {
        var dest = _tmp["fp8"];
        var killed = Cli.Run(Fault("kill-after:120"), "quantize", Model, "-o", dest, "--scheme", "fp8-block", "--max-shard-size", "1MB", "-q");
        killed.ExitCode.Should().Be(137, "SIGKILL: " + killed);
        Entries().Should().ContainSingle().Which.Should().StartWith(".fp8" + StagingNames.Marker);
        var next = Cli.Run("quantize", Model, "-o", dest, "--scheme", "fp8-block", "--max-shard-size", "1MB");
        next.ExitCode.Should().Be(0, next.ToString());
        (next.StdOut + next.StdErr).Should().MatchRegex(@"removed .*\.fp8\.converter-staging-\d+-[0-9a-f]+, left by an interrupted run \(pid \d+\): [\d.]+ MB freed");
        Entries().Should().Equal("fp8");
        Cli.Run("check", dest).ExitCode.Should().Be(0);
    }

    [Fact]
    public void ResumeAfterARealKillIsByteIdentical()
    {
        var whole = Cli.Run("export", "gguf", Model, "-o", _tmp["whole.gguf"], "--type", "q4_k", "-q");
        whole.ExitCode.Should().Be(0, whole.ToString());
        int killAt = new Random().Next(1, 69);
        Cli.Run(Fault($"kill-after:{killAt}"), "export", "gguf", Model, "-o", _tmp["r.gguf"], "--type", "q4_k", "-q").ExitCode.Should().Be(137);
        var changed = Cli.Run("export", "gguf", Model, "-o", _tmp["r.gguf"], "--type", "q8_0", "--resume", "-q");
        changed.ExitCode.Should().Be(2, changed.ToString());
        changed.StdErr.Should().Contain("cannot resume");
        var resumed = Cli.Run("export", "gguf", Model, "-o", _tmp["r.gguf"], "--type", "q4_k", "--resume");
        resumed.ExitCode.Should().Be(0, resumed.ToString());
        resumed.StdOut.Should().Contain($"resume: {killAt} of 70 tensors kept");
        File.ReadAllBytes(_tmp["r.gguf"]).SequenceEqual(File.ReadAllBytes(_tmp["whole.gguf"])).Should().BeTrue($"killed after {killAt} tensors");
        Entries().Should().Equal("r.gguf", "r.gguf.manifest.json", "whole.gguf", "whole.gguf.manifest.json");
    }

    public static TheoryData<string[]> Writers() => new()
    {
        new[] { "quantize", Model, "-o", "{out}", "--scheme", "fp8-block" },
        new[] { "quantize", Model, "-o", "{out}", "--scheme", "int4" },
        new[] { "export", "onnx", Model, "-o", "{out}" },
        new[] { "export", "gguf", Model, "-o", "{out}", "--type", "q8_0" },
        new[] { "shard", Model, "-o", "{out}", "--ranks", "2" },
        new[] { "calibrate", Model, "--tokens", Tokens, "-o", "{out}", "--no-hessians", "--batch", "2" },
        new[] { "golden", Model, "--tokens", Tokens, "--max-sequences", "4", "--batch", "2", "-o", "{out}" },
    };

    [Theory]
    [MemberData(nameof(Writers))]
    public void DiskFullForEveryCommandExits2SaysSoAndLeavesNothing(string[] args)
    {
        var a = args.Select(x => x == "{out}" ? _tmp["out"] : x).ToArray();
        var r = Cli.Run(Fault("enospc-after:1"), a);
        r.ExitCode.Should().Be(2, r.ToString());
        // one error line (golden logs its progress to stderr as well)
        r.StdErr.Split('\n').Where(l => l.StartsWith("error:")).Should().ContainSingle().Which.Should()
            .StartWith($"error: no space left on device on {OsErrors.MountOf(_tmp.Path)}");
        Entries().Should().BeEmpty("nothing is left behind: " + r);
    }

    [Fact]
    public void CheckExits0OnAMatch1OnAMismatchAnd2WithoutAManifest()
    {
        Cli.Run("export", "gguf", Model, "-o", _tmp["t.gguf"], "--type", "q8_0", "-q").ExitCode.Should().Be(0);
        var ok = Cli.Run("check", _tmp["t.gguf"]);
        ok.ExitCode.Should().Be(0, ok.ToString());
        ok.StdOut.Should().StartWith("ok: 1 file(s)");
        using (var fs = new FileStream(_tmp["t.gguf"], FileMode.Open)) { fs.Position = fs.Length - 10; fs.WriteByte(0x5a); }
        var bad = Cli.Run("check", _tmp["t.gguf"]);
        bad.ExitCode.Should().Be(1, bad.ToString());
        bad.StdErr.Should().Contain("mismatch: t.gguf: content differs");
        File.Delete(_tmp["t.gguf"] + ArtifactManifest.SideSuffix);
        var none = Cli.Run("check", _tmp["t.gguf"]);
        none.ExitCode.Should().Be(2, none.ToString());
        none.StdErr.Should().Contain("no manifest");
        Cli.Run("check", "--help").StdOut.Should().Contain("manifest").And.Contain("Exit codes");
    }
}
