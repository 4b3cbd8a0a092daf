using System.Text.Json;
using Converter.Verification;

namespace Converter.Tests.Verification;

public class VerificationReportWriterTests
{
    [Fact]
    public void JsonIsOneObjectWithTheFixedKeysFirst()
    {
        var g = GoldenSet.Load(GoldenSetTests.Eval("tiny-qwen3moe"));
        var a = (float[])g.Logits.Clone();
        a[1000] -= 0.25f;
        var r = GoldenComparer.Compare(g, new ArtifactOutputs(a, null, null), VerificationTolerances.ForPreset("fp32"), "fake");
        var json = VerificationReportWriter.ToJson(r, indented: false);

        var reader = new Utf8JsonReader(System.Text.Encoding.UTF8.GetBytes(json));
        using var doc = JsonDocument.ParseValue(ref reader);
        reader.Read().Should().BeFalse(); // nothing after the one object
        var root = doc.RootElement;
        root.EnumerateObject().Take(VerificationReportWriter.MetricKeys.Count).Select(p => p.Name)
            .Should().Equal(VerificationReportWriter.MetricKeys);
        root.GetProperty("positions").GetInt32().Should().Be(1024);
        root.GetProperty("routing_agreement").ValueKind.Should().Be(JsonValueKind.Null);
        root.GetProperty("max_abs_logit_diff").GetDouble().Should().Be(r.MaxAbsLogitDiff);
        root.GetProperty("kl_mean").GetDouble().Should().Be(r.KlMean);
        root.GetProperty("passed").GetBoolean().Should().Be(r.Passed);
        root.GetProperty("unstable").GetProperty("count").GetInt32().Should().Be(r.Unstable.Count);
        root.GetProperty("artifact").GetString().Should().Be("fake");
    }

    [Fact]
    public void TextTableListsEveryMetric()
    {
        var g = GoldenSet.Load(GoldenSetTests.Eval("tiny-dsv3-fp8"));
        var r = GoldenComparer.Compare(g, new ArtifactOutputs((float[])g.Logits.Clone(), null, null), VerificationTolerances.ForPreset("fp8-exact"));
        var text = VerificationReportWriter.ToText(r);
        foreach (var key in VerificationReportWriter.MetricKeys.Where(k => k is not ("passed" or "status")))
            text.Should().Contain(key);
        text.Should().Contain("unstable positions (near-tie routing): none").And.EndWith("PASSED" + Environment.NewLine);
    }
}
