using System.CommandLine;
using Converter.Cli;
using Converter.Cli.Commands;

var root = new RootCommand("converter: turn DeepSeek-V3-family MoE checkpoints into verified FP8, ONNX and GGUF artifacts");
root.Options.Add(GlobalOptions.Verbose);
root.Options.Add(GlobalOptions.Quiet);
root.Subcommands.Add(InspectCommand.Create());
root.Subcommands.Add(QuantizeCommand.Create());
root.Subcommands.Add(VerifyCommand.Create());
return root.Parse(args).Invoke();
