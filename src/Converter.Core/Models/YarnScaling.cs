using System.Text.Json.Nodes;

namespace Converter.Models;

/// <summary>YaRN rope scaling as a config.json states it (<c>rope_scaling</c> with type / rope_type "yarn").</summary>
/// <param name="HasMscales">Both mscale and mscale_all_dim were given (transformers then divides their get_mscale values).</param>
/// <param name="AttentionFactor">An explicit attention_factor, which overrides the derived one.</param>
public sealed record YarnScaling(double Factor, int OriginalMaxPositionEmbeddings, double BetaFast, double BetaSlow,
    double Mscale, double MscaleAllDim, bool HasMscales = false, double? AttentionFactor = null)
{
    /// <summary>config.json's rope_scaling: null when absent or null; a YaRN record; refused for other types.</summary>
    /// <param name="originalDefault">original_max_position_embeddings where the config omits it (null: required).</param>
    public static YarnScaling? Parse(ConfigJson c, int? originalDefault = null)
    {
        if (!c.Has("rope_scaling")) return null;
        if (c.Root["rope_scaling"] is not JsonObject o) throw c.Invalid("rope_scaling", "must be an object or null");
        var sub = new ConfigJson(c.Path, o);
        string type = sub.Has("rope_type") ? sub.String("rope_type", "") : sub.String("type", "");
        if (type == "default") return null;
        if (type != "yarn")
            throw c.Invalid("rope_scaling", $"type '{type}' is not supported (only 'yarn' or null)");
        var y = new YarnScaling(
            sub.Double("factor"),
            originalDefault is { } d ? sub.Int("original_max_position_embeddings", d) : sub.Int("original_max_position_embeddings"),
            sub.Double("beta_fast", 32),
            sub.Double("beta_slow", 1),
            sub.Double("mscale", 1),
            sub.Double("mscale_all_dim", 0),
            o["mscale"] is not null && o["mscale_all_dim"] is not null,
            o["attention_factor"] is { } af ? af.GetValue<double>() : null);
        if (y.Factor <= 0 || y.OriginalMaxPositionEmbeddings <= 0)
            throw c.Invalid("rope_scaling", "factor and original_max_position_embeddings must be positive");
        return y;
    }
}
