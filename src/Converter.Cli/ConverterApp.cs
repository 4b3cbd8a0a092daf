using System.CommandLine;
using System.CommandLine.Invocation;
using Converter.Cli.Commands;
using Converter.Runtime;

namespace Converter.Cli;

/// <summary>The converter command tree and its entry point (Program.cs calls <see cref="Run"/>; tests call it in process).</summary>
public static class ConverterApp
{
    public static RootCommand Build(ArtifactRunnerFactory? factory = null)
    {
        factory ??= RunnerRegistration.RegisterAll(ArtifactRunnerFactory.Default);
        var root = new RootCommand("converter: turn Mixture-of-Experts checkpoints (DeepSeek-V3/R1, Kimi K2, DeepSeek-V2, Qwen3-MoE) into verified FP8, INT4, ONNX and GGUF artifacts");
        root.Options.Add(GlobalOptions.Verbose);
        root.Options.Add(GlobalOptions.Quiet);
        root.Subcommands.Add(InspectCommand.Create());
        root.Subcommands.Add(QuantizeCommand.Create());
        root.Subcommands.Add(CalibrateCommand.Create());
        var export = new Command("export", "Write a deployable artifact (ONNX, GGUF) from a checkpoint");
        export.Subcommands.Add(ExportOnnxCommand.Create());
        export.Subcommands.Add(GgufCommand.Create());
        root.Subcommands.Add(export);
        root.Subcommands.Add(GoldenCommand.Create());
        root.Subcommands.Add(VerifyCommand.Create(factory));
        root.Subcommands.Add(ShardCommand.Create());
        root.Subcommands.Add(GenerateCommand.Create());
        root.Subcommands.Add(CheckCommand.Create());
        AddExitCodes(root);
        return root;
    }

    /// <summary>
    /// Every command's --help ends its description with the exit codes, and every command's action (a group such as
    /// <c>export</c> included) answers usage errors itself: the message, a pointer to --help, exit 2.
    /// </summary>
    private static void AddExitCodes(Command command)
    {
        command.Description = $"{command.Description}\n\n{CommandRunner.ExitCodesHelp}";
        command.Action = new ConverterAction(command.Action as SynchronousCommandLineAction);
        foreach (var sub in command.Subcommands) AddExitCodes(sub);
    }

    /// <summary>Usage errors first (exit 2), then the command's own action; a group without one asks for a subcommand.</summary>
    private sealed class ConverterAction(SynchronousCommandLineAction? inner) : SynchronousCommandLineAction
    {
        public override bool ClearsParseErrors => true;

        public override int Invoke(ParseResult parseResult)
        {
            if (CommandRunner.ReportParseErrors(parseResult) is { } code) return code;
            if (inner != null) return inner.Invoke(parseResult);
            var err = parseResult.InvocationConfiguration.Error;
            err.WriteLine($"error: '{parseResult.CommandResult.Command.Name}' needs a command: {string.Join(", ", parseResult.CommandResult.Command.Subcommands.Select(c => c.Name))}");
            err.WriteLine($"see '{CommandRunner.CommandPath(parseResult.CommandResult.Command)} --help' for usage");
            return CommandRunner.BadInput;
        }
    }

    /// <summary>Parses and runs; usage errors exit 2 with the message and a pointer to --help (never the whole help).</summary>
    public static int Run(string[] args, InvocationConfiguration? configuration = null, ArtifactRunnerFactory? factory = null)
    {
        var parse = Build(factory).Parse(args);
        return configuration == null ? parse.Invoke() : parse.Invoke(configuration);
    }
}
