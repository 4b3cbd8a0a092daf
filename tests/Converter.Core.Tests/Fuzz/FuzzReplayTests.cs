using Converter.Fuzz;

namespace Converter.Tests.Fuzz;

/// <summary>
/// The CI step of the fuzzing (tools/fuzz.sh): every seed in tests/Converter.Fuzz/corpus and every input AFL++ found
/// (tests/Converter.Fuzz/regressions) goes through its parser target in process. Only the documented bad-input
/// exceptions may escape (the CLI's exit 2: InvalidDataException, NotSupportedException, FileNotFoundException), never
/// IndexOutOfRange, Overflow, OutOfMemory, NullReference or the like, and no input may take more than 10 s.
/// </summary>
public class FuzzReplayTests : IDisposable
{
    private static readonly TimeSpan PerInput = TimeSpan.FromSeconds(10);
    private readonly TestData.TempDir _tmp = new();

    public void Dispose() => _tmp.Dispose();

    public static TheoryData<string> Targets() => new(FuzzTargets.Names);

    private static string FuzzDir(params string[] parts) => Path.Combine([TestData.Root, "tests", "Converter.Fuzz", .. parts]);

    private static bool NamesAFile(string message) =>
        new[] { ".safetensors", ".json", ".gguf", ".onnx" }.Any(ext => message.Contains(ext, StringComparison.Ordinal));

    [Theory]
    [MemberData(nameof(Targets))]
    public void CorpusAndRegressionsRaiseOnlyBadInput(string target)
    {
        var corpus = FuzzDir("corpus", target);
        Directory.GetFiles(corpus).Should().NotBeEmpty($"every target has seeds in {corpus}");
        var inputs = Directory.GetFiles(corpus)
            .Concat(Directory.Exists(FuzzDir("regressions", target)) ? Directory.GetFiles(FuzzDir("regressions", target)) : [])
            .Order(StringComparer.Ordinal).ToList();

        using var targets = new FuzzTargets(_tmp["work"]);
        var failures = new List<string>();
        int seedsAccepted = 0;
        foreach (var file in inputs)
        {
            var data = File.ReadAllBytes(file);
            // a thread of its own, so that a hang is reported (and left behind) instead of stalling the suite
            Exception? error = null;
            var thread = new Thread(() =>
            {
                try { targets.Run(target, data); }
                catch (Exception e) { error = e; }
            }, 64 << 20) { IsBackground = true };
            thread.Start();
            if (!thread.Join(PerInput))
            {
                failures.Add($"{Path.GetFileName(file)}: still running after {PerInput.TotalSeconds} s (a hang)");
                break; // the target's files are in use by the hung thread
            }
            bool seed = file.StartsWith(corpus, StringComparison.Ordinal);
            if (error == null) { if (seed) seedsAccepted++; }
            else if (!FuzzTargets.IsBadInput(error)) failures.Add($"{Path.GetFileName(file)}: {error.GetType().Name}: {error.Message}");
            else if (!NamesAFile(error.Message)) failures.Add($"{Path.GetFileName(file)}: the message names no file: {error.Message}");
        }
        failures.Should().BeEmpty();
        // the seeds are valid files: each must parse, or the corpus no longer starts AFL++ from valid inputs
        seedsAccepted.Should().Be(Directory.GetFiles(corpus).Length);
    }
}
