using System.Diagnostics;
using Converter.Tools.Synth;

// synth -o DIR [--layers N] [--dense-layers K] [--experts E] [--top-k K] [--groups G] [--topk-groups T]
//       [--hidden H] [--vocab V] [--no-q-lora] [--mtp M] [--fp8] [--seed S] [--max-shard-size BYTES] [--overwrite]
if (args.Length > 0 && args[0] is "--v4" or "--deepseek-v4")
    return SynthV4(args[1..]);
if (args.Length == 0 || args.Contains("--help") || args.Contains("-h"))
{
    Console.WriteLine("""
        synth: write a deterministic synthetic DeepSeek-V3 checkpoint at real tensor shapes (benchmark input).
        synth --v4 -o DIR [--layers N] [--experts E] [--top-k K] [--hash-layers H] [--vocab V] [--seed S] [--max-shard-size B] [--overwrite]:
          a DeepSeek-V4 checkpoint in the hub BF16 layout at V4-Flash widths (then `converter quantize --scheme fp8-block`
          gives the official FP8/FP4 layout).
          -o, --output DIR        output folder (required)
          --layers N              main layers (default 2)
          --dense-layers K        first K layers dense (default 1)
          --experts E             routed experts per MoE layer (default 16)
          --top-k K               experts per token (default 8)
          --groups G / --topk-groups T   expert groups (default 8 / 4)
          --hidden H              hidden size (default 7168)
          --vocab V               vocabulary (default 129280)
          --moe-intermediate N    expert width (default 2048)
          --intermediate N        dense MLP width (default 18432)
          --no-q-lora             q_proj instead of q_a/q_b
          --q-lora N / --kv-lora N      MLA ranks (default 1536 / 512)
          --heads N               attention heads (default 128)
          --nope N / --rope N / --v-dim N   head dims (default 128 / 64 / 128)
          --no-yarn               no rope scaling
          --mtp M                 MTP layers (default 0)
          --fp8                   DeepSeek FP8 block layout instead of BF16
          --seed S                (default 1)
          --max-shard-size BYTES  (default 5000000000)
          --overwrite             replace the output folder
        """);
    return args.Length == 0 ? 2 : 0;
}
string? output = null;
var o = new SynthOptions();
bool overwrite = false;
for (int i = 0; i < args.Length; i++)
{
    string Next() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{args[i]} needs a value");
    switch (args[i])
    {
        case "-o" or "--output": output = Next(); break;
        case "--layers": o = o with { Layers = int.Parse(Next()) }; break;
        case "--dense-layers": o = o with { DenseLayers = int.Parse(Next()) }; break;
        case "--experts": o = o with { Experts = int.Parse(Next()) }; break;
        case "--top-k": o = o with { ExpertsPerToken = int.Parse(Next()) }; break;
        case "--groups": o = o with { Groups = int.Parse(Next()) }; break;
        case "--topk-groups": o = o with { TopkGroups = int.Parse(Next()) }; break;
        case "--hidden": o = o with { Hidden = int.Parse(Next()) }; break;
        case "--vocab": o = o with { Vocab = int.Parse(Next()) }; break;
        case "--moe-intermediate": o = o with { MoeIntermediate = int.Parse(Next()) }; break;
        case "--intermediate": o = o with { Intermediate = int.Parse(Next()) }; break;
        case "--no-q-lora": o = o with { QLoraRank = null }; break;
        case "--q-lora": o = o with { QLoraRank = int.Parse(Next()) }; break;
        case "--kv-lora": o = o with { KvLoraRank = int.Parse(Next()) }; break;
        case "--heads": o = o with { Heads = int.Parse(Next()) }; break;
        case "--nope": o = o with { NopeDim = int.Parse(Next()) }; break;
        case "--rope": o = o with { RopeDim = int.Parse(Next()) }; break;
        case "--v-dim": o = o with { VDim = int.Parse(Next()) }; break;
        case "--no-yarn": o = o with { Yarn = false }; break;
        case "--mtp": o = o with { MtpLayers = int.Parse(Next()) }; break;
        case "--fp8": o = o with { Fp8 = true }; break;
        case "--seed": o = o with { Seed = ulong.Parse(Next()) }; break;
        case "--max-shard-size": o = o with { MaxShardBytes = long.Parse(Next()) }; break;
        case "--overwrite": overwrite = true; break;
        default: Console.Error.WriteLine($"error: unknown argument {args[i]}"); return 2;
    }
}
if (output == null) { Console.Error.WriteLine("error: -o is required"); return 2; }
var clock = Stopwatch.StartNew();
long bytes;
try
{
    bytes = SyntheticCheckpoint.Write(output, o, overwrite);
}
catch (Exception e) when (e is InvalidDataException or IOException or ArgumentException)
{
    Console.Error.WriteLine($"error: {e.Message}");
    return 2;
}
Console.WriteLine($"wrote {bytes / 1e9:F2} GB to {output} in {clock.Elapsed.TotalSeconds:F1} s");
return 0;

static int SynthV4(string[] args)
{
    string? output = null;
    var o = new SynthV4Options();
    bool overwrite = false;
    for (int i = 0; i < args.Length; i++)
    {
        string Next() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{args[i]} needs a value");
        switch (args[i])
        {
            case "-o" or "--output": output = Next(); break;
            case "--layers": o = o with { Layers = int.Parse(Next()) }; break;
            case "--experts": o = o with { Experts = int.Parse(Next()) }; break;
            case "--top-k": o = o with { ExpertsPerToken = int.Parse(Next()) }; break;
            case "--hash-layers": o = o with { HashLayers = int.Parse(Next()) }; break;
            case "--vocab": o = o with { Vocab = int.Parse(Next()) }; break;
            case "--seed": o = o with { Seed = ulong.Parse(Next()) }; break;
            case "--max-shard-size": o = o with { MaxShardBytes = long.Parse(Next()) }; break;
            case "--overwrite": overwrite = true; break;
            default: Console.Error.WriteLine($"error: unknown argument {args[i]}"); return 2;
        }
    }
    if (output == null) { Console.Error.WriteLine("error: -o is required"); return 2; }
    var clock = Stopwatch.StartNew();
    try
    {
        long bytes = SyntheticV4Checkpoint.Write(output, o, overwrite);
        Console.WriteLine($"wrote {bytes / 1e9:F2} GB to {output} in {clock.Elapsed.TotalSeconds:F1} s");
        return 0;
    }
    catch (Exception e) when (e is InvalidDataException or IOException or ArgumentException)
    {
        Console.Error.WriteLine($"error: {e.Message}");
        return 2;
    }
}
