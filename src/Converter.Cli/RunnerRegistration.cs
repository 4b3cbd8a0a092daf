using Converter.Runtime;

namespace Converter.Cli;

/// <summary>Plugs the artifact runtimes into the verify command's factory.</summary>
public static class RunnerRegistration
{
    public static ArtifactRunnerFactory RegisterAll(ArtifactRunnerFactory factory) =>
        GgufArtifactRunner.RegisterWith(ShardedOnnxArtifactRunner.RegisterWith(OnnxArtifactRunner.RegisterWith(factory)));
}
