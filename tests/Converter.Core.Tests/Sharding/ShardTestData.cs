using Converter.Calibration;
using Converter.Models;
using Converter.Sharding;

namespace Converter.Tests.Sharding;

/// <summary>
/// Routing for placement tests. There is no calibration folder for the golden models yet (producing one needs the
/// runtime), so the calibration is the routing transformers computed for golden/tiny-dsv3/eval.safetensors
/// (route_topk_idx) on sequences 0-3, and the held-out tokens are sequences 4-7 of the same file: disjoint texts, the
/// routing recorded by the reference implementation, not by our code.
/// </summary>
public static class ShardTestData
{
    public static string EvalFile => TestData.Golden("tiny-dsv3", "eval.safetensors");

    public static ModelArchitecture Arch(string model = "tiny-dsv3") => ArchitectureRegistry.Load(TestData.Model(model));

    public static CalibrationData Calibration(ModelArchitecture arch)
    {
        var t = RoutingTrace.Load(EvalFile, arch, 0, 4);
        return new CalibrationData
        {
            ModelType = arch.ModelType,
            ConfigFingerprint = CalibrationData.Fingerprint(arch),
            RoutedExperts = arch.NumRoutedExperts,
            ExpertsPerToken = arch.NumExpertsPerToken,
            Sequences = 4,
            SequenceLength = t.Tokens / 4,
            TopK = t.TopK,
        };
    }

    public static RoutingTrace HeldOut(ModelArchitecture arch) => RoutingTrace.Load(EvalFile, arch, 4, 8);
}
