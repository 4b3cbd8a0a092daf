using System.Text.Json.Nodes;
using Converter.Tests;

namespace Converter.EndToEnd.Tests;

/// <summary>Configs llama.cpp's deepseek2 cannot compute exactly are refused by <c>export gguf</c> unless <c>--force</c>.</summary>
public sealed class GgufRefusalTests : IDisposable
{
    private readonly TestData.TempDir _dir = new();

    public void Dispose() => _dir.Dispose();

    /// <summary>An edited copy of tiny-dsv3; the noaux_tc correction biases are dropped when the edit changes topk_method.</summary>
    private string Edited(string name, Action<JsonObject> edit)
    {
        string dir = _dir[name];
        var probe = JsonNode.Parse(File.ReadAllText(Path.Combine(TestData.Model("tiny-dsv3"), "config.json")))!.AsObject();
        edit(probe);
        bool noaux = (string?)probe["topk_method"] == "noaux_tc";
        TestCheckpoints.Copy(TestData.Model("tiny-dsv3"), dir,
            e => noaux || !e.Name.EndsWith("e_score_correction_bias", StringComparison.Ordinal) ? e : null, edit);
        return dir;
    }

    [Theory]
    [InlineData("mscale", "mscale_all_dim")]
    [InlineData("group_limited_greedy", "group_limited_greedy")]
    [InlineData("beta_fast", "beta_fast")]
    public void InexactConfigIsRefusedUnlessForced(string edit, string expected)
    {
        string model = Edited(edit, c =>
        {
            var rope = c["rope_scaling"]!.AsObject();
            switch (edit)
            {
                case "mscale": rope["mscale"] = 0.707; break; // mscale_all_dim stays 1
                case "beta_fast": rope["beta_fast"] = 16; break;
                default: c["topk_method"] = "group_limited_greedy"; break; // n_group 4, topk_group 2: grouping is active
            }
        });
        string output = _dir[edit + ".gguf"];
        var refused = Converter.Tests.Cli.Run("export", "gguf", model, "-o", output, "--type", "f32");
        refused.ExitCode.Should().Be(2, refused.ToString());
        refused.StdErr.Should().Contain("cannot represent").And.Contain(expected).And.Contain("--force");
        File.Exists(output).Should().BeFalse();

        var forced = Converter.Tests.Cli.Run("export", "gguf", model, "-o", output, "--type", "f32", "--force");
        forced.ExitCode.Should().Be(0, forced.ToString());
        (forced.StdOut + forced.StdErr).Should().Contain("--force");
        File.Exists(output).Should().BeTrue();
    }

    [Fact]
    public void MatchingMscaleAndGreedyRoutingAreExported()
    {
        // mscale == mscale_all_dim cancels in the rotary scaling; greedy ignores groups (no group keys are written)
        string model = Edited("ok", c =>
        {
            c["rope_scaling"]!.AsObject()["mscale"] = 0.707;
            c["rope_scaling"]!.AsObject()["mscale_all_dim"] = 0.707;
            c["topk_method"] = "greedy";
        });
        string output = _dir["ok.gguf"];
        var r = Converter.Tests.Cli.Run("export", "gguf", model, "-o", output, "--type", "f32");
        r.ExitCode.Should().Be(0, r.ToString());
        using var reader = Converter.Formats.Gguf.GgufReader.Open(output);
        reader.TryGetValue("deepseek2.expert_group_count", out _).Should().BeFalse();
    }
}
