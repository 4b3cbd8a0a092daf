using Converter.Runtime;

namespace Converter.Cli;

/// <summary>Plugs the artifact runtimes into the verify command's factory.</summary>
public static class RunnerRegistration
{
    public static ArtifactRunnerFactory RegisterAll(ArtifactRunnerFactory factory) =>
        factory.Register(ArtifactKind.Onnx, (path, o) => new OnnxArtifactRunner(path, new OnnxRunnerOptions(
            o.ExecutionProvider.Equals("cuda", StringComparison.OrdinalIgnoreCase) ? OnnxExecutionProvider.Cuda : OnnxExecutionProvider.Cpu,
            o.Threads)));
}
