namespace Converter.Models;

/// <summary>A tensor the architecture expects in a checkpoint (logical BF16/F32 form, before quantization).</summary>
public sealed record ExpectedTensor(string Name, long[] Shape, TensorRole Role);

/// <summary>
/// One class per model family maps its config and tensor names. Pipelines talk to this, never to names.
/// Unknown tensor names fail loudly (<see cref="Classify"/> throws), as llama.cpp's converter does.
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
}
