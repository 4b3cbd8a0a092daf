using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json.Nodes;
using Converter.Calibration;
using Converter.Formats.Onnx.Proto;
using Converter.Formats.Safetensors;
using Converter.Models;
using Converter.Decoder.Onnx;
using Converter.Pipelines;
using Converter.Tensors;
using Converter.Staging;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;

namespace Converter.Runtime.Calibration;

/// <summary>Settings of <see cref="CalibratePipeline"/>.</summary>
/// <param name="Batch">Sequences per ONNX Runtime run.</param>
/// <param name="Threads">ONNX Runtime intra-op threads (0: its choice).</param>
/// <param name="Hessians">Record per-expert Hessians and absmax (stats/) for GPTQ.</param>
/// <param name="CommReport">Record dispatch/combine wire-format errors (comm-report.md/.svg).</param>
/// <param name="OnnxDir">Run this whole-model export (same config) in one session instead of exporting and running the model layer by layer.</param>
/// <param name="MinExpertTokens">Experts with fewer calibration tokens are listed as starved (the INT4 GPTQ fallback threshold).</param>
/// <param name="MemoryBudgetBytes">Accumulators and expert weights of one pass stay under this budget (<see cref="CalibrationPassPlan"/>):
/// small layers share a pass, a large layer's routed experts are split into ranges over several passes; each pass goes over the tokens once.</param>
public sealed record CalibrateOptions(int Batch = 8, int Threads = 0, bool Hessians = true, bool CommReport = true,
    bool Overwrite = false, string? OnnxDir = null, double TargetSnrDb = 40, long MinExpertTokens = 128,
    long MemoryBudgetBytes = 4L << 30)
{
    public Converter.Staging.TestFault? Fault { get; init; }

    /// <summary>Weight each token's row in a routed expert's Hessians by its squared routing weight g_t^2 (the expert's
    /// output enters the layer output as g_t * y): GPTQ then minimises the error of the expert's contribution. Off by default:
    /// on tiny-dsv3's validation split it did not lower GPTQ's kl_mean (README, "INT4 accuracy").</summary>
    public bool RoutingWeighted { get; init; }

    /// <summary>Also write llama.cpp's importance matrix (GGUF imatrix, <see cref="Formats.Gguf.ImatrixFile"/>) to this
    /// file: the input squares of every weight llama-quantize looks up, from the same forward. Layer by layer only.</summary>
    public string? ImatrixPath { get; init; }
}

/// <param name="OutputDirectory">The calibration folder; null where only an importance matrix was asked for.</param>
/// <param name="Imatrix">The importance matrix written (<see cref="CalibrateOptions.ImatrixPath"/>), or null.</param>
public sealed record CalibrateResult(string? OutputDirectory, CalibrationData Data, int Passes, IReadOnlyList<CommTrafficStats> Comm, TimeSpan Elapsed)
{
    public string? Imatrix { get; init; }
}

/// <summary>
/// <c>converter calibrate</c>: runs the model on ONNX Runtime over calibration tokens and writes a calibration folder
/// (<see cref="CalibrationData"/>): routing top-k and expert token counts per MoE layer; with Hessians, per MoE layer
/// <see cref="HessianStats"/> (each routed expert's gate/up input = the MoE input of exactly the tokens routed to it,
/// its down input = silu(x Wg^T) * (x Wu^T) computed here from the checkpoint's weights) and per-channel absmax
/// (stats/absmax.layer{L}.safetensors); the dispatch/combine traffic report; summary.md.
/// The MoE inputs come from the graph values <see cref="OnnxDecoderNames.MoeInput"/>, added as outputs to a copy
/// of the model. Accumulators (the Hessians are hidden² and intermediate² float64 per expert) and float32 expert weights
/// are held for (layer, expert range) pieces that fit the memory budget (<see cref="CalibrationPassPlan"/>); the tokens are
/// run once per pass. Per-layer records (routing, pooled Hessian, dispatch traffic) come from the pass holding the layer's
/// expert 0; each expert's Hessians are streamed to the layer's file when its range ends, so the folder is the same
/// whatever the budget.
/// By default the model runs layer by layer: one exported slice (<see cref="OnnxLayerSlice"/>: an MoE layer and the dense
/// layers before it) per ONNX Runtime session, its output hidden state handed to the next slice through a file, so the
/// session holds one layer's weights; the session runs once per layer and is released before the layer's accumulators
/// take its stored MoE inputs range by range. With <see cref="CalibrateOptions.OnnxDir"/> one session runs a whole-model export.
/// The folder is written to a staging folder and renamed into place at the end.
/// </summary>
public static class CalibratePipeline
{
    public const string SummaryName = "summary.md";
    public const string AbsmaxFolder = HessianStats.Folder;
    public static string AbsmaxFileName(int layer) => $"absmax.layer{layer}.safetensors";

    /// <param name="outputDir">The calibration folder to write; null with <see cref="CalibrateOptions.ImatrixPath"/>: only the imatrix.</param>
    public static CalibrateResult Run(string modelDir, string tokensPath, string? outputDir, CalibrateOptions o,
        ILogger? logger = null, IProgress<PipelineProgress>? progress = null, CancellationToken cancellation = default)
    {
        logger ??= NullLogger.Instance;
        var clock = Stopwatch.StartNew();
        if (o.Batch < 1) throw new ArgumentException($"--batch must be at least 1, not {o.Batch}");
        using var ckpt = ModelCheckpoint.Open(modelDir);
        var arch = ckpt.Architecture;
        if (arch.Onnx == null)
            throw new NotSupportedException($"{modelDir}: calibrate runs the ONNX export, which does not support model_type '{arch.ModelType}'");
        var (tokens, sequences, seqLen) = ReadTokens(tokensPath, arch.VocabSize);
        var moeLayers = Enumerable.Range(0, arch.NumLayers).Where(arch.IsMoeLayer).ToArray();
        if (moeLayers.Length == 0) throw new NotSupportedException($"{modelDir}: the model has no MoE layer");
        var block0 = arch.Moe(moeLayers[0]);
        if (outputDir == null && o.ImatrixPath == null) throw new ArgumentException("calibrate needs an output folder or an imatrix file");
        string? imatrixPath = o.ImatrixPath == null ? null : Path.GetFullPath(o.ImatrixPath);
        if (imatrixPath != null)
        {
            if (o.OnnxDir != null) throw new NotSupportedException("--imatrix runs the model layer by layer; it does not take --onnx");
            if (arch.ImatrixLayer(ckpt, moeLayers[0]) == null)
                throw new NotSupportedException($"{modelDir}: --imatrix is not implemented for model_type '{arch.ModelType}' (its attention is not recomputed for the importance matrix)");
            if (File.Exists(imatrixPath) && !o.Overwrite) throw new IOException($"{imatrixPath} exists (use --overwrite)");
        }
        // without a folder to keep, the folder is staged beside the imatrix and dropped
        string dest = Path.GetFullPath(outputDir ?? imatrixPath + $".calibration-{Environment.ProcessId}");
        if (Directory.Exists(dest) && !o.Overwrite && outputDir != null) throw new IOException($"{dest} exists (use --overwrite)");
        var imatrix = imatrixPath != null ? new ImatrixAccumulator() : null;

        using var area = StagingArea.Begin(dest, new StagingOptions("calibrate", Overwrite: o.Overwrite) { Fault = o.Fault }, logger);
        string staging = area.Output;
        string work = Path.Combine(area.Root, "work"); // layer slices and hidden states, beside the output: they can be large
        try
        {
            if (o.OnnxDir != null) CheckOnnxConfig(o.OnnxDir, arch);
            Directory.CreateDirectory(staging);

            int k = block0.TopK, e = block0.Experts, h = arch.HiddenSize, mi = checked((int)block0.ExpertIntermediate);
            bool weights = o.CommReport || imatrix != null; // expert weights loaded (the imatrix needs the down_proj inputs)
            var plan = o.Hessians || weights
                ? CalibrationPassPlan.Create(moeLayers, e, CalibrationPassPlan.ExpertBytesFor(h, mi, o.Hessians, weights),
                    CalibrationPassPlan.LayerBytesFor(h, mi, e, o.Hessians), o.MemoryBudgetBytes)
                : CalibrationPassPlan.Create(moeLayers, e, 0, 0, long.MaxValue); // routing only: one pass
            if (plan.ExpertBytes + plan.LayerBytes > o.MemoryBudgetBytes)
                logger.LogWarning("One routed expert's accumulators and weights need ~{MB:N0} MB (+{Layer:N0} MB per layer), more than the {Budget:N0} MB budget: " +
                    "running one expert per pass", plan.ExpertBytes / 1e6, plan.LayerBytes / 1e6, o.MemoryBudgetBytes / 1e6);
            logger.LogInformation("Calibrating on {Seq} x {Len} tokens, {Layers} MoE layers of {Experts} routed experts, {Mode}: {Plan}",
                sequences, seqLen, moeLayers.Length, e, o.OnnxDir == null ? "layer by layer" : "whole model in one session", plan.Describe());

            var topk = moeLayers.ToDictionary(l => l, _ => new int[sequences * seqLen * k]);
            var comm = new List<CommTrafficStats>();
            var data = new CalibrationData
            {
                ModelType = arch.ModelType,
                ConfigFingerprint = CalibrationData.Fingerprint(arch),
                RoutedExperts = e,
                ExpertsPerToken = k,
                Sequences = sequences,
                SequenceLength = seqLen,
                TopK = topk,
            };
            var state = new Dictionary<int, LayerState>();
            int batches = (sequences + o.Batch - 1) / o.Batch, step = 0, runs;
            int totalSteps = batches * (o.OnnxDir != null ? plan.Passes.Count : plan.Passes.Sum(p => p.Count));

            void Begin(IEnumerable<ExpertRange> ranges)
            {
                foreach (var r in ranges)
                {
                    if (r.First == 0) state[r.Layer] = new LayerState(ckpt, arch.Moe(r.Layer), arch.HiddenSize, o.Hessians, o.CommReport, o.Threads, o.RoutingWeighted,
                        imatrix, imatrix != null ? arch.ImatrixMoe(r.Layer) : null);
                    state[r.Layer].BeginRange(r.First, r.End);
                }
            }
            void Feed(ExpertRange r, (float[] X, long[] Route) o1, int b0, int nb) =>
                state[r.Layer].Add(o1.X, o1.Route, nb * seqLen, $"{OnnxDecoderNames.MoeInput(r.Layer)} (sequences {b0}..{b0 + nb - 1})");
            void KeepRouting(int layer, long[] route, int b0)
            {
                for (int i = 0; i < route.Length; i++) topk[layer][b0 * seqLen * k + i] = checked((int)route[i]);
            }
            void Step(string what, int b0, int nb)
            {
                step++;
                progress?.Report(new PipelineProgress(step, totalSteps, 0, $"{what}, sequences {b0 + nb}/{sequences}"));
                ReleaseScratch();
            }
            void End(IEnumerable<ExpertRange> ranges)
            {
                foreach (var r in ranges)
                {
                    state[r.Layer].EndRange(staging, data);
                    if (!state[r.Layer].Done) continue;
                    if (state[r.Layer].Comm is { } cs) comm.Add(cs);
                    state[r.Layer].Dispose();
                    state.Remove(r.Layer);
                }
                ReleaseScratch();
            }

            try
            {
                if (o.OnnxDir != null)
                {
                    // One session over the whole model: every pass runs the tokens through all layers.
                    using var runner = new MoeTap(o.OnnxDir, o.Threads);
                    for (int pass = 0; pass < plan.Passes.Count; pass++)
                    {
                        var ranges = plan.Passes[pass];
                        var layers = ranges.Select(r => r.Layer).ToArray();
                        logger.LogDebug("Pass {Pass}/{Passes}: {Ranges} (~{MB:N0} MB)", pass + 1, plan.Passes.Count, string.Join(", ", ranges), plan.PassBytes(pass) / 1e6);
                        Begin(ranges);
                        for (int b0 = 0; b0 < sequences; b0 += o.Batch)
                        {
                            area.Step(cancellation);
                            int nb = Math.Min(o.Batch, sequences - b0);
                            var (outs, _) = runner.Run(tokens.AsSpan(b0 * seqLen, nb * seqLen), null, nb, seqLen, layers);
                            foreach (var r in ranges)
                            {
                                if (r.First == 0) KeepRouting(r.Layer, outs[r.Layer].Route, b0); // once: in the pass holding expert 0
                                Feed(r, outs[r.Layer], b0, nb);
                            }
                            Step($"pass {pass + 1}/{plan.Passes.Count}", b0, nb);
                        }
                        End(ranges);
                    }
                    runs = plan.Passes.Count;
                }
                else
                {
                    runs = RunLayerByLayer();
                }
            }
            finally
            {
                foreach (var st in state.Values) st.Dispose();
            }

            // One session per slice (the MoE layer and the dense layers before it), exported just before it runs and
            // deleted after: memory holds one layer's weights, not the model's. The slice runs over the tokens once, storing
            // its output (the next slice's input), the MoE inputs and the routing; the session is gone before the layer's
            // accumulators exist, which then take the expert ranges one by one from the stored MoE inputs. Peak memory is
            // the larger of the two, not their sum.
            int RunLayerByLayer()
            {
                Directory.CreateDirectory(work);
                HiddenStateFile? hin = null, hout = null;
                int prevEnd = 0, count = 0;
                long tokenCount = (long)sequences * seqLen;
                try
                {
                    foreach (int layer in moeLayers)
                    {
                        var slice = new OnnxLayerSlice(prevEnd, layer + 1);
                        string sliceDir = Path.Combine(work, $"slice-{slice.First}-{layer}");
                        logger.LogInformation("Exporting {Slice} to ONNX (fp32) in {Dir}", slice, sliceDir);
                        OnnxExportPipeline.Run(ckpt, sliceDir, new OnnxExportOptions(Slice: slice) { Scratch = true }, NullLogger.Instance, null, cancellation);
                        hout = layer == moeLayers[^1] ? null : new HiddenStateFile(Path.Combine(work, $"hidden.layer{layer}.f32"), tokenCount, h);
                        using var moeIn = new HiddenStateFile(Path.Combine(work, $"moe-input.layer{layer}.f32"), tokenCount, h);
                        // the imatrix's attention (and dense MLP) inputs, recomputed from each layer's input hidden state
                        var imLayers = new List<Converter.Calibration.IImatrixLayer>();
                        var layerInputs = new List<string>();
                        if (imatrix != null)
                            for (int l = slice.First; l <= layer; l++)
                            {
                                var il = arch.ImatrixLayer(ckpt, l)!;
                                il.Declare(imatrix);
                                imLayers.Add(il);
                                if (l > 0 && l == slice.First) continue; // the slice's input: hin
                                layerInputs.Add(l == 0 ? OnnxDecoderNames.Embedding : OnnxDecoderNames.Layer(l - 1));
                            }
                        using (var tap = new MoeTap(sliceDir, o.Threads, layerInputs))
                        {
                            for (int b0 = 0; b0 < sequences; b0 += o.Batch)
                            {
                                area.Step(cancellation);
                                int nb = Math.Min(o.Batch, sequences - b0), rows = nb * seqLen;
                                var hb = hin?.Read((long)b0 * seqLen, rows);
                                var (outs, next) = tap.Run(tokens.AsSpan(b0 * seqLen, rows), hb, nb, seqLen, [layer],
                                    hout != null, layerInputs, out var inputs);
                                foreach (var il in imLayers)
                                {
                                    var input = il.Layer > 0 && il.Layer == slice.First ? hb! : inputs[il.Layer == 0 ? OnnxDecoderNames.Embedding : OnnxDecoderNames.Layer(il.Layer - 1)];
                                    LayerState.ThrowIfNonFinite(input, $"layer {il.Layer} input (sequences {b0}..{b0 + nb - 1})");
                                    il.Add(input, nb, seqLen, imatrix!);
                                }
                                if (next != null) hout!.Write((long)b0 * seqLen, next);
                                var (x, route) = outs[layer];
                                moeIn.Write((long)b0 * seqLen, x); // LayerState.Add checks it is finite when it is read back
                                KeepRouting(layer, route, b0);
                                progress?.Report(new PipelineProgress(step, totalSteps, 0, $"{slice}: ONNX Runtime, sequences {b0 + nb}/{sequences}"));
                            }
                        }
                        Directory.Delete(sliceDir, true);
                        ReleaseScratch();
                        hin?.Dispose();
                        (hin, hout) = (hout, null);
                        foreach (var r in plan.Passes.SelectMany(p => p).Where(r => r.Layer == layer))
                        {
                            Begin([r]);
                            for (int b0 = 0; b0 < sequences; b0 += o.Batch)
                            {
                                area.Step(cancellation);
                                int nb = Math.Min(o.Batch, sequences - b0), rows = nb * seqLen;
                                var route = Array.ConvertAll(topk[layer][(b0 * seqLen * k)..((b0 * seqLen + rows) * k)], v => (long)v);
                                Feed(r, (moeIn.Read((long)b0 * seqLen, rows), route), b0, nb);
                                Step($"layer {layer}, {r}", b0, nb);
                            }
                            End([r]);
                            count++;
                        }
                        prevEnd = layer + 1;
                    }
                }
                finally
                {
                    hin?.Dispose(); // closed before the work folder is deleted
                    hout?.Dispose();
                }
                return count;
            }
            // extra info for consumers
            data.Extra["min_expert_tokens"] = o.MinExpertTokens;
            if (o.Hessians) data.Extra["hessian_weighting"] = o.RoutingWeighted ? "routing_weight_squared" : "uniform";
            data.Extra["tokens_file"] = Path.GetFileName(tokensPath);
            if (imatrix != null)
            {
                foreach (int l in moeLayers) imatrix.FillUnroutedExperts(arch.ImatrixMoe(l)!, e);
                // llama-imatrix's keys: the dataset, chunks of one sequence each (its -c equal to the sequence length)
                imatrix.ToFile([Path.GetFileName(tokensPath)], sequences, seqLen).Write(imatrixPath!, o.Overwrite);
                logger.LogInformation("Wrote importance matrix {Path} ({Count} entries)", imatrixPath, imatrix.Names.Count);
            }
            if (outputDir == null)
                return new CalibrateResult(null, data, runs, comm, clock.Elapsed) { Imatrix = imatrixPath };
            data.Save(staging);
            comm.Sort((a, b) => a.Layer.CompareTo(b.Layer));
            string modelName = Path.GetFileName(Path.TrimEndingDirectorySeparator(Path.GetFullPath(modelDir)));
            if (o.CommReport)
            {
                File.WriteAllText(Path.Combine(staging, CommReportWriter.MarkdownName), CommReportWriter.Markdown(comm, o.TargetSnrDb, modelName));
                File.WriteAllText(Path.Combine(staging, CommReportWriter.SvgName), CommReportWriter.Svg(comm, o.TargetSnrDb, modelName));
            }
            File.WriteAllText(Path.Combine(staging, SummaryName), Summary(data, moeLayers, modelName, o, plan, runs, comm));

            if (Directory.Exists(work)) Directory.Delete(work, true); // freed before the manifest reads the output
            area.Commit(cancellation);
            logger.LogInformation("Wrote {Dir} in {Secs:F1} s", dest, clock.Elapsed.TotalSeconds);
            return new CalibrateResult(dest, data, runs, comm, clock.Elapsed) { Imatrix = imatrixPath };
        }
        catch (Exception e) when (area.Explain(e) is var better && better != e) { throw better; }
    }

    /// <summary>
    /// A batch leaves per-expert activations (tokens x hidden floats, tens of MB each at real width) and a pass its
    /// k x k accumulators on the large-object heap; at the GC's own pace those stayed mapped, and a real-width layer
    /// of 8 experts peaked at 13.7 GB against 4.4 GB for routing alone. A blocking collection per batch costs ms
    /// against seconds of Hessian work.
    /// </summary>
    private static void ReleaseScratch() => GC.Collect(GC.MaxGeneration, GCCollectionMode.Aggressive, blocking: true, compacting: true);

    /// <summary>tokens I32/I64 [sequences, length] from a safetensors file, every id checked against the vocabulary.</summary>
    public static (int[] Tokens, int Sequences, int Length) ReadTokens(string path, int vocab)
    {
        using var f = SafetensorsFile.Open(path);
        if (!f.Contains("tokens")) throw new InvalidDataException($"{path}: tensor 'tokens' is missing");
        var info = f.Info("tokens");
        if (info.Shape.Length != 2 || info.DType is not (DType.I32 or DType.I64))
            throw new InvalidDataException($"{path}: tensor 'tokens' is {info.DType} {info.ShapeText}, expected I32 [sequences, length]");
        using var d = f.Read(info);
        int[] ids = info.DType == DType.I32 ? d.As<int>().ToArray() : Array.ConvertAll(d.As<long>().ToArray(), v => v is < int.MinValue or > int.MaxValue ? -1 : (int)v);
        for (int i = 0; i < ids.Length; i++)
            if ((uint)ids[i] >= (uint)vocab) throw new InvalidDataException($"{path}: tensor 'tokens' element {i} is {ids[i]}, outside the vocabulary [0, {vocab})");
        return (ids, (int)info.Shape[0], (int)info.Shape[1]);
    }

    private static void CheckOnnxConfig(string onnxDir, ModelArchitecture arch)
    {
        var cfg = Path.Combine(onnxDir, "config.json");
        if (!File.Exists(cfg)) throw new FileNotFoundException($"{onnxDir}: no config.json beside model.onnx (export it with `converter export onnx`)", cfg);
        var other = ArchitectureRegistry.Load(onnxDir);
        if (CalibrationData.Fingerprint(other) != CalibrationData.Fingerprint(arch))
            throw new InvalidDataException($"{cfg}: the ONNX model was exported from another config than the model being calibrated");
    }

    private static string Summary(CalibrationData d, int[] layers, string modelName, CalibrateOptions o, CalibrationPassPlan plan, int runs, IReadOnlyList<CommTrafficStats> comm)
    {
        var inv = CultureInfo.InvariantCulture;
        var sb = new StringBuilder();
        sb.AppendLine($"# Calibration of {modelName}");
        sb.AppendLine();
        sb.AppendLine($"- tokens: {d.Tokens} ({d.Sequences} sequences x {d.SequenceLength}), {d.ExpertsPerToken} of {d.RoutedExperts} routed experts per token");
        sb.AppendLine($"- config fingerprint: {d.ConfigFingerprint} ({d.ModelType}); consumers refuse a model with another fingerprint");
        sb.AppendLine($"- MoE layers: {string.Join(", ", layers)}; Hessians: {(o.Hessians ? "yes (stats/)" : "no")}");
        sb.AppendLine($"- passes: {plan.Describe()}; " + (o.OnnxDir != null
            ? $"the whole model in one ONNX Runtime session (--onnx), {runs} run(s) over the tokens"
            : $"layer by layer, one ONNX Runtime session per MoE layer (with the dense layers before it) run once over the tokens, " +
              $"its MoE inputs stored, then {runs} expert range(s) in all read them"));
        sb.AppendLine($"- starved expert: fewer than {o.MinExpertTokens} calibration tokens (the default `--min-expert-tokens` of INT4 GPTQ, below which");
        sb.AppendLine("  gate/up fall back to the layer's pooled Hessian and down_proj to RTN); the uniform share is tokens x k / experts.");
        sb.AppendLine();
        sb.AppendLine("## Routing load per layer");
        sb.AppendLine();
        sb.AppendLine("| layer | uniform share | min | median | max | max/mean | empty experts | starved experts (tokens) |");
        sb.AppendLine("|---:|---:|---:|---:|---:|---:|---:|---|");
        foreach (var l in layers)
        {
            var counts = d.ExpertCounts(l);
            var sorted = counts.Order().ToArray();
            double mean = counts.Average();
            var starved = Enumerable.Range(0, counts.Length).Where(i => counts[i] < o.MinExpertTokens).Select(i => $"{i} ({counts[i]})").ToList();
            sb.AppendLine($"| {l} | {mean.ToString("0.#", inv)} | {sorted[0]} | {sorted[sorted.Length / 2]} | {sorted[^1]} | {(sorted[^1] / mean).ToString("0.00", inv)} | " +
                          $"{counts.Count(v => v == 0)} | {(starved.Count == 0 ? "none" : string.Join(", ", starved))} |");
        }
        sb.AppendLine();
        sb.AppendLine("## Tokens per expert");
        sb.AppendLine();
        sb.Append("| layer |");
        for (int i = 0; i < d.RoutedExperts; i++) sb.Append($" {i} |");
        sb.AppendLine();
        sb.Append("|---:|");
        for (int i = 0; i < d.RoutedExperts; i++) sb.Append("---:|");
        sb.AppendLine();
        foreach (var l in layers) sb.AppendLine($"| {l} | {string.Join(" | ", d.ExpertCounts(l))} |");
        if (comm.Count > 0)
        {
            sb.AppendLine();
            sb.AppendLine($"## Expert traffic (details: {CommReportWriter.MarkdownName}, {CommReportWriter.SvgName})");
            sb.AppendLine();
            sb.AppendLine($"| layer | dispatch: smallest LogFMT n for {o.TargetSnrDb.ToString(inv)} dB | combine: smallest LogFMT n |");
            sb.AppendLine("|---:|---:|---:|");
            foreach (var s in comm)
                sb.AppendLine($"| {s.Layer} | {s.MinLogFmtBits(CommSide.Dispatch, o.TargetSnrDb)?.ToString() ?? "> 16"} | {s.MinLogFmtBits(CommSide.Combine, o.TargetSnrDb)?.ToString() ?? "> 16"} |");
        }
        sb.AppendLine();
        sb.AppendLine("Files: calibration.json (identity, layers, stats list), routing.safetensors (topk.L [tokens, k], counts.L [experts]),");
        sb.AppendLine("stats/hessian.layerL.safetensors (mean X^T X per expert input, read by `quantize --method gptq`), stats/absmax.layerL.safetensors");
        sb.AppendLine("(per-channel max |x| of each expert's gate/up and down inputs).");
        return sb.ToString();
    }
}
