using System.Buffers.Binary;
using System.Text;
using System.Text.Json.Nodes;
using Converter.Formats.CompressedTensors;
using Converter.Formats.Gguf;
using Converter.Formats.Onnx.Proto;
using Converter.Formats.Safetensors;
using Converter.Numerics.Ggml;
using Converter.Tensors;
using Converter.Verification;
using Google.Protobuf;

namespace Converter.Fuzz;

/// <summary>
/// Writes the seed corpora: small files cut from the bundled golden/ inputs (a few tensors of each shard kind, goldens
/// sliced to one sequence of four tokens, every config.json) so AFL++ starts from valid files a few KB long.
/// </summary>
public static class SeedCorpus
{
    public static void Write(string repo, string corpus)
    {
        string G(params string[] p) => Path.Combine([repo, "golden", .. p]);
        void Put(string target, string name, byte[] bytes)
        {
            Directory.CreateDirectory(Path.Combine(corpus, target));
            File.WriteAllBytes(Path.Combine(corpus, target, name), bytes);
        }

        // safetensors: the smallest tensors of a BF16, an FP8 (F32 scale_inv) and a DeepSeek-V4 FP8/FP4 (I8, E8M0) shard
        Put("safetensors", "bf16-shard", CutShard(G("models", "tiny-dsv3", "model-00001-of-00003.safetensors"), 5));
        Put("safetensors", "fp8-shard", CutShard(G("models", "tiny-dsv3-fp8", "model-00002-of-00003.safetensors"), 6));
        Put("safetensors", "dsv4-fp8-fp4-shard", CutShard(G("models", "tiny-dsv4-fp8", "model.safetensors"), 8));

        // index: tiny-dsv3's index with its weight_map reduced to the harness's two shards
        var index = JsonNode.Parse(File.ReadAllText(G("models", "tiny-dsv3", SafetensorsCheckpoint.IndexFileName)))!.AsObject();
        index["weight_map"] = new JsonObject
        {
            ["lm_head.weight"] = "model-00002-of-00002.safetensors",
            ["model.embed_tokens.weight"] = "model-00001-of-00002.safetensors",
            ["model.norm.weight"] = "model-00001-of-00002.safetensors",
        };
        index["metadata"] = new JsonObject { ["total_size"] = 36 };
        Put("index", "two-shards.json", Encoding.UTF8.GetBytes(index.ToJsonString()));

        // config: every bundled model's config.json and the full-size configs
        foreach (var dir in Directory.GetDirectories(G("models")).Order(StringComparer.Ordinal))
            Put("config", Path.GetFileName(dir) + ".json", File.ReadAllBytes(Path.Combine(dir, "config.json")));
        foreach (var file in Directory.GetFiles(G("configs"), "*.json").Order(StringComparer.Ordinal))
            Put("config", "full-" + Path.GetFileName(file), File.ReadAllBytes(file));

        // compressed-tensors: what quantize --scheme int4 writes, and a Kimi-K2-Thinking-like asymmetric one
        Put("compressed-tensors", "sym-g32.json", Encoding.UTF8.GetBytes(
            new CompressedTensorsConfig(32, true, ["Linear"], ["lm_head", "re:.*self_attn.*"]).ToJson().ToJsonString()));
        Put("compressed-tensors", "asym-g128.json", Encoding.UTF8.GetBytes(
            new CompressedTensorsConfig(128, false, ["Linear"], ["lm_head"], "mse", "weight").ToJson().ToJsonString()));

        // golden: tiny-dsv3 (full logits, hidden states, routing) and tiny-dsv4 (residual streams, selections), one sequence of 4
        Put("golden", "dsv3-eval", CutGolden(G("tiny-dsv3", "eval.safetensors")));
        Put("golden", "dsv4-eval", CutGolden(G("tiny-dsv4", "eval.safetensors")));
        Put("golden", "dsv3-compact", CompactGolden(G("tiny-dsv3", "eval.safetensors")));

        // gguf: tiny-dsv3's shapes and embedding rows as deepseek2 metadata, F32 and Q8_0 tensors
        Put("gguf", "deepseek2-f32-q8_0.gguf", TinyGguf(G("models", "tiny-dsv3"), withAlignment: false));
        Put("gguf", "deepseek2-aligned64.gguf", TinyGguf(G("models", "tiny-dsv3"), withAlignment: true));

        // onnx: a one-node graph carrying each converter.weights metadata the verify presets read
        Put("onnx", "fp8.onnx", TinyOnnx(("converter.weights", "fp8")));
        Put("onnx", "int4.onnx", TinyOnnx(("converter.weights", "int4"), ("converter.int4", "g32 sym rtn, 48 routed experts, 3 dense projection(s)")));
        Put("onnx", "plain.onnx", TinyOnnx());

        // placement: shard's placement.json for tiny-dsv3 at 2 ranks
        Put("placement", "tiny-dsv3-2-ranks.json", Encoding.UTF8.GetBytes(TinyPlacement(G("models", "tiny-dsv3"))));
    }

    /// <summary>A shard of the <paramref name="count"/> smallest tensors of <paramref name="path"/>, bytes and metadata kept.</summary>
    private static byte[] CutShard(string path, int count)
    {
        using var f = SafetensorsFile.Open(path);
        var keep = f.Tensors.OrderBy(t => t.ByteLength).ThenBy(t => t.Name, StringComparer.Ordinal).Take(count).ToList();
        return Build(keep.Select(t => (t.Name, t.DType, t.Shape, f.Read(t).Bytes.ToArray())).ToList(), f.Metadata);
    }

    private static byte[] Build(List<(string Name, DType DType, long[] Shape, byte[] Data)> tensors, IReadOnlyDictionary<string, string>? meta)
    {
        var entries = new List<(string, DType, long[], long, long)>();
        long at = 0;
        foreach (var t in tensors)
        {
            entries.Add((t.Name, t.DType, t.Shape, at, at + t.Data.Length));
            at += t.Data.Length;
        }
        var header = SafetensorsHeader.Build(entries, meta);
        var ms = new MemoryStream();
        Span<byte> len = stackalloc byte[8];
        BinaryPrimitives.WriteInt64LittleEndian(len, header.Length);
        ms.Write(len);
        ms.Write(header);
        foreach (var t in tensors) ms.Write(t.Data);
        return ms.ToArray();
    }

    /// <summary>The leading block <paramref name="to"/> of a row-major tensor of shape <paramref name="from"/>.</summary>
    private static byte[] Slice(ReadOnlySpan<byte> data, long[] from, long[] to, int elementSize)
    {
        long count = elementSize;
        foreach (var d in to) count *= d;
        var result = new byte[count];
        long rows = 1;
        for (int i = 0; i < to.Length - 1; i++) rows *= to[i];
        int rowBytes = (int)(to[^1] * elementSize);
        var index = new long[to.Length];
        for (long r = 0; r < rows; r++)
        {
            long src = 0;
            for (int i = 0; i < from.Length; i++) src = src * from[i] + index[i];
            data.Slice((int)(src * elementSize), rowBytes).CopyTo(result.AsSpan((int)(r * rowBytes)));
            for (int i = to.Length - 2; i >= 0 && ++index[i] == to[i]; i--) index[i] = 0;
        }
        return result;
    }

    /// <summary>One sequence of 4 tokens, vocabulary 32 (tokens taken modulo), hidden width 8, 2 layers of each record.</summary>
    private static byte[] CutGolden(string path)
    {
        using var f = SafetensorsFile.Open(path);
        const int Seq = 4, Vocab = 32, Width = 8;
        var cut = new List<(string, DType, long[], byte[])>();
        foreach (var t in f.Tensors.OrderBy(t => t.Name, StringComparer.Ordinal))
        {
            long[] to = t.Name switch
            {
                GoldenSet.TokensName => [1, Seq],
                GoldenSet.LogitsName => [1, Seq, Vocab],
                GoldenSet.NllName => [1, Seq - 1],
                GoldenSet.HiddenStatesName => [2, Seq, Width],
                GoldenSet.RouteMarginName or "indexer_margin" => [2, 1, Seq],
                GoldenSet.RouteTopKName or "indexer_topk_idx" => [2, 1, Seq, t.Shape[3]],
                "route_layers" or "indexer_layers" => [2],
                "hc_states_seq0" => [2, 2, t.Shape[2], Width],
                "final_hidden_seq0" => [2, Width],
                _ => throw new InvalidDataException($"{path}: no cut for '{t.Name}'"),
            };
            var bytes = Slice(f.Read(t).Bytes, t.Shape, to, DTypeInfo.SizeOf(t.DType));
            if (t.Name == GoldenSet.TokensName)
                for (int i = 0; i < bytes.Length; i += 4)
                    BinaryPrimitives.WriteInt32LittleEndian(bytes.AsSpan(i), BinaryPrimitives.ReadInt32LittleEndian(bytes.AsSpan(i)) % Vocab);
            cut.Add((t.Name, t.DType, to, bytes));
        }
        return Build(cut, f.Metadata);
    }

    /// <summary>The compact form (top-k, tail samples, log-sum-exp) of the cut tiny-dsv3 golden, as `converter golden` writes it.</summary>
    private static byte[] CompactGolden(string path)
    {
        var tmp = Path.Combine(Path.GetTempPath(), $"converter-seed-{Environment.ProcessId}");
        Directory.CreateDirectory(tmp);
        try
        {
            var full = Path.Combine(tmp, "full.safetensors");
            File.WriteAllBytes(full, CutGolden(path));
            var g = GoldenSet.Load(full);
            var outPath = Path.Combine(tmp, "compact.safetensors");
            using (var w = new GoldenWriter(outPath, g.Tokens, g.Batch, g.Seq, g.Vocab, new GoldenLogitsForm(false, 4, 4),
                       new GoldenIdentity { VocabSize = g.Vocab, ModelType = "deepseek_v3" }, 0, 0, 0, 0, overwrite: true))
            {
                w.AddLogits(0, g.Batch, g.Logits!);
                w.Commit();
            }
            return File.ReadAllBytes(outPath);
        }
        finally
        {
            Directory.Delete(tmp, true);
        }
    }

    private static byte[] TinyGguf(string modelDir, bool withAlignment)
    {
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(modelDir, "config.json")))!;
        using var ckpt = SafetensorsCheckpoint.Open(modelDir);
        var emb = ckpt.Read("model.embed_tokens.weight");
        const int Rows = 4, Width = 32;
        var values = new float[Rows * Width];
        var bf16 = Slice(emb.Bytes, emb.Info.Shape, [Rows, Width], 2);
        for (int i = 0; i < values.Length; i++) values[i] = BitConverter.Int32BitsToSingle(BinaryPrimitives.ReadUInt16LittleEndian(bf16.AsSpan(2 * i)) << 16);

        var path = Path.Combine(Path.GetTempPath(), $"converter-seed-{Environment.ProcessId}.gguf");
        using (var w = new GgufWriter(path, withAlignment ? 64u : GgufFormat.DefaultAlignment))
        {
            w.Add("general.architecture", GgufValue.String("deepseek2"));
            if (withAlignment) w.Add(GgufFormat.AlignmentKey, GgufValue.UInt32(64));
            w.Add("general.file_type", GgufValue.UInt32(7));
            w.Add("deepseek2.block_count", GgufValue.UInt32((uint)config["num_hidden_layers"]!.GetValue<int>()));
            w.Add("deepseek2.embedding_length", GgufValue.UInt32(Width));
            w.Add("deepseek2.expert_count", GgufValue.UInt32((uint)config["n_routed_experts"]!.GetValue<int>()));
            w.Add("deepseek2.expert_used_count", GgufValue.UInt32((uint)config["num_experts_per_tok"]!.GetValue<int>()));
            w.Add("deepseek2.rope.freq_base", GgufValue.Float32(config["rope_theta"]!.GetValue<float>()));
            w.Add("deepseek2.expert_weights_norm", GgufValue.Bool(true));
            w.Add("tokenizer.ggml.tokens", GgufValue.Array(new[] { "<s>", "</s>", "a", "b" }));
            w.Add("tokenizer.ggml.scores", GgufValue.Array(new[] { 0f, 0f, -1f, -2f }));
            w.Add("tokenizer.ggml.token_type", GgufValue.Array(new[] { 3, 3, 1, 1 }));
            w.Add("test.nested", GgufValue.Array(new[] { GgufValue.Array(new ulong[] { 1, 2 }), GgufValue.Array(new short[] { -1 }) }));
            w.AddTensor("token_embd.weight", [Width, Rows], GgmlType.F32);
            w.AddTensor("output_norm.weight", [Width], GgmlType.F32);
            w.AddTensor("output.weight", [Width, Rows], GgmlType.Q8_0);
            w.WriteHeader();
            w.AppendTensor("token_embd.weight", values);
            w.AppendTensor("output_norm.weight", values.AsSpan(0, Width));
            w.AppendTensor("output.weight", values);
            w.Commit();
        }
        var bytes = File.ReadAllBytes(path);
        File.Delete(path);
        return bytes;
    }

    private static byte[] TinyOnnx(params (string Key, string Value)[] metadata)
    {
        var m = new ModelProto { IrVersion = 11, ProducerName = "converter", Graph = new GraphProto { Name = "g" } };
        m.OpsetImport.Add(new OperatorSetIdProto { Domain = "", Version = 23 });
        var x = new ValueInfoProto { Name = "x", Type = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = 1 } } };
        x.Type.TensorType.Shape = new TensorShapeProto();
        x.Type.TensorType.Shape.Dim.Add(new TensorShapeProto.Types.Dimension { DimValue = 2 });
        m.Graph.Input.Add(x);
        m.Graph.Output.Add(new ValueInfoProto { Name = "y", Type = x.Type });
        var w = new TensorProto { Name = "w", DataType = 1 };
        w.Dims.Add(2);
        w.FloatData.Add([0.5f, -1f]);
        m.Graph.Initializer.Add(w);
        var node = new NodeProto { OpType = "Add", Name = "add" };
        node.Input.Add(["x", "w"]);
        node.Output.Add("y");
        m.Graph.Node.Add(node);
        foreach (var (k, v) in metadata) m.MetadataProps.Add(new StringStringEntryProto { Key = k, Value = v });
        return m.ToByteArray();
    }

    private static string TinyPlacement(string modelDir)
    {
        var arch = Converter.Models.ArchitectureRegistry.Load(modelDir);
        var placement = Converter.Sharding.PlacementPlanner.Plan(arch, new Converter.Sharding.PlacementOptions(2));
        return Converter.Sharding.PlacementJson.ToJson(placement).ToJsonString();
    }
}
