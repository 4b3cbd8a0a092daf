using System.CommandLine;
using Microsoft.Extensions.Logging;

namespace Converter.Cli;

/// <summary>
/// Runs a command body and turns failures into one clear line and an exit code: 2 for bad input
/// (corrupt, missing or unsupported files and configs), 1 for anything else.
/// </summary>
public static class CommandRunner
{
    public const int Ok = 0, Failed = 1, BadInput = 2;

    public static int Run(ParseResult parse, Func<ILoggerFactory, int> body)
    {
        using var loggers = GlobalOptions.CreateLoggerFactory(parse);
        try
        {
            return body(loggers);
        }
        catch (Exception e) when (e is InvalidDataException or FileNotFoundException or DirectoryNotFoundException
                                       or NotSupportedException or KeyNotFoundException or ArgumentException)
        {
            Console.Error.WriteLine($"error: {e.Message}");
            return BadInput;
        }
        catch (IOException e)
        {
            Console.Error.WriteLine($"error: {e.Message}");
            return BadInput;
        }
        catch (Exception e)
        {
            Console.Error.WriteLine($"error: {e.GetType().Name}: {e.Message}");
            if (parse.GetValue(GlobalOptions.Verbose)) Console.Error.WriteLine(e);
            return Failed;
        }
    }
}
