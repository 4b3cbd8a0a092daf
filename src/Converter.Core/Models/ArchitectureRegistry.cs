using Converter.Models.DeepseekV3;
using Converter.Models.DeepseekV4;
using Converter.Models.Qwen3Moe;

namespace Converter.Models;

/// <summary>
/// Reads config.json and picks the family for its model_type. A family is one folder under <c>Models/</c> plus one
/// line here: its model types and the factory of its <see cref="ModelArchitecture"/>.
/// </summary>
public static class ArchitectureRegistry
{
    private static readonly Dictionary<string, Func<ConfigJson, ModelArchitecture>> Factories = new(StringComparer.Ordinal);

    static ArchitectureRegistry()
    {
        Register(DeepseekV3Config.ModelTypes, c => new DeepseekV3Architecture(DeepseekV3Config.Parse(c)));
        Register([Qwen3MoeConfig.Type], c => new Qwen3MoeArchitecture(Qwen3MoeConfig.Parse(c)));
        Register([DeepseekV4Config.Type], c => new DeepseekV4Architecture(DeepseekV4Config.Parse(c)));
    }

    private static void Register(IEnumerable<string> modelTypes, Func<ConfigJson, ModelArchitecture> factory)
    {
        foreach (var t in modelTypes) Factories.Add(t, factory);
    }

    public static IReadOnlyCollection<string> Supported => Factories.Keys;

    public static ModelArchitecture Load(string modelDir) => FromConfig(ConfigJson.Load(modelDir));

    public static ModelArchitecture FromConfig(ConfigJson config)
    {
        var type = config.ModelType ?? throw config.Missing("model_type");
        var arch = Factories.TryGetValue(type, out var f)
            ? f(config)
            : throw config.Invalid("model_type", $"'{type}' is not supported (supported: {string.Join(", ", Factories.Keys)})");
        CheckScale(arch, config);
        return arch;
    }

    /// <summary>At most this many (layer, routed expert) pairs: DeepSeek-V3 has 62 x 256 = 15,872, Kimi K2 62 x 384.</summary>
    public const long MaxExpertBlocks = 1 << 22;

    /// <summary>
    /// The tensor map lists every expert of every layer: a config claiming billions of them would exhaust memory before
    /// any tensor is compared, so such a config is refused up front (the sizes are still free to grow 250-fold).
    /// </summary>
    private static void CheckScale(ModelArchitecture arch, ConfigJson config)
    {
        long layers = (long)arch.NumLayers + arch.NumMtpLayers;
        if (layers * Math.Max(1, arch.NumRoutedExperts) > MaxExpertBlocks)
            throw new InvalidDataException($"{config.Path}: {arch.NumLayers} layers (+{arch.NumMtpLayers} MTP) x {arch.NumRoutedExperts} routed experts " +
                $"is more than {MaxExpertBlocks:N0} expert blocks (a corrupt config?)");
    }
}
