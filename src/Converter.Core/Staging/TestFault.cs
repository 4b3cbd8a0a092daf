using System.Diagnostics;
using System.Globalization;

namespace Converter.Staging;

public enum TestFaultKind { None, Throw, Kill, DiskFull, Cancel, Abandon }

/// <summary>
/// Test hook (the CLI reads it from <c>CONVERTER_TEST_FAULT</c>, documented in the README): after <see cref="After"/>
/// completed units (tensors or files) a run throws (<c>after:N</c>), kills itself with SIGKILL (<c>kill-after:N</c>),
/// fails as on a full disk (<c>enospc-after:N</c>) or is cancelled as by Ctrl-C (<c>cancel-after:N</c>); in process, tests
/// simulate a kill with <see cref="TestFaultKind.Abandon"/>: the run throws and leaves its staging folder as a kill would.
/// </summary>
public sealed record TestFault(TestFaultKind Kind, int After)
{
    public static readonly TestFault None = new(TestFaultKind.None, 0);

    /// <summary>Null for text that is not a unit fault (the CLI's own <c>internal</c> value, or nothing).</summary>
    public static TestFault? Parse(string? text)
    {
        if (string.IsNullOrEmpty(text)) return null;
        int colon = text.IndexOf(':');
        if (colon < 0 || !int.TryParse(text.AsSpan(colon + 1), NumberStyles.None, CultureInfo.InvariantCulture, out int n)) return null;
        var kind = text[..colon] switch
        {
            "after" => TestFaultKind.Throw, "kill-after" => TestFaultKind.Kill, "enospc-after" => TestFaultKind.DiskFull,
            "cancel-after" => TestFaultKind.Cancel, "abandon-after" => TestFaultKind.Abandon, _ => TestFaultKind.None,
        };
        return kind == TestFaultKind.None ? null : new TestFault(kind, n);
    }

    internal void Fire(int completed, string path, CancellationTokenSource? cancel)
    {
        if (Kind == TestFaultKind.None || completed != After) return;
        switch (Kind)
        {
            case TestFaultKind.Abandon: throw new SimulatedKillException(completed);
            case TestFaultKind.Throw: throw new InvalidOperationException($"fault injected after {completed} units (test hook)");
            case TestFaultKind.DiskFull: throw new IOException($"{path}: No space left on device (injected after {completed} units, test hook)", OsErrors.ENOSPC);
            case TestFaultKind.Cancel:
                if (cancel == null) throw new OperationCanceledException("cancelled after {completed} units (test hook)");
                cancel.Cancel();
                break;
            case TestFaultKind.Kill: Process.GetCurrentProcess().Kill(); Thread.Sleep(Timeout.Infinite); break;
        }
    }
}

/// <summary>Thrown by <see cref="TestFaultKind.Abandon"/>: the staging folder stays (its lock released), as after kill -9.</summary>
public sealed class SimulatedKillException(int completed) : Exception($"simulated kill after {completed} units (test hook)");
