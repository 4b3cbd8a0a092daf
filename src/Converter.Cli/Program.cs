using System.CommandLine;
using Converter.Cli;
using Converter.Cli.Commands;
using Converter.Runtime;

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
root.Subcommands.Add(VerifyCommand.Create(RunnerRegistration.RegisterAll(ArtifactRunnerFactory.Default)));
root.Subcommands.Add(ShardCommand.Create());
root.Subcommands.Add(GenerateCommand.Create());
return root.Parse(args).Invoke();
