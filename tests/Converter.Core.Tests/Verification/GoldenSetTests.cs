using System.Runtime.InteropServices;
using System.Text.Json;
using Converter.Formats.Safetensors;
using Converter.Models;
using Converter.Tensors;
using Converter.Verification;

namespace Converter.Tests.Verification;

public class GoldenSetTests
{
    public static string Eval(string model) => TestData.Golden(model, "eval.safetensors");

    [Fact]
    public void LoadsDsv3GoldenWithShapesFromTheReadme()
    {
        var g = GoldenSet.Load(Eval("tiny-dsv3"));
        (g.Batch, g.Seq, g.Vocab).Should().Be((8, 128, 256));
        g.Nll.Should().HaveCount(8 * 127);
        (g.HiddenStateCount, g.HiddenSize).Should().Be((5, 256)); // 4 layers + embedding
        (g.MoeLayers, g.TopK).Should().Be((3, 4));                // layer 0 dense; top-4 experts
        g.HasRouting.Should().BeTrue();
    }

    [Fact]
    public void Fp8GoldenHasNoRoutingSoEveryPositionIsStable()
    {
        var g = GoldenSet.Load(Eval("tiny-dsv3-fp8"));
        g.HasRouting.Should().BeFalse();
        g.HiddenStates.Should().BeNull();
        g.StableMask(1e-4).Should().AllSatisfy(x => x.Should().BeTrue());
    }

    [Theory]
    [InlineData("tiny-dsv3")]
    [InlineData("tiny-dsv3-fp8")]
    [InlineData("tiny-qwen3moe")]
    public void GoldenNllMatchesItsLogitsAndMetaJson(string model)
    {
        // The stored nll was computed in float64 by transformers; recomputing it from the float32 logits with the
        // comparer's kernel must agree, and its mean must be meta.json's eval_mean_nll.
        var g = GoldenSet.Load(Eval(model));
        double worst = 0, sum = 0;
        for (int b = 0; b < g.Batch; b++)
            for (int s = 0; s < g.Seq - 1; s++)
            {
                var row = g.Logits.AsSpan((b * g.Seq + s) * g.Vocab, g.Vocab);
                var r = PositionMetrics.Compute(row, row, g.Tokens[b * g.Seq + s + 1]);
                worst = Math.Max(worst, Math.Abs(r.Nll - g.Nll[b * (g.Seq - 1) + s]));
                sum += g.Nll[b * (g.Seq - 1) + s];
            }
        worst.Should().BeLessThan(1e-4);
        using var meta = JsonDocument.Parse(File.ReadAllText(TestData.Golden(model, "meta.json")));
        (sum / (g.Batch * (g.Seq - 1))).Should().BeApproximately(meta.RootElement.GetProperty("eval_mean_nll").GetDouble(), 1e-6);
    }

    [Fact]
    public void ChecksAgainstTheModelConfig()
    {
        var g = GoldenSet.Load(Eval("tiny-dsv3"));
        using var ckpt = ModelCheckpoint.Open(TestData.Model("tiny-dsv3"));
        g.CheckModel(ckpt.Architecture); // matches

        var vocab = () => g.CheckModel(vocabSize: 512);
        vocab.Should().Throw<InvalidDataException>().WithMessage("*eval.safetensors*'logits'*vocabulary 256*vocab_size is 512*");
        var seq = () => g.CheckModel(vocabSize: 256, maxPositions: 64);
        seq.Should().Throw<InvalidDataException>().WithMessage("*'tokens'*sequence length 128*max_position_embeddings 64*");
        var layers = () => g.CheckModel(vocabSize: 256, numLayers: 3);
        layers.Should().Throw<InvalidDataException>().WithMessage("*'hidden_states_seq0'*5 entries*3 layers*");
        var k = () => g.CheckModel(vocabSize: 256, expertsPerToken: 8);
        k.Should().Throw<InvalidDataException>().WithMessage("*'route_topk_idx'*4 experts*8*");
    }

    [Fact]
    public void ChecksAgainstAConfigOfAnUnmappedFamily()
    {
        var qwenConfig = ConfigJson.Load(TestData.Model("tiny-qwen3moe"));
        GoldenSet.Load(Eval("tiny-qwen3moe")).CheckModel(qwenConfig);
        var act = () => GoldenSet.Load(Eval("tiny-dsv3")).CheckModel(qwenConfig);
        act.Should().Throw<InvalidDataException>().WithMessage("*'hidden_states_seq0' has hidden size 256*hidden_size is 192*");
        var dsv3 = () => GoldenSet.Load(Eval("tiny-qwen3moe")).CheckModel(ConfigJson.Load(TestData.Model("tiny-dsv3")));
        dsv3.Should().Throw<InvalidDataException>().WithMessage("*hidden size 192*hidden_size is 256*");
    }

    [Fact]
    public void RejectsArtifactOutputsOfTheWrongVocabulary()
    {
        var g = GoldenSet.Load(Eval("tiny-dsv3-fp8"));
        var act = () => g.CheckOutputs(new ArtifactOutputs(new float[8 * 128 * 255], null, null), "fake runner");
        act.Should().Throw<InvalidDataException>().WithMessage("fake runner*vocabulary 255*256*");
    }

    // ---- bad golden files -------------------------------------------------------------------------------

    private sealed record T(string Name, DType DType, long[] Shape, byte[]? Data = null);

    /// <summary>Writes a single-file safetensors with the given tensors (zero-filled unless data given).</summary>
    private static string Write(TestData.TempDir dir, params T[] tensors)
    {
        var folder = dir[Guid.NewGuid().ToString("N")];
        using (var w = new SafetensorsWriter(folder, tensors.Select(t => new TensorSpec(t.Name, t.DType, t.Shape)).ToList(), long.MaxValue, false))
        {
            foreach (var t in tensors)
                w.Write(t.Name, t.Data ?? new byte[new TensorSpec(t.Name, t.DType, t.Shape).ByteLength]);
            w.Commit();
        }
        return Path.Combine(folder, "model.safetensors");
    }

    private static T Tokens(long b = 2, long s = 4) => new("tokens", DType.I32, [b, s]);
    private static T Logits(long b = 2, long s = 4, long v = 8) => new("logits", DType.F32, [b, s, v]);
    private static T Nll(long b = 2, long s = 3) => new("nll", DType.F32, [b, s]);

    [Fact]
    public void MinimalValidFileLoads()
    {
        using var dir = new TestData.TempDir();
        var g = GoldenSet.Load(Write(dir, Tokens(), Logits(), Nll()));
        (g.Batch, g.Seq, g.Vocab, g.HasRouting).Should().Be((2, 4, 8, false));
    }

    [Fact]
    public void MissingLogitsNamesFileAndTensor()
    {
        using var dir = new TestData.TempDir();
        var path = Write(dir, Tokens(), Nll());
        var act = () => GoldenSet.Load(path);
        act.Should().Throw<InvalidDataException>().WithMessage($"{path}: tensor 'logits' is missing");
    }

    [Fact]
    public void LogitsWhoseSequenceLengthDisagreesWithTokens()
    {
        using var dir = new TestData.TempDir();
        var path = Write(dir, Tokens(2, 4), Logits(2, 5), Nll());
        var act = () => GoldenSet.Load(path);
        act.Should().Throw<InvalidDataException>().WithMessage($"{path}: tensor 'logits' has shape [2, 5, 8], expected [2, 4, vocab]*");
    }

    [Fact]
    public void NllOfTheWrongLength()
    {
        using var dir = new TestData.TempDir();
        var path = Write(dir, Tokens(), Logits(), Nll(2, 4));
        var act = () => GoldenSet.Load(path);
        act.Should().Throw<InvalidDataException>().WithMessage($"{path}: tensor 'nll' has shape [2, 4], expected [2, 3]*");
    }

    [Fact]
    public void LogitsOfTheWrongRankOrDtype()
    {
        using var dir = new TestData.TempDir();
        var rank = Write(dir, Tokens(), new T("logits", DType.F32, [8, 8]), Nll());
        ((Action)(() => GoldenSet.Load(rank))).Should().Throw<InvalidDataException>().WithMessage("*'logits' has rank 2*expected rank 3");
        var dtype = Write(dir, new T("tokens", DType.F32, [2, 4]), Logits(), Nll());
        ((Action)(() => GoldenSet.Load(dtype))).Should().Throw<InvalidDataException>().WithMessage("*'tokens' is F32, expected an integer dtype");
    }

    [Fact]
    public void RoutingMarginWithoutIndicesAndMismatchedRoutingShapes()
    {
        using var dir = new TestData.TempDir();
        var lone = Write(dir, Tokens(), Logits(), Nll(), new T("route_margin", DType.F32, [3, 2, 4]));
        ((Action)(() => GoldenSet.Load(lone))).Should().Throw<InvalidDataException>()
            .WithMessage($"{lone}: tensor 'route_topk_idx' is missing while 'route_margin' is present*");

        var badIdx = Write(dir, Tokens(), Logits(), Nll(), new T("route_topk_idx", DType.I32, [3, 2, 5, 4]), new T("route_margin", DType.F32, [3, 2, 4]));
        ((Action)(() => GoldenSet.Load(badIdx))).Should().Throw<InvalidDataException>()
            .WithMessage($"{badIdx}: tensor 'route_topk_idx' has shape [3, 2, 5, 4], expected [moe_layers, 2, 4, k]*");

        var badMargin = Write(dir, Tokens(), Logits(), Nll(), new T("route_topk_idx", DType.I32, [3, 2, 4, 4]), new T("route_margin", DType.F32, [2, 2, 4]));
        ((Action)(() => GoldenSet.Load(badMargin))).Should().Throw<InvalidDataException>()
            .WithMessage($"{badMargin}: tensor 'route_margin' has shape [2, 2, 4], expected [3, 2, 4]*");
    }

    [Fact]
    public void HiddenStatesOfTheWrongSequenceLength()
    {
        using var dir = new TestData.TempDir();
        var path = Write(dir, Tokens(), Logits(), Nll(), new T("hidden_states_seq0", DType.F32, [3, 5, 16]));
        ((Action)(() => GoldenSet.Load(path))).Should().Throw<InvalidDataException>()
            .WithMessage($"{path}: tensor 'hidden_states_seq0' has shape [3, 5, 16], expected [layers + 1, 4, hidden]*");
    }

    [Fact]
    public void TokenOutsideTheVocabulary()
    {
        using var dir = new TestData.TempDir();
        var tokens = new int[8];
        tokens[5] = 8;
        var path = Write(dir, new T("tokens", DType.I32, [2, 4], MemoryMarshal.AsBytes(tokens.AsSpan()).ToArray()), Logits(), Nll());
        ((Action)(() => GoldenSet.Load(path))).Should().Throw<InvalidDataException>()
            .WithMessage($"{path}: tensor 'tokens' element 5 is token 8, outside the vocabulary [0, 8)*");
    }

    [Fact]
    public void NonFiniteGoldenLogits()
    {
        using var dir = new TestData.TempDir();
        var logits = new float[2 * 4 * 8];
        logits[17] = float.NaN;
        var path = Write(dir, Tokens(), new T("logits", DType.F32, [2, 4, 8], MemoryMarshal.AsBytes(logits.AsSpan()).ToArray()), Nll());
        ((Action)(() => GoldenSet.Load(path))).Should().Throw<InvalidDataException>().WithMessage($"{path}: tensor 'logits' element 17 is NaN*");
    }
}
