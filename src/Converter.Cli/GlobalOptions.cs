using System.CommandLine;
using Microsoft.Extensions.Logging;

namespace Converter.Cli;

/// <summary>Options every command accepts, and the logger they configure.</summary>
public static class GlobalOptions
{
    public static readonly Option<bool> Verbose = new("--verbose", "-v")
    {
        Description = "Log details (debug level)",
        Recursive = true,
    };

    public static readonly Option<bool> Quiet = new("--quiet", "-q")
    {
        Description = "Log warnings and errors only; no progress",
        Recursive = true,
    };

    /// <param name="toStandardError">Log to stderr (commands whose stdout is a result, such as verify --json).</param>
    public static ILoggerFactory CreateLoggerFactory(ParseResult parse, bool toStandardError = false)
    {
        var level = parse.GetValue(Verbose) ? LogLevel.Debug : parse.GetValue(Quiet) ? LogLevel.Warning : LogLevel.Information;
        return LoggerFactory.Create(b => b
            .SetMinimumLevel(level)
            .AddConsole(o => { if (toStandardError) o.LogToStandardErrorThreshold = LogLevel.Trace; })
            .AddSimpleConsole(o =>
            {
                o.SingleLine = true;
                o.TimestampFormat = "HH:mm:ss ";
                o.IncludeScopes = false;
            })
            .AddFilter((category, l) => l >= level));
    }

    /// <summary>Progress goes to stderr unless -q; it is only a display, never parsed.</summary>
    public static IProgress<Pipelines.PipelineProgress>? CreateProgress(ParseResult parse) =>
        parse.GetValue(Quiet) ? null : new ConsoleProgress();
}
