using System.Text.Json;
using System.Text.Json.Nodes;
using Converter.Models;

namespace Converter.Sharding;

/// <summary>Reads and writes <c>placement.json</c> (schema: schemas/placement.schema.json).</summary>
public static class PlacementJson
{
    public const string FileName = "placement.json";
    public const string Format = "converter.placement/v1";

    public static JsonObject ToJson(ExpertPlacement p)
    {
        var layers = new JsonArray();
        foreach (var l in p.Layers)
        {
            var experts = new JsonArray();
            for (int x = 0; x < l.Replicas.Length; x++)
            {
                var reps = new JsonArray();
                foreach (var r in l.Replicas[x])
                    reps.Add(new JsonObject { ["rank"] = r.Rank, ["slot"] = r.Slot, ["share"] = r.Share });
                experts.Add(new JsonObject { ["expert"] = x, ["replicas"] = reps });
            }
            var ranks = new JsonArray();
            for (int rank = 0; rank < l.RankSlots.Length; rank++)
                ranks.Add(new JsonObject
                {
                    ["rank"] = rank,
                    ["node"] = p.NodeOf(rank),
                    ["experts"] = new JsonArray(l.RankSlots[rank].Select(x => (JsonNode)x).ToArray()),
                });
            layers.Add(new JsonObject
            {
                ["layer"] = l.Layer,
                ["load_source"] = l.LoadSource,
                ["expert_load"] = new JsonArray(l.ExpertLoad.Select(v => (JsonNode)v).ToArray()),
                ["experts"] = experts,
                ["ranks"] = ranks,
            });
        }
        return new JsonObject
        {
            ["format"] = Format,
            ["model"] = new JsonObject
            {
                ["model_type"] = p.Model.ModelType,
                ["config_fingerprint"] = p.Model.ConfigFingerprint,
                ["n_routed_experts"] = p.Model.RoutedExperts,
                ["num_experts_per_tok"] = p.Model.ExpertsPerToken,
                ["n_group"] = p.Model.ExpertGroups,
                ["topk_group"] = p.Model.TopkGroups,
                ["hidden_size"] = p.Model.HiddenSize,
            },
            ["ranks"] = p.Ranks,
            ["ranks_per_node"] = p.RanksPerNode,
            ["nodes"] = p.Nodes,
            ["method"] = p.Method == PlacementMethod.Contiguous ? "contiguous" : "balanced",
            ["group_aware"] = p.GroupAware,
            ["redundant"] = p.Redundant,
            ["slots_per_rank"] = p.SlotsPerRank,
            ["token_split"] = p.TokenSplit,
            ["calibration"] = p.CalibrationFingerprint == null ? null : new JsonObject
            {
                ["config_fingerprint"] = p.CalibrationFingerprint,
                ["tokens"] = p.CalibrationTokens,
            },
            ["layers"] = layers,
        };
    }

    public static void Write(ExpertPlacement p, string path)
    {
        var tmp = path + ".tmp";
        File.WriteAllText(tmp, ToJson(p).ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
        File.Move(tmp, path, overwrite: true);
    }

    /// <summary>Reads and validates a placement; every error names the file and the field.</summary>
    public static ExpertPlacement Read(string path)
    {
        if (Directory.Exists(path)) path = Path.Combine(path, FileName);
        if (!File.Exists(path)) throw new FileNotFoundException($"{path}: placement file not found", path);
        JsonObject root;
        try { root = ConfigJson.Parse(File.ReadAllText(path)) as JsonObject ?? throw new InvalidDataException($"{path}: not a JSON object"); }
        catch (JsonException ex) { throw new InvalidDataException($"{path}: not valid JSON ({ex.Message})"); }
        var c = new ConfigJson(path, root);
        if (c.String("format", "") != Format) throw c.Invalid("format", $"must be '{Format}'");
        var mo = root["model"] as JsonObject ?? throw c.Missing("model");
        var mc = new ConfigJson(path, mo);
        var model = new PlacementModel(mc.String("model_type", ""), mc.String("config_fingerprint", ""), mc.Int("n_routed_experts"),
            mc.Int("num_experts_per_tok"), mc.Int("n_group"), mc.Int("topk_group"), mc.Int("hidden_size"));
        var method = c.String("method", "") switch
        {
            "contiguous" => PlacementMethod.Contiguous,
            "balanced" => PlacementMethod.Balanced,
            var s => throw c.Invalid("method", $"'{s}' is not contiguous or balanced"),
        };
        var layers = new List<LayerPlacement>();
        foreach (var ln in root["layers"] as JsonArray ?? throw c.Missing("layers"))
        {
            var lo = ln as JsonObject ?? throw c.Invalid("layers", "entries must be objects");
            var lc = new ConfigJson(path, lo);
            int layer = lc.Int("layer");
            var load = (lo["expert_load"] as JsonArray ?? throw lc.Missing("expert_load")).Select(v => lc.DoubleValue("expert_load", v!)).ToArray();
            var experts = lo["experts"] as JsonArray ?? throw lc.Missing("experts");
            var replicas = new ExpertReplica[experts.Count][];
            foreach (var en in experts)
            {
                var eo = en as JsonObject ?? throw lc.Invalid("experts", "entries must be objects");
                var ec = new ConfigJson(path, eo);
                int x = ec.Int("expert");
                if ((uint)x >= (uint)replicas.Length || replicas[x] != null)
                    throw lc.Invalid("experts", $"of layer {layer}: expert {x} is out of range or listed twice");
                replicas[x] = (eo["replicas"] as JsonArray ?? throw ec.Missing("replicas")).Select(rn =>
                {
                    var rc = new ConfigJson(path, rn as JsonObject ?? throw ec.Invalid("replicas", "entries must be objects"));
                    return new ExpertReplica(rc.Int("rank"), rc.Int("slot"), rc.Double("share"));
                }).ToArray();
            }
            for (int x = 0; x < replicas.Length; x++)
                if (replicas[x] == null) throw lc.Invalid("experts", $"of layer {layer}: expert {x} is missing");
            var ranks = (lo["ranks"] as JsonArray ?? throw lc.Missing("ranks")).Select(rn =>
            {
                var ro = rn as JsonObject ?? throw lc.Invalid("ranks", "entries must be objects");
                return (ro["experts"] as JsonArray ?? throw new ConfigJson(path, ro).Missing("experts"))
                    .Select(v => lc.IntValue("ranks.experts", v!)).ToArray();
            }).ToArray();
            layers.Add(new LayerPlacement { Layer = layer, LoadSource = lc.String("load_source", ""), ExpertLoad = load, Replicas = replicas, RankSlots = ranks });
        }
        var cal = root["calibration"] as JsonObject;
        var p = new ExpertPlacement
        {
            Model = model,
            Ranks = c.Int("ranks"),
            RanksPerNode = c.Int("ranks_per_node"),
            Method = method,
            GroupAware = c.Bool("group_aware", false),
            Redundant = c.Int("redundant"),
            CalibrationFingerprint = cal == null ? null : new ConfigJson(path, cal).String("config_fingerprint", ""),
            CalibrationTokens = cal == null ? 0 : new ConfigJson(path, cal).Int("tokens"),
            Layers = layers,
        };
        PlacementValidator.Validate(p, path);
        return p;
    }

    /// <summary>Throws when the placement was made for a model of another config.</summary>
    public static void CheckMatches(ExpertPlacement p, ModelArchitecture arch, string path)
    {
        var fp = Calibration.CalibrationData.Fingerprint(arch);
        if (p.Model.ModelType != arch.ModelType || p.Model.ConfigFingerprint != fp || p.Model.RoutedExperts != arch.NumRoutedExperts)
            throw new InvalidDataException($"{path}: placement is for a {p.Model.ModelType} model with config {p.Model.ConfigFingerprint}, " +
                $"not this {arch.ModelType} model (config {fp})");
        var want = arch.MoeLayers();
        if (!want.SequenceEqual(p.Layers.Select(l => l.Layer)))
            throw new InvalidDataException($"{path}: placement covers layers [{string.Join(", ", p.Layers.Select(l => l.Layer))}], " +
                $"the model's MoE layers are [{string.Join(", ", want)}]");
    }
}
