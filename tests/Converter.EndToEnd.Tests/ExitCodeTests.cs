using Converter.Cli;
using Converter.Tests;

namespace Converter.EndToEnd.Tests;

/// <summary>
/// Exit codes through the real executable, per command: 0 success, 1 a failed check (verify, shard --check: the only
/// commands that check), 2 bad input including usage errors (the message, then one line pointing at --help, never the
/// whole help), 3 an internal error (forced with the documented test hook CONVERTER_TEST_FAULT=internal; the stack trace
/// only under -v).
/// </summary>
public sealed class ExitCodeTests : IDisposable
{
    private readonly TestData.TempDir _tmp = new();

    public void Dispose() => _tmp.Dispose();

    private static readonly string Dsv3 = TestData.Model("tiny-dsv3");
    private static readonly string Eval = TestData.Golden("tiny-dsv3", "eval.safetensors");

    /// <summary>Every command's arguments that succeed, for the 0 and 3 cases (out: a fresh path).</summary>
    private string[] Succeeding(string command, string output) => command switch
    {
        "inspect" => ["inspect", Dsv3],
        "quantize" => ["quantize", Dsv3, "-o", output, "--scheme", "fp8-block", "-q"],
        "calibrate" => ["calibrate", Dsv3, "--tokens", TestData.Golden("tiny-dsv3", "calib.safetensors"), "-o", output, "--no-hessians", "--no-comm-report", "-q"],
        "export onnx" => ["export", "onnx", Dsv3, "-o", output, "-q"],
        "export gguf" => ["export", "gguf", Dsv3, "-o", output + ".gguf", "--type", "f16", "-q"],
        "golden" => ["golden", Dsv3, "--tokens", Eval, "--max-sequences", "1", "-o", output + ".safetensors", "-q"],
        "shard" => ["shard", Dsv3, "-o", output, "--ranks", "2", "-q"],
        _ => throw new ArgumentException(command),
    };

    public static TheoryData<string> Commands => new() { "inspect", "quantize", "calibrate", "export onnx", "export gguf", "golden", "shard" };

    [Theory]
    [MemberData(nameof(Commands))]
    public void SuccessIsZeroAndAnInternalErrorIsThree(string command)
    {
        var ok = Converter.Tests.Cli.Run(Succeeding(command, _tmp[command.Replace(' ', '-')]));
        ok.ExitCode.Should().Be(CommandRunner.Ok, ok.ToString());
        var fault = RunWithFault(Succeeding(command, _tmp[command.Replace(' ', '-') + "-fault"]));
        fault.ExitCode.Should().Be(CommandRunner.InternalError, fault.ToString());
        fault.StdErr.Should().Contain("internal error").And.Contain("-v").And.NotContain("   at ");
        var verbose = RunWithFault([.. Succeeding(command, _tmp[command.Replace(' ', '-') + "-fault-v"]), "-v"]);
        verbose.ExitCode.Should().Be(CommandRunner.InternalError);
        verbose.StdErr.Should().Contain("   at ", "-v prints the stack trace");
    }

    /// <summary>A usage error per command: exit 2, the message, one line pointing at that command's --help, no help text.</summary>
    [Theory]
    [InlineData("inspect")]
    [InlineData("quantize", "--scheme", "nope")]
    [InlineData("calibrate", "golden/models/tiny-dsv3")]
    [InlineData("export", "onnx", "--bogus")]
    [InlineData("export", "gguf", "golden/models/tiny-dsv3", "-o", "x.gguf", "--type", "q1")]
    [InlineData("golden", "golden/models/tiny-dsv3", "--tokens")]
    [InlineData("verify", "x.onnx", "--golden")]
    [InlineData("shard", "--ranks", "two")]
    [InlineData("export")]
    [InlineData("frobnicate")]
    public void UsageErrorsAreTwoWithAPointerToHelp(params string[] args)
    {
        var r = Converter.Tests.Cli.Run(args);
        r.ExitCode.Should().Be(CommandRunner.BadInput, r.ToString());
        r.StdOut.Should().BeEmpty();
        r.StdErr.Should().StartWith("error: ").And.Contain("--help' for usage").And.NotContain("Usage:").And.NotContain("Options:");
        r.StdErr.TrimEnd().Split('\n').Last().Should().StartWith("see 'converter");
    }

    /// <summary>Bad input per command (a missing model folder): exit 2, one line naming it.</summary>
    [Theory]
    [MemberData(nameof(Commands))]
    public void BadInputIsTwo(string command)
    {
        string missing = _tmp["no-such-model"];
        var args = Succeeding(command, _tmp[command.Replace(' ', '-')]).Select(a => a == Dsv3 ? missing : a).ToArray();
        var r = Converter.Tests.Cli.Run(args);
        r.ExitCode.Should().Be(CommandRunner.BadInput, r.ToString());
        r.StdErr.Should().Contain("no-such-model").And.NotContain("   at ");
    }

    [Fact]
    public void VerifyPinsZeroOneTwoThree()
    {
        string onnx = _tmp["onnx"];
        Converter.Tests.Cli.Run("export", "onnx", Dsv3, "-o", onnx, "-q").ExitCode.Should().Be(0);
        Converter.Tests.Cli.Run("verify", onnx, "--golden", Eval).ExitCode.Should().Be(0);
        var failed = Converter.Tests.Cli.Run("verify", onnx, "--golden", Eval, "--kl-mean", "0");
        failed.ExitCode.Should().Be(1, failed.ToString());
        failed.StdOut.Should().Contain("FAIL: kl_mean").And.EndWith("FAILED\n");
        var otherModel = Converter.Tests.Cli.Run("verify", onnx, "--golden", TestData.Golden("tiny-qwen3moe", "eval.safetensors"));
        otherModel.ExitCode.Should().Be(2, otherModel.ToString());
        var usage = Converter.Tests.Cli.Run("verify", onnx, "--golden", Eval, "--reference", Dsv3);
        usage.ExitCode.Should().Be(2);
        usage.StdErr.Should().Contain("exactly one of --golden");
        RunWithFault("verify", onnx, "--golden", Eval).ExitCode.Should().Be(3);
    }

    [Fact]
    public void HelpIsZeroAndStatesTheExitCodes()
    {
        foreach (var args in new[] { new[] { "--help" }, ["verify", "--help"], ["golden", "--help"], ["export", "gguf", "--help"] })
        {
            var r = Converter.Tests.Cli.Run(args);
            r.ExitCode.Should().Be(0, r.ToString());
            r.StdOut.Should().Contain("Exit codes: 0 success, 1 a failed check, 2 bad input").And.Contain("3 internal error");
        }
    }

    private static Converter.Tests.Cli.Result RunWithFault(params string[] args)
    {
        var psi = new System.Diagnostics.ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "converter.dll"));
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.Environment[CommandRunner.FaultInjectionVariable] = "internal";
        using var p = System.Diagnostics.Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        p.WaitForExit(120_000).Should().BeTrue();
        return new Converter.Tests.Cli.Result(p.ExitCode, stdout.Result, stderr.Result);
    }
}
