using System.Diagnostics;
using Converter.Pipelines;

namespace Converter.Cli;

/// <summary>Throttled one-line progress on stderr: tensors done, bytes done, throughput.</summary>
internal sealed class ConsoleProgress : IProgress<PipelineProgress>
{
    private readonly Stopwatch _clock = Stopwatch.StartNew();
    private long _lastTicks = -1;
    private readonly bool _interactive = !Console.IsErrorRedirected;

    public void Report(PipelineProgress p)
    {
        bool last = p.Done == p.Total;
        long now = _clock.ElapsedMilliseconds;
        if (!last && now - _lastTicks < (_interactive ? 200 : 5000)) return;
        _lastTicks = now;
        double secs = Math.Max(now / 1000.0, 1e-3);
        string line = $"[{p.Done}/{p.Total}] {p.Bytes / 1e9:F2} GB {p.Bytes / 1e6 / secs:F0} MB/s {p.Current}";
        if (_interactive)
        {
            if (line.Length > 110) line = line[..110];
            Console.Error.Write("\r" + line.PadRight(110));
            if (last) Console.Error.WriteLine();
        }
        else
        {
            Console.Error.WriteLine(line);
        }
    }
}
