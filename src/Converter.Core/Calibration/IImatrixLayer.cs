namespace Converter.Calibration;

/// <summary>
/// A family's part of an importance matrix (<see cref="ImatrixAccumulator"/>): the inputs of every weight of one decoder
/// layer that llama.cpp multiplies before the MoE block (attention, and a dense layer's MLP), computed from the
/// layer's input hidden state, under llama.cpp's GGUF tensor names and in the layout llama.cpp multiplies them (for
/// MLA: attn_k_b per head on q_nope, attn_v_b per head on the attention's latent output). The MoE block's weights
/// (router, shared and routed experts) are the same for every family and named by <see cref="ImatrixMoeNames"/>.
/// </summary>
public interface IImatrixLayer
{
    int Layer { get; }

    /// <summary>Declares this layer's entries (before any <see cref="Add"/>).</summary>
    void Declare(ImatrixAccumulator acc);

    /// <summary>hidden: the layer's input [sequences * length, hidden]; each sequence is causal from position 0.</summary>
    void Add(ReadOnlySpan<float> hidden, int sequences, int length, ImatrixAccumulator acc);
}

/// <summary>llama.cpp's names of an MoE layer's weights: the router, the shared experts (null where there are none)
/// and the stacked routed experts (3-D: one imatrix slice per expert).</summary>
public sealed record ImatrixMoeNames(string Router, string? SharedGate, string? SharedUp, string? SharedDown,
    string ExpertsGate, string ExpertsUp, string ExpertsDown)
{
    /// <summary>llama.cpp's common names (deepseek2, qwen3moe): blk.L.ffn_gate_inp, ffn_{gate,up,down}_shexp, ffn_{gate,up,down}_exps.</summary>
    public static ImatrixMoeNames Llama(int layer, bool shared) => new($"blk.{layer}.ffn_gate_inp.weight",
        shared ? $"blk.{layer}.ffn_gate_shexp.weight" : null, shared ? $"blk.{layer}.ffn_up_shexp.weight" : null,
        shared ? $"blk.{layer}.ffn_down_shexp.weight" : null,
        $"blk.{layer}.ffn_gate_exps.weight", $"blk.{layer}.ffn_up_exps.weight", $"blk.{layer}.ffn_down_exps.weight");
}
