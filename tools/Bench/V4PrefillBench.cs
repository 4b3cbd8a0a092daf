using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text.Json.Nodes;
using Converter.Formats.Safetensors;
using Converter.Models;
using Converter.Numerics;
using Converter.Pipelines;
using Converter.Runtime;
using Converter.Tensors;

namespace Converter.Tools.Bench;

/// <summary>
/// DeepSeek-V4 prefill on ONNX Runtime against sequence length: the exported graph (sliding window, CSA with the
/// lightning indexer's top-k, HCA) against the same graph with every layer's attention replaced by full causal
/// attention (export's benchmark baseline), each run in its own child process so its peak RSS is its own.
/// </summary>
public static class V4PrefillBench
{
    /// <summary>A mid-size V4: hidden 1024, 4 layers (sliding, CSA m=4, HCA m=128, CSA m=4), 8 heads of 128 sharing one
    /// K=V head (rope 32), q_lora 512, 4 output groups of 256, window 128, indexer 16 heads x 64 top-512, hc_mult 4 with
    /// 20 Sinkhorn iterations, 16 experts of 256 top-2 plus 1 shared (layer 0 hashed), vocab 4096.</summary>
    public static JsonObject Config() => new()
    {
        ["architectures"] = new JsonArray("DeepseekV4ForCausalLM"), ["model_type"] = "deepseek_v4", ["torch_dtype"] = "bfloat16",
        ["vocab_size"] = 4096, ["hidden_size"] = 1024, ["num_hidden_layers"] = 4, ["num_attention_heads"] = 8, ["num_key_value_heads"] = 1,
        ["head_dim"] = 128, ["qk_rope_head_dim"] = 32, ["q_lora_rank"] = 512, ["o_groups"] = 4, ["o_lora_rank"] = 256,
        ["n_routed_experts"] = 16, ["num_experts_per_tok"] = 2, ["n_shared_experts"] = 1, ["moe_intermediate_size"] = 256,
        ["sliding_window"] = 128, ["index_n_heads"] = 16, ["index_head_dim"] = 64, ["index_topk"] = 512, ["hc_mult"] = 4,
        ["hc_sinkhorn_iters"] = 20, ["hc_eps"] = 1e-6, ["compress_ratios"] = new JsonArray(0, 4, 128, 4), ["num_hash_layers"] = 1,
        ["num_nextn_predict_layers"] = 0, ["compress_rope_theta"] = 160000.0, ["rope_theta"] = 10000.0, ["max_position_embeddings"] = 1048576,
        ["rope_scaling"] = new JsonObject { ["type"] = "yarn", ["factor"] = 16, ["original_max_position_embeddings"] = 65536, ["beta_fast"] = 32, ["beta_slow"] = 1 },
        ["scoring_func"] = "sqrtsoftplus", ["topk_method"] = "noaux_tc", ["norm_topk_prob"] = true, ["routed_scaling_factor"] = 1.5,
        ["swiglu_limit"] = 10.0, ["rms_norm_eps"] = 1e-6, ["tie_word_embeddings"] = false,
    };

    public static int Run(string[] args)
    {
        if (args.Length > 0 && args[0] == "--child") return Child(args[1], int.Parse(args[2]), int.Parse(args[3]), int.Parse(args[4]));
        string work = "/tmp/converter-v4-prefill";
        int threads = 2, runs = 2;
        var seqs = new List<int> { 512, 2048, 8192 };
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--work": work = args[++i]; break;
                case "--threads": threads = int.Parse(args[++i]); break;
                case "--runs": runs = int.Parse(args[++i]); break;
                case "--seq": seqs = args[++i].Split(',').Select(int.Parse).ToList(); break;
                default:
                    Console.WriteLine("v4-prefill [--seq 512,2048,8192] [--threads 2] [--runs 2] [--work DIR]");
                    return args[i] is "--help" or "-h" ? 0 : 2;
            }
        }
        Directory.CreateDirectory(work);
        string ckpt = Path.Combine(work, "synth-v4-mid"), sparse = Path.Combine(work, "onnx-sparse"), full = Path.Combine(work, "onnx-full");
        if (!File.Exists(Path.Combine(ckpt, "config.json"))) Write(ckpt, Config());
        if (!File.Exists(Path.Combine(sparse, "model.onnx"))) OnnxExportPipeline.Run(ckpt, sparse, new OnnxExportOptions(Overwrite: true));
        if (!File.Exists(Path.Combine(full, "model.onnx")))
            OnnxExportPipeline.Run(ckpt, full, new OnnxExportOptions(Overwrite: true) { FullAttentionBaseline = true });
        Console.WriteLine($"synthetic checkpoint {CommandTimer.FolderBytes(ckpt) / 1e6:F0} MB; ONNX fp32 {CommandTimer.FolderBytes(sparse) / 1e6:F0} MB (sparse), " +
                          $"{CommandTimer.FolderBytes(full) / 1e6:F0} MB (full attention: no compressor or indexer weights)");
        Console.WriteLine($"ONNX Runtime {Microsoft.ML.OnnxRuntime.OrtEnv.Instance().GetVersionString()} CPU, {threads} intra-op threads, one sequence, " +
                          $"best of {runs} after a warm-up run, each graph and length in its own process (peak RSS: VmHWM)");
        Console.WriteLine();
        Console.WriteLine("| tokens | V4 attention ms (CPU ms) | ms / token | full attention ms (CPU ms) | ms / token | speed-up (CPU) | V4 peak RSS MiB | full peak RSS MiB |");
        Console.WriteLine("|---|---|---|---|---|---|---|---|");
        string self = Environment.ProcessPath!;
        string[] Prefix() => self.EndsWith("dotnet", StringComparison.Ordinal) ? [typeof(V4PrefillBench).Assembly.Location] : [];
        foreach (var seq in seqs)
        {
            (double Ms, double Cpu, long Rss) Measure(string onnx)
            {
                var m = CommandTimer.Run(self, [.. Prefix(), "v4-prefill", "--child", onnx, seq.ToString(), runs.ToString(), threads.ToString()]);
                if (m.ExitCode != 0) throw new InvalidOperationException($"child failed ({m.ExitCode}): {m.StdErr}");
                var parts = m.StdErr.Trim().Split('\n')[^1].Split(' ');
                var inv = System.Globalization.CultureInfo.InvariantCulture;
                return (double.Parse(parts[0], inv), double.Parse(parts[1], inv), m.PeakRssBytes);
            }
            var s = Measure(sparse);
            var f = Measure(full);
            Console.WriteLine($"| {seq} | {s.Ms:F0} ({s.Cpu:F0}) | {s.Ms / seq:F3} | {f.Ms:F0} ({f.Cpu:F0}) | {f.Ms / seq:F3} | {f.Ms / s.Ms:F2}x ({f.Cpu / s.Cpu:F2}x) | " +
                              $"{s.Rss / 1048576.0:F0} | {f.Rss / 1048576.0:F0} |");
        }
        return 0;
    }

    /// <summary>Child: load the graph, run once to warm up, then the best of <paramref name="runs"/> (ms on stdout's last line).</summary>
    private static int Child(string onnx, int seq, int runs, int threads)
    {
        using var runner = new OnnxArtifactRunner(onnx, new OnnxRunnerOptions(IntraOpThreads: threads));
        var tokens = new int[seq];
        for (int i = 0; i < seq; i++) tokens[i] = (int)((i * 2654435761L + 12345) % 4096);
        runner.Run(tokens, 1, seq, false, false);
        double best = double.MaxValue, bestCpu = double.MaxValue;
        using var self = Process.GetCurrentProcess();
        for (int r = 0; r < runs; r++)
        {
            self.Refresh();
            var cpu0 = self.TotalProcessorTime;
            var clock = Stopwatch.StartNew();
            runner.Run(tokens, 1, seq, false, false);
            best = Math.Min(best, clock.Elapsed.TotalMilliseconds);
            self.Refresh();
            bestCpu = Math.Min(bestCpu, (self.TotalProcessorTime - cpu0).TotalMilliseconds);
        }
        var inv = System.Globalization.CultureInfo.InvariantCulture;
        Console.Error.WriteLine($"{best.ToString("F1", inv)} {bestCpu.ToString("F1", inv)}");
        return 0;
    }

    /// <summary>Random BF16 weights (F32 hyper-connections, sinks, position biases, gate bias; I32 tid2eid) for the config's tensor map.</summary>
    public static void Write(string dir, JsonObject config)
    {
        var stage = dir + ".tmp";
        if (Directory.Exists(stage)) Directory.Delete(stage, true);
        var arch = ArchitectureRegistry.FromConfig(new ConfigJson(Path.Combine(dir, "config.json"), config));
        var tensors = arch.ExpectedTensors();
        DType TypeOf(ExpectedTensor t) => t.Name.EndsWith("tid2eid", StringComparison.Ordinal) ? DType.I32
            : t.Role.Kind is TensorKind.Auxiliary or TensorKind.RouterBias ? DType.F32 : DType.BF16;
        ulong state = 0x9E3779B97F4A7C15UL;
        double Next() { state ^= state << 13; state ^= state >> 7; state ^= state << 17; return (state >> 11) * (1.0 / (1UL << 53)) * 2 - 1; }
        using (var w = new SafetensorsWriter(stage, tensors.Select(t => new TensorSpec(t.Name, TypeOf(t), t.Shape)).ToList(), long.MaxValue, false))
        {
            foreach (var t in tensors)
            {
                long n = t.Shape.Aggregate(1L, (a, b) => a * b);
                if (TypeOf(t) == DType.I32)
                {
                    int k = (int)t.Shape[1], e = arch.NumRoutedExperts;
                    var ids = new int[n];
                    for (long r = 0; r < t.Shape[0]; r++)
                        for (int j = 0; j < k; j++) ids[r * k + j] = (int)((r * 7 + j * 5) % e); // distinct within a row for k <= 5 < e
                    w.Write(t.Name, MemoryMarshal.AsBytes(ids.AsSpan()));
                    continue;
                }
                double amp = t.Role.Kind == TensorKind.Norm ? 0.1 : t.Role.Kind == TensorKind.Embedding ? 1 : t.Shape.Length == 2 ? 1 / Math.Sqrt(t.Shape[1]) : 0.5;
                double offset = t.Role.Kind == TensorKind.Norm || t.Name.EndsWith("_scale", StringComparison.Ordinal) ? 1 : 0;
                if (TypeOf(t) == DType.F32)
                {
                    var v = new float[n];
                    for (long i = 0; i < n; i++) v[i] = (float)(offset + amp * Next());
                    w.Write(t.Name, MemoryMarshal.AsBytes(v.AsSpan()));
                }
                else
                {
                    var v = new ushort[n];
                    for (long i = 0; i < n; i++) v[i] = Bf16.FromSingle((float)(offset + amp * Next()));
                    w.Write(t.Name, MemoryMarshal.AsBytes(v.AsSpan()));
                }
            }
            File.WriteAllText(Path.Combine(w.StagingDirectory, "config.json"), config.ToJsonString());
            w.Commit();
        }
        if (Directory.Exists(dir)) Directory.Delete(dir, true);
        Directory.Move(stage, dir);
    }
}
