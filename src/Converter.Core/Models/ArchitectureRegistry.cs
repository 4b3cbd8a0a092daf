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
        return Factories.TryGetValue(type, out var f)
            ? f(config)
            : throw config.Invalid("model_type", $"'{type}' is not supported (supported: {string.Join(", ", Factories.Keys)})");
    }
}
