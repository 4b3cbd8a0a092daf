using Converter.Models.DeepseekV3;

namespace Converter.Models;

/// <summary>Reads config.json and picks the architecture class for its model_type.</summary>
public static class ArchitectureRegistry
{
    private static readonly Dictionary<string, Func<ConfigJson, ModelArchitecture>> Factories = new()
    {
        ["deepseek_v3"] = c => new DeepseekV3Architecture(DeepseekV3Config.Parse(c)),
    };

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
