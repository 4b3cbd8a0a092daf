using System.Text.Json;
using System.Text.Json.Nodes;
using Converter.Decoder.Onnx;
using Converter.Models;
using Converter.Models.Tokenizers;
using Microsoft.Extensions.Logging;
using N = Converter.Decoder.Onnx.OnnxDecoderNames;

namespace Converter.Pipelines;

/// <summary>
/// The files beside model.onnx that make an export folder servable: the tokenizer (copied from the checkpoint, or a
/// byte-level one for a 256-token vocabulary without tokenizer.json), generation_config.json (copied, or derived from
/// config.json as transformers does) and, for a KV-cache decoder, onnxruntime-genai's genai_config.json. Everything
/// model-specific comes from the family's <see cref="IOnnxDecoderFamily"/> (cache shape, positions) and the
/// architecture, plus config.json's standard Hugging Face keys.
/// </summary>
public static class OnnxServingFiles
{
    public const string GenAiConfigFile = "genai_config.json", GenerationConfigFile = "generation_config.json";
    public const string TokenizerFile = "tokenizer.json", TokenizerConfigFile = "tokenizer_config.json";

    /// <summary>Tokenizer-related files copied as they are when the checkpoint has them.</summary>
    public static readonly string[] CopiedTokenizerFiles =
        [TokenizerFile, TokenizerConfigFile, "special_tokens_map.json", "tokenizer.model", "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json"];

    private static readonly JsonSerializerOptions Indented = new() { WriteIndented = true };

    /// <summary>Writes the side files into <paramref name="folder"/> (the export's staging folder) and returns their names.</summary>
    public static IReadOnlyList<string> Write(ModelCheckpoint ckpt, string folder, bool kvCache, ILogger logger)
    {
        var arch = ckpt.Architecture;
        var family = arch.Onnx ?? throw new NotSupportedException($"ONNX export does not support model_type '{arch.ModelType}'");
        var written = new List<string>();
        string src = ckpt.Directory;

        foreach (var name in CopiedTokenizerFiles)
            if (File.Exists(Path.Combine(src, name)))
            {
                File.Copy(Path.Combine(src, name), Path.Combine(folder, name));
                written.Add(name);
            }
        if (!written.Contains(TokenizerFile))
        {
            if (arch.VocabSize == ByteLevelTokenizerFiles.VocabSize && !written.Contains(TokenizerConfigFile))
            {
                WriteJson(Path.Combine(folder, TokenizerFile), ByteLevelTokenizerFiles.TokenizerJson(), indented: false);
                WriteJson(Path.Combine(folder, TokenizerConfigFile), ByteLevelTokenizerFiles.TokenizerConfigJson(family.MaxPositions));
                written.Add(TokenizerFile);
                written.Add(TokenizerConfigFile);
                logger.LogInformation("No tokenizer.json in {Dir}: wrote a byte-level tokenizer (token id = byte value) for its 256-token vocabulary", src);
            }
            else
            {
                logger.LogWarning("No tokenizer.json in {Dir} and vocab_size {Vocab} is not byte-level: the export has no tokenizer (token ids only)", src, arch.VocabSize);
            }
        }

        JsonObject generation;
        string genPath = Path.Combine(src, GenerationConfigFile);
        if (File.Exists(genPath))
        {
            generation = ReadObject(genPath);
            File.Copy(genPath, Path.Combine(folder, GenerationConfigFile));
        }
        else
        {
            generation = DerivedGenerationConfig(arch.Config);
            WriteJson(Path.Combine(folder, GenerationConfigFile), generation);
        }
        written.Add(GenerationConfigFile);

        if (kvCache)
        {
            WriteJson(Path.Combine(folder, GenAiConfigFile), GenAiConfig(arch, family, generation));
            written.Add(GenAiConfigFile);
        }
        return written;
    }

    /// <summary>What transformers derives from config.json when a checkpoint has no generation_config.json.</summary>
    public static JsonObject DerivedGenerationConfig(ConfigJson config)
    {
        var o = new JsonObject { ["_from_model_config"] = true };
        foreach (var key in new[] { "bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id" })
            if (config.Has(key)) o[key] = config.Root[key]!.DeepClone();
        return o;
    }

    /// <summary>
    /// onnxruntime-genai's model and search configuration for the KV-cache decoder. The cache is [batch, heads, past,
    /// head_size] per layer with present = past followed by the new tokens, so past and present are separate buffers
    /// (past_present_share_buffer false: a shared buffer would need an attention that writes into a max-length cache).
    /// </summary>
    public static JsonObject GenAiConfig(ModelArchitecture arch, IOnnxDecoderFamily family, JsonObject generation)
    {
        var config = arch.Config;
        var cache = family.KvCache;
        int context = family.MaxPositions;
        int[] eos = TokenIds(generation["eos_token_id"]) ?? TokenIds(config.Root["eos_token_id"]) ?? [];
        int? bos = TokenIds(generation["bos_token_id"])?.FirstOrDefault() ?? TokenIds(config.Root["bos_token_id"])?.FirstOrDefault();
        // Without a pad token genai pads (and, without an eos token, stops) with id 0; the first eos id is the usual pad.
        int pad = TokenIds(generation["pad_token_id"])?.FirstOrDefault() ?? TokenIds(config.Root["pad_token_id"])?.FirstOrDefault()
                  ?? (eos.Length > 0 ? eos[0] : 0);
        var model = new JsonObject
        {
            ["type"] = "decoder",
            ["context_length"] = context,
            ["vocab_size"] = arch.VocabSize,
            ["pad_token_id"] = pad,
            ["eos_token_id"] = new JsonArray(eos.Select(e => (JsonNode)e).ToArray()),
        };
        if (bos is { } b) model["bos_token_id"] = b;
        model["decoder"] = new JsonObject
        {
            ["session_options"] = new JsonObject { ["log_id"] = "onnxruntime-genai", ["provider_options"] = new JsonArray() },
            ["filename"] = OnnxExternalDataWriterName,
            ["head_size"] = cache.HeadSize,
            ["hidden_size"] = arch.HiddenSize,
            ["num_attention_heads"] = config.Int("num_attention_heads"),
            ["num_key_value_heads"] = cache.Heads,
            ["num_hidden_layers"] = arch.NumLayers,
            ["inputs"] = new JsonObject
            {
                ["input_ids"] = N.InputIds,
                ["attention_mask"] = N.AttentionMask,
                ["position_ids"] = N.PositionIds,
                ["past_key_names"] = N.PastKey(0).Replace(".0.", ".%d.", StringComparison.Ordinal),
                ["past_value_names"] = N.PastValue(0).Replace(".0.", ".%d.", StringComparison.Ordinal),
            },
            ["outputs"] = new JsonObject
            {
                ["logits"] = N.Logits,
                ["present_key_names"] = N.PresentKey(0).Replace(".0.", ".%d.", StringComparison.Ordinal),
                ["present_value_names"] = N.PresentValue(0).Replace(".0.", ".%d.", StringComparison.Ordinal),
            },
        };
        double Num(string key, double fallback) => generation[key] is JsonValue v && v.GetValueKind() == JsonValueKind.Number ? v.GetValue<double>() : fallback;
        bool doSample = generation["do_sample"] is JsonValue ds && ds.GetValueKind() is JsonValueKind.True;
        var search = new JsonObject
        {
            ["do_sample"] = doSample,
            ["max_length"] = context,
            ["min_length"] = 0,
            ["num_beams"] = 1,
            ["num_return_sequences"] = 1,
            ["past_present_share_buffer"] = false,
            ["temperature"] = Num("temperature", 1.0),
            ["top_k"] = (int)Num("top_k", 50),
            ["top_p"] = Num("top_p", 1.0),
            ["repetition_penalty"] = Num("repetition_penalty", 1.0),
            ["length_penalty"] = 1.0,
            ["no_repeat_ngram_size"] = 0,
            ["diversity_penalty"] = 0.0,
            ["early_stopping"] = true,
        };
        return new JsonObject { ["model"] = model, ["search"] = search };
    }

    private const string OnnxExternalDataWriterName = Formats.Onnx.OnnxExternalDataWriter.ModelFileName;

    /// <summary>An id or a list of ids (null, absent or anything else: null).</summary>
    private static int[]? TokenIds(JsonNode? n) => n switch
    {
        JsonValue v when v.GetValueKind() == JsonValueKind.Number => [v.GetValue<int>()],
        JsonArray a when a.All(x => x is JsonValue xv && xv.GetValueKind() == JsonValueKind.Number) => a.Select(x => x!.GetValue<int>()).ToArray(),
        _ => null,
    };

    private static JsonObject ReadObject(string path)
    {
        try
        {
            return JsonNode.Parse(File.ReadAllText(path)) as JsonObject ?? throw new InvalidDataException($"{path}: not a JSON object");
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{path}: not valid JSON ({e.Message})");
        }
    }

    private static void WriteJson(string path, JsonObject o, bool indented = true) =>
        File.WriteAllText(path, o.ToJsonString(indented ? Indented : null) + "\n");
}
