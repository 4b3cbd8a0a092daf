using System.Text.Json.Nodes;
using Converter.Decoder.Onnx;

namespace Converter.Models;

/// <summary>A tensor the architecture expects in a checkpoint (logical BF16/F32 form, before quantization).</summary>
public sealed record ExpectedTensor(string Name, long[] Shape, TensorRole Role);

/// <summary>
/// The family contract: one class per model family (in its own folder under <c>Models/</c>, registered in
/// <see cref="ArchitectureRegistry"/>) maps its config and tensor names, declares its routing, and builds what the
/// pipelines need from it: the ONNX attention (<see cref="Onnx"/>), the GGUF mapping (<see cref="Gguf"/>), the MoE
/// and dense blocks calibration taps (<see cref="Moe"/>, <see cref="DenseMlp"/>). Pipelines talk to this, never to
/// names. Unknown tensor names fail loudly (<see cref="Classify"/> throws), as llama.cpp's converter does.
/// </summary>
public abstract class ModelArchitecture
{
    public abstract string ModelType { get; }
    public abstract ConfigJson Config { get; }
    public abstract int VocabSize { get; }
    public abstract int HiddenSize { get; }
    public abstract int NumLayers { get; }
    /// <summary>Multi-token-prediction layers stored after the main layers (not part of the main forward pass).</summary>
    public abstract int NumMtpLayers { get; }
    public abstract int NumRoutedExperts { get; }
    public abstract int NumExpertsPerToken { get; }
    public abstract bool IsMoeLayer(int layer);
    /// <summary>Routed experts form this many contiguous groups (group-limited routing); 1 when the family has none.</summary>
    public virtual int NumExpertGroups => 1;
    /// <summary>Groups a token may draw its experts from (DeepSeek-V3's topk_group).</summary>
    public virtual int TopkExpertGroups => 1;

    /// <summary>Every MoE layer, main layers first, then MTP layers (which have their own experts).</summary>
    public IReadOnlyList<int> MoeLayers()
    {
        var list = new List<int>();
        for (int l = 0; l < NumLayers + NumMtpLayers; l++)
            if (IsMoeLayer(l)) list.Add(l);
        return list;
    }

    /// <summary>Every tensor of a complete BF16 checkpoint of this config, in a stable order.</summary>
    public abstract IReadOnlyList<ExpectedTensor> ExpectedTensors();

    /// <summary>The role of a checkpoint tensor; throws <see cref="InvalidDataException"/> for a name it does not know.</summary>
    public abstract TensorRole Classify(string name);

    /// <summary>True for the projection weights DeepSeek's official FP8 layout stores as 128x128-block e4m3.</summary>
    public virtual bool IsFp8Quantized(TensorRole role) => role.IsLinearWeight;

    /// <summary>The block-scale tensor of a quantized weight (DeepSeek-V3's <c>&lt;weight&gt;_scale_inv</c> by default).</summary>
    public virtual string ScaleTensorName(string weightName) => weightName + "_scale_inv";

    /// <summary>The weight a block-scale tensor belongs to (the inverse of <see cref="ScaleTensorName"/>), or null
    /// where <paramref name="scaleName"/> is not a scale name of this family.</summary>
    public virtual string? ScaledWeightName(string scaleName) =>
        scaleName.EndsWith(".weight_scale_inv", StringComparison.Ordinal) ? scaleName[..^"_scale_inv".Length] : null;

    /// <summary>What <c>quantize --scheme fp8-block</c> stores a 2-D tensor of this role as: the family's official
    /// layout. Default: <see cref="WeightEncoding.Fp8Block"/> (float32 scales) where <see cref="IsFp8Quantized"/>,
    /// otherwise <see cref="WeightEncoding.Dense"/> (unchanged).</summary>
    public virtual WeightEncoding OfficialEncoding(TensorRole role) => IsFp8Quantized(role) ? WeightEncoding.Fp8Block : WeightEncoding.Dense;

    /// <summary>config.json's <c>quantization_config</c> of the official layout (DeepSeek-V3's by default).</summary>
    public virtual JsonObject OfficialQuantizationConfig() => new()
    {
        ["activation_scheme"] = "dynamic",
        ["fmt"] = "e4m3",
        ["quant_method"] = "fp8",
        ["weight_block_size"] = new JsonArray(128, 128),
    };

    /// <summary>True where the family's official files lay tensors out as huggingface safetensors' <c>save_file</c>
    /// does (dtype by safetensors' enum, descending, then the name); false: source order, each scale after its weight.</summary>
    public virtual bool UsesSafetensorsSaveOrder => false;

    /// <summary>True where <c>quantize --scheme bf16</c> narrows a stored F32 / F16 tensor of this role to BF16
    /// (default: everything but the router's selection bias).</summary>
    public virtual bool NarrowsToBf16(TensorRole role) => role.Kind != TensorKind.RouterBias;

    /// <summary>RMSNorm epsilon of every norm of the main graph.</summary>
    public abstract double RmsNormEps { get; }

    /// <summary>Embedding, final norm, head and the per-layer norms around attention and MLP.</summary>
    public virtual DecoderTensorNames Names => DecoderTensorNames.HuggingFace;

    /// <summary>MoE layer <paramref name="layer"/>'s router, experts, shared expert and routing rule.</summary>
    public abstract MoeBlock Moe(int layer);

    /// <summary>Dense (non-MoE) layer <paramref name="layer"/>'s SwiGLU weights.</summary>
    public abstract FeedForwardWeights DenseMlp(int layer);

    /// <summary>The routed experts' names, for layer <paramref name="layer"/>: what differs between expert-parallel ranks.</summary>
    public bool IsRoutedExpert(string tensor) => Classify(tensor).Kind == TensorKind.RoutedExpert;

    /// <summary>What the family contributes to the ONNX decoder graph; null where ONNX export is not supported.</summary>
    public virtual IOnnxDecoderFamily? Onnx => null;

    /// <summary>The GGUF mapping (llama.cpp architecture, keys, tensors); throws <see cref="NotSupportedException"/> with
    /// the reason where llama.cpp cannot run this checkpoint at all.</summary>
    /// <param name="directory">The checkpoint folder (for tokenizer files).</param>
    public virtual GgufModelPlan Gguf(string directory, string modelName) =>
        throw new NotSupportedException($"{directory}: no GGUF mapping for model_type '{ModelType}'");

    /// <summary>The importance-matrix forward of layer <paramref name="layer"/>'s weights before its MoE block (attention, a
    /// dense MLP), under llama.cpp's GGUF names; null where the family has none (calibrate --imatrix refuses it).</summary>
    public virtual Calibration.IImatrixLayer? ImatrixLayer(ModelCheckpoint checkpoint, int layer) => null;

    /// <summary>llama.cpp's names of MoE layer <paramref name="layer"/>'s router and experts; null without <see cref="ImatrixLayer"/>.</summary>
    public virtual Calibration.ImatrixMoeNames? ImatrixMoe(int layer) => null;

    /// <summary>Family-specific lines of <c>inspect</c> (attention kind, routing, ...).</summary>
    public virtual IReadOnlyList<ArchitectureFact> Facts() => [];

    /// <summary>Shared experts per MoE layer (0 where the family has none).</summary>
    public int NumSharedExpertsOf(int layer) => IsMoeLayer(layer) && Moe(layer).Shared is { } s ? (int)(s.Intermediate / Moe(layer).ExpertIntermediate) : 0;
}
