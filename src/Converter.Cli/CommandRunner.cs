using System.CommandLine;
using System.CommandLine.Help;
using System.Runtime.InteropServices;
using Converter.Staging;
using Microsoft.Extensions.Logging;

namespace Converter.Cli;

/// <summary>
/// The exit codes of every command, and the one place that turns failures into them:
/// <list type="bullet">
/// <item>0 <see cref="Ok"/>: the command did what was asked (and every check it makes held);</item>
/// <item>1 <see cref="Failed"/>: a check failed (verify's tolerances, shard --check);</item>
/// <item>2 <see cref="BadInput"/>: bad input: command-line usage (unknown option, missing argument, bad value), corrupt,
/// missing or unsupported files and configs, a golden that belongs to another model, an output that cannot be written
/// (exists, read-only, disk full);</item>
/// <item>3 <see cref="InternalError"/>: a bug: an exception no input should cause (the stack trace under <c>-v</c>);</item>
/// <item>130 <see cref="Cancelled"/>: cancelled (Ctrl+C), as shells report SIGINT.</item>
/// </list>
/// </summary>
public static class CommandRunner
{
    public const int Ok = 0, Failed = 1, BadInput = 2, InternalError = 3, Cancelled = 130;

    /// <summary>
    /// Test hook (documented in the README): when this environment variable is <c>internal</c>, every command throws an
    /// unexpected exception before its body runs, so tests can pin exit code 3 for each command.
    /// </summary>
    public const string FaultInjectionVariable = "CONVERTER_TEST_FAULT";

    /// <summary>What <c>--help</c> of every command says about exit codes.</summary>
    public const string ExitCodesHelp =
        "Exit codes: 0 success, 1 a failed check, 2 bad input (usage, missing/corrupt/unsupported files, another model's golden), " +
        "3 internal error (stack trace with -v), 130 cancelled.";

    /// <summary>The unit fault of <see cref="FaultInjectionVariable"/> (<c>after:N</c>, <c>kill-after:N</c>, <c>enospc-after:N</c>,
    /// <c>cancel-after:N</c>; see <see cref="TestFault"/>), or null.</summary>
    public static TestFault? UnitFault => TestFault.Parse(Environment.GetEnvironmentVariable(FaultInjectionVariable));

    /// <summary>
    /// Runs a command that writes an artifact: Ctrl-C (SIGINT) and SIGTERM cancel the token it is given, so its pipeline
    /// stops at the next tensor, removes what it staged and the command exits 130; a second signal ends the process at
    /// once (the next run to the same output removes what it left).
    /// </summary>
    public static int Run(ParseResult parse, Func<ILoggerFactory, CancellationToken, int> body, bool logToStandardError = false)
    {
        var error = parse.InvocationConfiguration.Error;
        using var cancel = new CancellationTokenSource();
        int signals = 0;
        PosixSignalRegistration? Register(PosixSignal signal)
        {
            try
            {
                return PosixSignalRegistration.Create(signal, context =>
                {
                    if (Interlocked.Increment(ref signals) > 1) return; // the default action: terminate now
                    context.Cancel = true;
                    error.WriteLine($"{(signal == PosixSignal.SIGINT ? "interrupted" : "terminated")}: stopping after the current tensor and removing what was staged (again to stop at once)");
                    cancel.Cancel();
                });
            }
            catch (PlatformNotSupportedException) { return null; }
        }
        using var sigint = Register(PosixSignal.SIGINT);
        using var sigterm = Register(PosixSignal.SIGTERM);
        return Run(parse, loggers => body(loggers, cancel.Token), logToStandardError);
    }

    /// <param name="logToStandardError">Log to stderr: for commands whose stdout is their result (golden prints the file written).</param>
    public static int Run(ParseResult parse, Func<ILoggerFactory, int> body, bool logToStandardError = false)
    {
        var error = parse.InvocationConfiguration.Error;
        using var loggers = GlobalOptions.CreateLoggerFactory(parse, logToStandardError);
        try
        {
            if (Environment.GetEnvironmentVariable(FaultInjectionVariable) == "internal")
                throw new InvalidOperationException($"fault injected by {FaultInjectionVariable}=internal (test hook)");
            return body(loggers);
        }
        catch (Exception e)
        {
            return Report(e, error, parse.GetValue(GlobalOptions.Verbose));
        }
    }

    /// <summary>The exit code an exception stands for (see the class summary).</summary>
    public static int Classify(Exception e) => e switch
    {
        OperationCanceledException => Cancelled,
        // Contract violations inside the code (an index out of range, a null argument, a framework call given bad
        // arguments, a dictionary lookup that misses) are bugs, whatever their base type; this project's own
        // ArgumentException and KeyNotFoundException name the input that is wrong.
        ArgumentOutOfRangeException or ArgumentNullException => InternalError,
        ArgumentException or KeyNotFoundException when ThrownByFramework(e) => InternalError,
        InvalidDataException or FileNotFoundException or DirectoryNotFoundException or NotSupportedException
            or KeyNotFoundException or ArgumentException or FormatException or UnauthorizedAccessException => BadInput,
        IOException => BadInput, // unwritable output, disk full, a file in the way
        _ => InternalError,
    };

    private static bool ThrownByFramework(Exception e) =>
        e.TargetSite?.DeclaringType?.Namespace is { } ns && (ns == "System" || ns.StartsWith("System.", StringComparison.Ordinal));

    /// <summary>Prints the one-line message (and for internal errors the stack trace under -v); returns the exit code.</summary>
    public static int Report(Exception e, TextWriter error, bool verbose)
    {
        int code = Classify(e);
        switch (code)
        {
            case Cancelled:
                error.WriteLine("cancelled");
                break;
            case InternalError:
                error.WriteLine($"internal error: {e.GetType().Name}: {e.Message}");
                if (verbose) error.WriteLine(e);
                else error.WriteLine("this is a bug in converter; run again with -v for the stack trace and report it");
                break;
            default:
                error.WriteLine($"error: {e.Message}");
                if (verbose) error.WriteLine(e);
                break;
        }
        return code;
    }

    /// <summary>
    /// Command-line usage errors: each message, then one line pointing at the command's --help (not the whole help);
    /// exit code 2. Null when the parse has no error or asks for help.
    /// </summary>
    public static int? ReportParseErrors(ParseResult parse)
    {
        if (parse.Action is HelpAction) return null;
        if (parse.Errors.Count == 0 && parse.UnmatchedTokens.Count == 0) return null;
        var err = parse.InvocationConfiguration.Error;
        foreach (var e in parse.Errors) err.WriteLine($"error: {e.Message}");
        if (parse.Errors.Count == 0) err.WriteLine($"error: unrecognized argument(s): {string.Join(" ", parse.UnmatchedTokens)}");
        err.WriteLine($"see '{CommandPath(parse.CommandResult.Command)} --help' for usage");
        return BadInput;
    }

    public static string CommandPath(Command command)
    {
        var names = new List<string>();
        for (var c = command; c != null; c = c.Parents.OfType<Command>().FirstOrDefault())
            names.Add(c is RootCommand ? "converter" : c.Name);
        if (names[^1] != "converter") names.Add("converter");
        names.Reverse();
        return string.Join(' ', names);
    }
}
