using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Converter.Sharding;

namespace Converter.Tests.Sharding;

/// <summary>placement.json as written validates against schemas/placement.schema.json.</summary>
public class PlacementSchemaTests
{
    private static readonly JsonObject Schema = JsonNode.Parse(File.ReadAllText(Path.Combine(TestData.Root, "schemas", "placement.schema.json")))!.AsObject();

    /// <summary>
    /// The JSON Schema keywords this schema uses (type, const, enum, required, properties, additionalProperties: false,
    /// items, $ref to #/$defs, minimum, exclusiveMinimum, maximum, minItems, pattern, oneOf); anything else fails loudly.
    /// </summary>
    private static void Validate(JsonNode? value, JsonObject schema, string path, List<string> errors)
    {
        foreach (var (key, rule) in schema)
        {
            switch (key)
            {
                case "$schema" or "$id" or "title" or "description" or "$defs": break;
                case "$ref":
                    var name = rule!.GetValue<string>().Replace("#/$defs/", "");
                    Validate(value, Schema["$defs"]![name]!.AsObject(), path, errors);
                    break;
                case "type":
                    var t = rule!.GetValue<string>();
                    var kind = value?.GetValueKind() ?? JsonValueKind.Null;
                    bool ok = t switch
                    {
                        "object" => kind == JsonValueKind.Object,
                        "array" => kind == JsonValueKind.Array,
                        "string" => kind == JsonValueKind.String,
                        "boolean" => kind is JsonValueKind.True or JsonValueKind.False,
                        "null" => kind == JsonValueKind.Null,
                        "number" => kind == JsonValueKind.Number,
                        "integer" => kind == JsonValueKind.Number && double.Parse(value!.ToJsonString(), System.Globalization.CultureInfo.InvariantCulture) % 1 == 0,
                        _ => throw new NotSupportedException($"type {t}"),
                    };
                    if (!ok) errors.Add($"{path}: expected {t}, got {kind}");
                    break;
                case "const":
                    if (value?.ToJsonString() != rule!.ToJsonString()) errors.Add($"{path}: expected {rule.ToJsonString()}");
                    break;
                case "enum":
                    if (!rule!.AsArray().Any(v => v?.ToJsonString() == value?.ToJsonString())) errors.Add($"{path}: {value?.ToJsonString()} not in enum");
                    break;
                case "required":
                    foreach (var r in rule!.AsArray())
                        if (value is not JsonObject o || !o.ContainsKey(r!.GetValue<string>())) errors.Add($"{path}: missing '{r}'");
                    break;
                case "properties":
                    if (value is JsonObject obj)
                        foreach (var (p, v) in obj)
                            if (rule!.AsObject()[p] is JsonObject sub) Validate(v, sub, $"{path}.{p}", errors);
                            else if (schema["additionalProperties"]?.GetValue<bool>() == false) errors.Add($"{path}: unexpected property '{p}'");
                    break;
                case "additionalProperties": break;
                case "items":
                    if (value is JsonArray arr)
                        for (int i = 0; i < arr.Count; i++) Validate(arr[i], rule!.AsObject(), $"{path}[{i}]", errors);
                    break;
                case "minItems":
                    if (value is JsonArray a && a.Count < rule!.GetValue<int>()) errors.Add($"{path}: fewer than {rule} items");
                    break;
                case "minimum" or "maximum" or "exclusiveMinimum":
                    if (value?.GetValueKind() == JsonValueKind.Number)
                    {
                        double v = value.GetValue<double>(), bound = rule!.GetValue<double>();
                        if ((key == "minimum" && v < bound) || (key == "maximum" && v > bound) || (key == "exclusiveMinimum" && v <= bound))
                            errors.Add($"{path}: {v} violates {key} {bound}");
                    }
                    break;
                case "pattern":
                    if (value?.GetValueKind() == JsonValueKind.String && !Regex.IsMatch(value.GetValue<string>(), rule!.GetValue<string>()))
                        errors.Add($"{path}: '{value}' does not match {rule}");
                    break;
                case "oneOf":
                    int matches = 0;
                    foreach (var alt in rule!.AsArray())
                    {
                        var sub = new List<string>();
                        Validate(value, alt!.AsObject(), path, sub);
                        if (sub.Count == 0) matches++;
                    }
                    if (matches != 1) errors.Add($"{path}: matches {matches} of oneOf");
                    break;
                default: throw new NotSupportedException($"schema keyword '{key}' at {path}");
            }
        }
    }

    private static List<string> Errors(JsonNode json)
    {
        var errors = new List<string>();
        Validate(JsonNode.Parse(json.ToJsonString()), Schema, "$", errors);
        return errors;
    }

    [Theory]
    [InlineData(4, 0, PlacementMethod.Contiguous, 0)]
    [InlineData(4, 2, PlacementMethod.Balanced, 2)]
    [InlineData(8, 2, PlacementMethod.Balanced, 3)]
    public void WrittenPlacementsMatchTheSchema(int ranks, int perNode, PlacementMethod method, int redundant)
    {
        var arch = ShardTestData.Arch();
        var p = PlacementPlanner.Plan(arch, new PlacementOptions(ranks, perNode, method, redundant), ShardTestData.Calibration(arch));
        Errors(PlacementJson.ToJson(p)).Should().BeEmpty();
    }

    [Fact]
    public void SchemaRejectsMissingAndUnknownFields()
    {
        var json = PlacementJson.ToJson(PlacementPlanner.Plan(ShardTestData.Arch(), new PlacementOptions(4)));
        json.Remove("ranks_per_node");
        json["layers"]![0]!["experts"]![0]!["replicas"]![0]!["share"] = 0;
        json["surprise"] = 1;
        var errors = Errors(json);
        errors.Should().Contain(e => e.Contains("missing 'ranks_per_node'"));
        errors.Should().Contain(e => e.Contains("unexpected property 'surprise'"));
        errors.Should().Contain(e => e.Contains("share") && e.Contains("exclusiveMinimum"));
    }
}
