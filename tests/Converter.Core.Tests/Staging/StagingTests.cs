using Converter.Models;
using Converter.Numerics.Ggml;
using Converter.Pipelines;
using Converter.Staging;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace Converter.Tests.Staging;

/// <summary>Cancellation, leftovers of killed runs, errors of the system and the staging folder (tiny-dsv3, small shards).</summary>
public class StagingTests
{
    private static readonly string Model = TestData.Model("tiny-dsv3");
    private const long Shard = 1_000_000; // tiny-dsv3 fp8 in 9 shards: several resume points

    private static QuantizeResult Quantize(string output, TestFault? fault = null, bool resume = false, CancellationToken ct = default)
    {
        using var src = ModelCheckpoint.Open(Model);
        return QuantizePipeline.Run(src, new QuantizeOptions(QuantizeScheme.Fp8Block, output, Shard) { Fault = fault, Resume = resume }, NullLogger.Instance, null, ct);
    }

    private static string[] Entries(string dir) => Directory.GetFileSystemEntries(dir).Select(Path.GetFileName).Order().ToArray()!;

    [Fact]
    public void CancellationStopsBetweenTensorsAndRemovesEverythingStaged()
    {
        using var tmp = new TestData.TempDir();
        var act = () => Quantize(tmp["out"], new TestFault(TestFaultKind.Cancel, 30));
        act.Should().Throw<OperationCanceledException>();
        Entries(tmp.Path).Should().BeEmpty("a cancelled run leaves neither its output nor its staging folder");
        using var cts = new CancellationTokenSource();
        cts.Cancel();
        ((Action)(() => Quantize(tmp["out"], ct: cts.Token))).Should().Throw<OperationCanceledException>();
        Entries(tmp.Path).Should().BeEmpty();
    }

    [Fact]
    public void AnErrorMidRunRemovesWhatWasStaged()
    {
        using var tmp = new TestData.TempDir();
        ((Action)(() => Quantize(tmp["out"], new TestFault(TestFaultKind.Throw, 100)))).Should().Throw<InvalidOperationException>();
        Entries(tmp.Path).Should().BeEmpty();
    }

    [Fact]
    public void DiskFullSaysSoNamesTheMountAndRemovesWhatWasStaged()
    {
        using var tmp = new TestData.TempDir();
        var act = () => Quantize(tmp["out"], new TestFault(TestFaultKind.DiskFull, 50));
        act.Should().Throw<IOException>().Where(e => e.Message.StartsWith($"no space left on device on {OsErrors.MountOf(tmp.Path)}")
                                                      && e.Message.Contains("needs about") && e.HResult == OsErrors.ENOSPC);
        Entries(tmp.Path).Should().BeEmpty();
    }

    [Fact]
    public void AnExistingOutputFailsBeforeAnyWork()
    {
        using var tmp = new TestData.TempDir();
        Directory.CreateDirectory(tmp["out"]);
        File.WriteAllText(Path.Combine(tmp["out"], "x"), "x");
        ((Action)(() => Quantize(tmp["out"]))).Should().Throw<IOException>().WithMessage("*already exists*--overwrite*");
        File.WriteAllText(tmp["f.gguf"], "x");
        using var src = ModelCheckpoint.Open(Model);
        ((Action)(() => GgufExportPipeline.Run(src, new GgufExportOptions(tmp["f.gguf"]), NullLogger.Instance)))
            .Should().Throw<IOException>().WithMessage("*already exists*--overwrite*");
        Entries(tmp.Path).Should().Equal("f.gguf", "out");
    }

    [Fact]
    public void LeftoversOfDeadOrUnlockedRunsAreRemovedWithTheSpaceFreedAndLiveOnesKept()
    {
        using var tmp = new TestData.TempDir();
        const int deadPid = int.MaxValue - 1; // above any pid_max
        var dead = tmp[$".out{StagingNames.Marker}{deadPid}-0123"];
        Directory.CreateDirectory(dead);
        File.WriteAllBytes(Path.Combine(dead, "model.safetensors"), new byte[3_000_000]);
        File.WriteAllBytes(tmp[$".out.tmp-{deadPid}"], new byte[1000]); // an older version's name
        var unlocked = tmp[$".out{StagingNames.Marker}{Environment.ProcessId}-4567"]; // this pid, its lock free: a simulated kill
        Directory.CreateDirectory(unlocked);
        File.WriteAllText(Path.Combine(unlocked, StagingArea.LockName), $"{Environment.ProcessId}\n");
        using var live = StagingArea.Begin(tmp["out"], new StagingOptions("test"), NullLogger.Instance); // holds its lock
        var log = new ListLogger();
        Quantize(tmp["out2"]); // another destination: its run leaves out's entries alone
        Leftovers.Find(tmp["out"]).Select(l => l.Path).Should().BeEmpty("the live run removed them when it began");
        Directory.Exists(live.Root).Should().BeTrue();

        Directory.CreateDirectory(dead);
        File.WriteAllBytes(Path.Combine(dead, "model.safetensors"), new byte[3_000_000]);
        live.Dispose();
        Directory.Exists(live.Root).Should().BeFalse();
        using (var src = ModelCheckpoint.Open(Model))
            QuantizePipeline.Run(src, new QuantizeOptions(QuantizeScheme.Fp8Block, tmp["out"], Shard), log);
        log.Lines.Should().Contain(l => l.Contains($"removed {dead}, left by an interrupted run (pid {deadPid}): 3.0 MB freed"));
        Entries(tmp.Path).Should().Equal("out", "out2");
    }

    [Theory]
    [InlineData(1)]
    [InlineData(37)]
    [InlineData(150)]
    [InlineData(268)]
    public void QuantizeResumedAfterAKillIsByteIdentical(int killAfter)
    {
        using var tmp = new TestData.TempDir();
        Quantize(tmp["whole"]);
        ((Action)(() => Quantize(tmp["out"], new TestFault(TestFaultKind.Abandon, killAfter)))).Should().Throw<SimulatedKillException>();
        Leftovers.Find(tmp["out"]).Should().ContainSingle("the simulated kill leaves its staging folder");
        Quantize(tmp["out"], resume: true);
        AssertSameFolders(tmp["whole"], tmp["out"]);
        Entries(tmp.Path).Should().Equal("out", "whole");
        ArtifactManifest.Check(tmp["out"]).Ok.Should().BeTrue();
    }

    [Theory]
    [InlineData(3)]
    [InlineData(41)]
    public void GgufResumedAfterAKillIsByteIdentical(int killAfter)
    {
        using var tmp = new TestData.TempDir();
        using var src = ModelCheckpoint.Open(Model);
        GgufExportPipeline.Run(src, new GgufExportOptions(tmp["whole.gguf"], GgmlType.Q4_K), NullLogger.Instance);
        var kill = () => GgufExportPipeline.Run(src, new GgufExportOptions(tmp["out.gguf"], GgmlType.Q4_K) { Fault = new TestFault(TestFaultKind.Abandon, killAfter) }, NullLogger.Instance);
        kill.Should().Throw<SimulatedKillException>();
        var log = new ListLogger();
        GgufExportPipeline.Run(src, new GgufExportOptions(tmp["out.gguf"], GgmlType.Q4_K) { Resume = true }, log);
        log.Lines.Should().Contain($"resume: {killAfter} of 70 tensors kept");
        File.ReadAllBytes(tmp["out.gguf"]).SequenceEqual(File.ReadAllBytes(tmp["whole.gguf"])).Should().BeTrue();
        Entries(tmp.Path).Should().Equal("out.gguf", "out.gguf.manifest.json", "whole.gguf", "whole.gguf.manifest.json");
    }

    [Fact]
    public void OnnxResumedAfterAKillIsByteIdentical()
    {
        using var tmp = new TestData.TempDir();
        using var src = ModelCheckpoint.Open(Model);
        OnnxExportPipeline.Run(src, tmp["whole"], new OnnxExportOptions());
        var kill = () => OnnxExportPipeline.Run(src, tmp["out"], new OnnxExportOptions { Fault = new TestFault(TestFaultKind.Abandon, 25) });
        kill.Should().Throw<SimulatedKillException>();
        var log = new ListLogger();
        OnnxExportPipeline.Run(src, tmp["out"], new OnnxExportOptions { Resume = true }, log);
        log.Lines.Should().Contain(l => l.StartsWith("resume: 25 of "));
        AssertSameFolders(tmp["whole"], tmp["out"]);
    }

    [Fact]
    public void ResumeIsRefusedWhenTheOptionsChangedAndStartsOverWhenThereIsNothingToResume()
    {
        using var tmp = new TestData.TempDir();
        ((Action)(() => Quantize(tmp["out"], new TestFault(TestFaultKind.Abandon, 20)))).Should().Throw<SimulatedKillException>();
        using (var src = ModelCheckpoint.Open(Model))
        {
            var other = () => QuantizePipeline.Run(src, new QuantizeOptions(QuantizeScheme.Fp8Block, tmp["out"], 2 * Shard) { Resume = true }, NullLogger.Instance);
            other.Should().Throw<ArgumentException>().WithMessage("*cannot resume*other inputs or options*");
        }
        Leftovers.Find(tmp["out"]).Should().ContainSingle("a refused resume keeps what it could resume later");
        var log = new ListLogger();
        using (var src = ModelCheckpoint.Open(Model))
            QuantizePipeline.Run(src, new QuantizeOptions(QuantizeScheme.Fp8Block, tmp["fresh"], Shard) { Resume = true }, log);
        log.Lines.Should().Contain(l => l.StartsWith("nothing to resume for"));
    }

    [Fact]
    public void CheckFindsChangedMissingAndUnlistedFilesAndRefusesABadManifest()
    {
        using var tmp = new TestData.TempDir();
        Quantize(tmp["out"]);
        var r = ArtifactManifest.Check(tmp["out"]);
        r.Ok.Should().BeTrue();
        r.Files.Should().Be(11, "9 shards, their index and config.json");
        var shard = Path.Combine(tmp["out"], "model-00002-of-00009.safetensors");
        using (var fs = new FileStream(shard, FileMode.Open)) { fs.Position = 5000; int b = fs.ReadByte(); fs.Position = 5000; fs.WriteByte((byte)(b ^ 1)); }
        File.Delete(Path.Combine(tmp["out"], "config.json"));
        File.WriteAllText(Path.Combine(tmp["out"], "extra.txt"), "x");
        var problems = ArtifactManifest.Check(tmp["out"]).Problems;
        problems.Should().HaveCount(3);
        problems.Should().Contain("config.json: missing").And.Contain("extra.txt: not in the manifest")
            .And.Contain(p => p.StartsWith("model-00002-of-00009.safetensors: content differs"));
        File.WriteAllText(Path.Combine(tmp["out"], ArtifactManifest.FileName), "{\"manifest_version\": 1, \"hash\": \"xxh3-64\", \"files\": [{\"path\": \"../x\", \"size\": 1, \"hash\": \"0000000000000000\"}]}");
        ((Action)(() => ArtifactManifest.Check(tmp["out"]))).Should().Throw<InvalidDataException>().WithMessage("*leaves the artifact folder*");
        File.Delete(Path.Combine(tmp["out"], ArtifactManifest.FileName));
        ((Action)(() => ArtifactManifest.Check(tmp["out"]))).Should().Throw<FileNotFoundException>().WithMessage("*no manifest*");
    }

    /// <summary>A real full disk: a tmpfs just too small for the output (needs root; elsewhere the injected fault above covers it).</summary>
    [Fact]
    public void ARealFullDiskIsReportedInWordsWithNothingLeft()
    {
        using var tmp = new TestData.TempDir();
        Quantize(tmp["ref"]);
        long total = Directory.GetFiles(tmp["ref"]).Sum(f => new FileInfo(f).Length);
        var mnt = tmp["mnt"];
        Directory.CreateDirectory(mnt);
        if (!Mount(mnt, 256 * 1024)) return; // not root: DiskFullSaysSo... tests the same path through the fault hook
        try
        {
            var early = () => Quantize(Path.Combine(mnt, "out"));
            early.Should().Throw<IOException>().WithMessage($"no space left on device on {mnt}: needs about * more (the output takes about *");
            Entries(mnt).Should().BeEmpty();
            Umount(mnt);
            // room for the tensors (the plan) but not for headers, index, config and manifest: the kernel's ENOSPC mid-run
            long plan = total - Directory.GetFiles(tmp["ref"], "*.safetensors").Sum(HeaderBytes) - 40_000;
            Mount(mnt, (plan + 8192) / 4096 * 4096).Should().BeTrue();
            var late = () => Quantize(Path.Combine(mnt, "out"));
            late.Should().Throw<IOException>().WithMessage($"no space left on device on {mnt}*");
            Entries(mnt).Should().BeEmpty("staging is removed on a full disk");
        }
        finally { Umount(mnt); }
    }

    private static long HeaderBytes(string file)
    {
        using var fs = File.OpenRead(file);
        var b = new byte[8];
        fs.ReadExactly(b);
        return 8 + BitConverter.ToInt64(b);
    }

    private static bool Mount(string dir, long bytes) => RunTool("mount", "-t", "tmpfs", "-o", $"size={bytes}", "tmpfs", dir) == 0;
    private static void Umount(string dir) => RunTool("umount", dir);

    private static int RunTool(string tool, params string[] args)
    {
        try
        {
            var psi = new System.Diagnostics.ProcessStartInfo(tool) { RedirectStandardError = true, RedirectStandardOutput = true };
            foreach (var a in args) psi.ArgumentList.Add(a);
            using var p = System.Diagnostics.Process.Start(psi)!;
            p.WaitForExit();
            return p.ExitCode;
        }
        catch (System.ComponentModel.Win32Exception) { return -1; }
    }

    private static void AssertSameFolders(string expected, string actual)
    {
        var files = Directory.GetFiles(expected, "*", SearchOption.AllDirectories).Select(f => Path.GetRelativePath(expected, f)).Order().ToList();
        Directory.GetFiles(actual, "*", SearchOption.AllDirectories).Select(f => Path.GetRelativePath(actual, f)).Order().Should().Equal(files);
        foreach (var f in files)
            File.ReadAllBytes(Path.Combine(actual, f)).SequenceEqual(File.ReadAllBytes(Path.Combine(expected, f))).Should().BeTrue($"{f} should be byte-identical");
    }

    private sealed class ListLogger : ILogger
    {
        public List<string> Lines { get; } = [];
        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;
        public bool IsEnabled(LogLevel logLevel) => true;
        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            lock (Lines) Lines.Add(formatter(state, exception));
        }
    }
}
