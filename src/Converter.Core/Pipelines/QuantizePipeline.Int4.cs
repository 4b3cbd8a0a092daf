using System.Text.RegularExpressions;
using Converter.Calibration;
using Converter.Formats.CompressedTensors;
using Converter.Models;
using Converter.Numerics.Int4;
using Converter.Tensors;
using Microsoft.Extensions.Logging;

namespace Converter.Pipelines;

public enum Int4Method { Rtn, Gptq }

/// <summary>Which linears INT4 quantizes: routed experts only (what Kimi-K2-Thinking ships), or every projection.</summary>
public enum Int4Targets { RoutedExperts, AllLinear }

/// <summary>
/// INT4 settings. Selection: a 2-D projection weight is quantized when it is a target or matches
/// <see cref="Include"/>, unless it matches <see cref="Exclude"/> (both .NET regexes searched in the tensor name).
/// gptq needs <see cref="Calibration"/>; an expert that saw fewer than <see cref="MinExpertTokens"/> calibration
/// tokens falls back: gate_proj/up_proj to the layer's pooled Hessian (same input space: every token entering the
/// MoE), down_proj to rtn (its input space is the expert's own); linears without any Hessian use rtn. Each fallback
/// is logged.
/// </summary>
public sealed record Int4Options(int GroupSize = 32, bool Symmetric = true, Int4Method Method = Int4Method.Rtn,
    Int4Targets Targets = Int4Targets.RoutedExperts, string? Include = null, string? Exclude = null, string? Calibration = null,
    long MinExpertTokens = 128, int MaxThreads = -1)
{
    public GptqOptions Gptq { get; init; } = new();
    public Int4ClipSearch Clip { get; init; } = Int4ClipSearch.Default;
}

public static partial class QuantizePipeline
{
    /// <summary>What one INT4 run shares across tensors: options, the output config, the calibration and a small factor cache.</summary>
    private sealed class Int4Context : IDisposable
    {
        public required Int4Options Options { get; init; }
        public required Int4Scheme Scheme { get; init; }
        public required CompressedTensorsConfig Config { get; init; }
        public required HashSet<string> Selected { get; init; }
        public required ILogger Log { get; init; }
        public string? CalibrationDir { get; init; }
        private HessianStats.LayerReader? _layer;
        private readonly Dictionary<string, GptqFactor> _factors = new();
        private int _factorsExpert = -1;
        public int Rtn, Gptq, Fallbacks;

        public static Int4Context Create(ModelCheckpoint src, Int4Options o, ILogger log)
        {
            if (src.Layout == WeightLayout.PackedInt4)
                throw new NotSupportedException($"{src.Directory}: the checkpoint is already packed INT4");
            var scheme = new Int4Scheme(o.GroupSize, o.Symmetric);
            if (o.GroupSize is not (32 or 64 or 128)) throw new ArgumentException($"INT4 group size {o.GroupSize} is not supported (32, 64 or 128)");
            var include = o.Include is null ? null : new Regex(o.Include, RegexOptions.CultureInvariant);
            var exclude = o.Exclude is null ? null : new Regex(o.Exclude, RegexOptions.CultureInvariant);
            var selected = new HashSet<string>(StringComparer.Ordinal);
            var ignore = new List<string>();
            foreach (var t in src.Architecture.ExpectedTensors())
            {
                bool linear = t.Role.IsLinearWeight && t.Shape.Length == 2;
                bool target = linear && (o.Targets == Int4Targets.AllLinear || t.Role.Kind == TensorKind.RoutedExpert);
                bool take = linear && (target || include?.IsMatch(t.Name) == true) && exclude?.IsMatch(t.Name) != true;
                if (take)
                {
                    scheme.CheckShape((int)t.Shape[0], (int)t.Shape[1], t.Name);
                    selected.Add(t.Name);
                }
                else if ((linear || t.Role.Kind is TensorKind.Router or TensorKind.LmHead) && t.Name.EndsWith(".weight", StringComparison.Ordinal))
                    ignore.Add(t.Name[..^".weight".Length]);
            }
            if (selected.Count == 0) throw new ArgumentException("INT4: no tensor selected (check --targets, --include and --exclude)");
            string? calib = null;
            if (o.Method == Int4Method.Gptq)
            {
                calib = o.Calibration ?? throw new ArgumentException("gptq needs --calibration <dir> (made by `converter calibrate`)");
                CalibrationData.Load(calib).CheckMatches(src.Architecture, calib);
            }
            var config = new CompressedTensorsConfig(o.GroupSize, o.Symmetric, ["Linear"], ignore,
                o.Clip.Steps > 1 ? "mse" : "minmax", o.Method == Int4Method.Gptq && o.Gptq.ActOrder ? "weight" : null);
            log.LogInformation("int4 {Method} g{Group} {Sym}: {N} weights quantized, {I} linears kept", o.Method.ToString().ToLowerInvariant(),
                o.GroupSize, o.Symmetric ? "symmetric" : "asymmetric", selected.Count, ignore.Count);
            return new Int4Context { Options = o, Scheme = scheme, Config = config, Selected = selected, Log = log, CalibrationDir = calib };
        }

        /// <summary>The GPTQ factor for a routed expert's weight, or null (rtn) with the reason logged.</summary>
        public GptqFactor? Factor(ModelCheckpoint src, string name, TensorRole role, int k)
        {
            if (CalibrationDir == null) return null;
            if (role.Kind != TensorKind.RoutedExpert) return Fallback(name, "no calibration statistics for this linear (only routed experts have Hessians)");
            if (_layer?.Layer != role.Layer)
            {
                _layer?.Dispose();
                _layer = HessianStats.LayerReader.TryOpen(CalibrationDir, role.Layer, src.Architecture.NumRoutedExperts);
                _factors.Clear();
                _factorsExpert = -1;
            }
            if (_layer == null) return Fallback(name, $"calibration has no {HessianStats.Folder}/{HessianStats.FileName(role.Layer)}");
            var input = role.Part == "down_proj" ? ExpertInput.Down : ExpertInput.GateUp;
            long tokens = _layer.Tokens[role.Expert];
            string key = HessianStats.ExpertName(role.Expert, input);
            if (tokens < Options.MinExpertTokens)
            {
                if (input == ExpertInput.Down)
                    return Fallback(name, $"expert {role.Expert} saw {tokens} calibration tokens (< {Options.MinExpertTokens}); down_proj uses rtn");
                key = HessianStats.PooledGateUpName;
                Fallbacks++;
                Log.LogInformation("{Name}: expert {E} saw {T} calibration tokens (< {Min}); using the layer's pooled Hessian", name, role.Expert, tokens, Options.MinExpertTokens);
            }
            if (_factorsExpert != role.Expert)
            {
                // gate_proj and up_proj of one expert share a factor (and starved experts the pooled one); keeping
                // every expert's would hold a layer's worth of k x k float64 factors (100+ GB at DeepSeek-V3 scale).
                foreach (var stale in _factors.Keys.Where(x => x != HessianStats.PooledGateUpName).ToList()) _factors.Remove(stale);
                _factorsExpert = role.Expert;
            }
            if (_factors.TryGetValue(key, out var f)) return f;
            var h = _layer.Read(key, k);
            if (h == null) return Fallback(name, $"'{key}' is missing from {HessianStats.FileName(role.Layer)}");
            f = GptqFactor.Create(h, k, Options.Gptq, Options.MaxThreads);
            _factors[key] = f;
            // Building a factor allocates and drops several k x k float64 arrays (411 MB each at k = 7168); left to
            // the GC's own pace, the large-object heap kept ~4 GB of them mapped. A factor costs seconds; this, ms.
            h = null;
            GC.Collect(GC.MaxGeneration, GCCollectionMode.Aggressive, blocking: true, compacting: true);
            return f;
        }

        private GptqFactor? Fallback(string name, string why)
        {
            Fallbacks++;
            Log.LogInformation("{Name}: {Why}; rtn", name, why);
            return null;
        }

        public void LogSummary() => Log.LogInformation("int4: {Gptq} gptq, {Rtn} rtn, {F} fallback(s)", Gptq, Rtn, Fallbacks);

        public void Dispose() => _layer?.Dispose();
    }

    private static List<Job> PlanInt4(ModelCheckpoint src, Int4Context ctx)
    {
        var jobs = new List<Job>();
        foreach (var name in src.Tensors.Names)
        {
            var info = src.Tensors.Info(name);
            var role = src.Architecture.Classify(name);
            if (role.Kind == TensorKind.QuantScale) continue; // FP8 scales are folded into their weights
            if (ctx.Selected.Contains(name))
            {
                var (rows, cols) = ((int)src.LogicalShape(name).Rows, (int)src.LogicalShape(name).Cols);
                var parts = PackQuantized.Plan(name, rows, cols, ctx.Scheme);
                jobs.Add(new Job(name, parts[0], null, (s, j, _, w) => Int4Job(s, j, w, ctx)) { Parts = parts.Skip(1).ToList(), WritesAll = true });
            }
            else if (src.Encoding(name).IsBlockScaled())
            {
                var (r, c) = src.LogicalShape(name);
                jobs.Add(new Job(name, new Formats.Safetensors.TensorSpec(name, DType.BF16, [r, c]), null, BlockToBf16Job));
            }
            else
                jobs.Add(new Job(name, Spec(info, info.DType), null, CopyJob));
        }
        return jobs;
    }

    private static void Int4Job(ModelCheckpoint src, Job job, Formats.Safetensors.SafetensorsWriter writer, Int4Context ctx)
    {
        var (rows, cols) = ((int)src.LogicalShape(job.Source).Rows, (int)src.LogicalShape(job.Source).Cols);
        var w = src.ReadFloat32(job.Source);
        var o = ctx.Options;
        var factor = o.Method == Int4Method.Gptq ? ctx.Factor(src, job.Source, src.Architecture.Classify(job.Source), cols) : null;
        Int4Weight q;
        if (factor != null)
        {
            q = Numerics.Int4.Gptq.Quantize(w, rows, cols, factor, ctx.Scheme, o.Gptq, o.MaxThreads, job.Source);
            ctx.Gptq++;
        }
        else
        {
            q = Int4GroupQuantizer.Quantize(w, rows, cols, ctx.Scheme, o.Clip, o.MaxThreads, job.Source);
            ctx.Rtn++;
        }
        PackQuantized.Write(writer, job.Source, q);
    }
}
