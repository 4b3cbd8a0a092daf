using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Nodes;
using Converter.Formats.Safetensors;
using Converter.Models;
using Converter.Decoder.Onnx;
using Converter.Sharding;
using Converter.Staging;
using Converter.Tensors;
using Microsoft.Extensions.Logging;
using Microsoft.Win32.SafeHandles;

namespace Converter.Pipelines;

/// <param name="WriteExtras">Called with the staging folder before it is renamed, to add files beside placement.json (a load report).</param>
/// <param name="Onnx">Also write each rank's ONNX model (<c>rank-XXXXX/model.onnx</c> + data) with these weights (fp32 or fp8); null: none.</param>
public sealed record ShardOptions(string Output, long MaxShardBytes = 5_000_000_000, bool Overwrite = false, Action<string>? WriteExtras = null,
    OnnxWeightFormat? Onnx = null)
{
    /// <summary>Continue an interrupted run to the same output (each rank's finished shards are kept; see <see cref="StagingArea"/>).</summary>
    public bool Resume { get; init; }

    public TestFault? Fault { get; init; }
}

public sealed record ShardResult(string Output, int Ranks, int SourceTensors, long BytesRead, long BytesWritten, TimeSpan Elapsed);

/// <summary>
/// Splits a checkpoint into expert-parallel rank checkpoints: <c>rank-XXXXX/</c> holds the routed experts the
/// placement gives that rank (original names and bytes, in the source's layout: BF16, FP8 with scales, packed INT4)
/// plus every non-expert tensor, config.json and the model's side files; <c>placement.json</c> sits beside them.
/// Each source tensor is read once, a slab at a time, and each slab is written to every rank that needs it, so
/// memory is one slab plus one file buffer per rank whatever the rank count. The whole output folder is staged
/// beside the destination and renamed into place at the end. With <see cref="ShardOptions.Onnx"/> each rank folder also
/// gets the rank's ONNX model (<see cref="ShardOnnxExport"/>), written inside the same staging folder.
/// </summary>
public static class ShardPipeline
{
    public const string RankInfoName = "rank.json";
    private const long SlabBytes = 16L << 20;

    public static string RankFolderName(int rank) => $"rank-{rank:D5}";

    /// <summary>The ranks a source tensor goes to: the holders of its expert, or every rank for a non-expert tensor.</summary>
    public static int[] Destinations(ModelArchitecture arch, ExpertPlacement placement, string name, string file)
    {
        var role = arch.Classify(name);
        if (role.Expert < 0) return Enumerable.Range(0, placement.Ranks).ToArray();
        var layer = placement.Layer(role.Layer)
            ?? throw new InvalidDataException($"{file}: tensor '{name}' belongs to expert {role.Expert} of layer {role.Layer}, which the placement does not cover");
        return layer.Replicas[role.Expert].Select(r => r.Rank).ToArray();
    }

    public static ShardResult Run(ModelCheckpoint src, ExpertPlacement placement, ShardOptions o, ILogger log, IProgress<PipelineProgress>? progress = null,
        CancellationToken cancellation = default)
    {
        PlacementJson.CheckMatches(placement, src.Architecture, "placement");
        if (o.Onnx != null) ShardOnnxExport.Check(src);
        using var staging = StagingArea.Begin(o.Output, new StagingOptions("shard", Overwrite: o.Overwrite)
        {
            Resume = o.Resume, Fault = o.Fault,
            Fingerprint = RunFingerprint.Of("shard", $"{placement.Label} {PlacementFingerprint(placement)} {o.MaxShardBytes} {o.Onnx}", src.Directory),
        }, log);
        try { return Run(src, placement, o, staging, log, progress, cancellation); }
        catch (Exception e) when (staging.Explain(e) is var better && better != e) { throw better; }
    }

    private static string PlacementFingerprint(ExpertPlacement p)
    {
        var path = Path.GetTempFileName();
        try
        {
            PlacementJson.Write(p, path);
            return Convert.ToHexStringLower(System.IO.Hashing.XxHash3.Hash(File.ReadAllBytes(path)));
        }
        finally { File.Delete(path); }
    }

    private static ShardResult Run(ModelCheckpoint src, ExpertPlacement placement, ShardOptions o, StagingArea stagingArea, ILogger log,
        IProgress<PipelineProgress>? progress, CancellationToken cancellation)
    {
        var clock = Stopwatch.StartNew();
        var dest = stagingArea.Destination;

        var names = src.Tensors.Names;
        var targets = new int[names.Count][];
        var plans = new List<TensorSpec>[placement.Ranks];
        for (int r = 0; r < placement.Ranks; r++) plans[r] = new List<TensorSpec>();
        for (int i = 0; i < names.Count; i++)
        {
            var info = src.Tensors.Info(names[i]);
            targets[i] = Destinations(src.Architecture, placement, names[i], info.File);
            foreach (var r in targets[i]) plans[r].Add(new TensorSpec(info.Name, info.DType, info.Shape));
        }
        log.LogInformation("{Label}: {Tensors} tensors from {Dir} ({GB:F2} GB) to {Ranks} ranks in {Out}",
            placement.Label, names.Count, src.Directory, src.Tensors.TotalBytes / 1e9, placement.Ranks, dest);

        var staging = stagingArea.Output;
        Directory.CreateDirectory(staging);
        stagingArea.Plan(plans.Sum(p => p.Sum(t => t.ByteLength)));
        var writers = new SafetensorsWriter?[placement.Ranks];
        var handles = new Dictionary<string, SafeFileHandle>(StringComparer.Ordinal);
        // Tensor bytes go file to file in the kernel (copy_file_range) where it can; otherwise through this one buffer.
        var slab = GC.AllocateUninitializedArray<byte>((int)SlabBytes);
        long read = 0, written = 0;
        try
        {
            for (int r = 0; r < placement.Ranks; r++)
                writers[r] = new SafetensorsWriter(Path.Combine(staging, RankFolderName(r)), plans[r], o.MaxShardBytes, overwrite: true, inPlace: true)
                    { Journal = stagingArea.Journal, JournalPrefix = RankFolderName(r) + "/" };
            int first = 0;
            if (stagingArea.Resumed)
            {
                int kept = writers.Sum(w => w!.Resume());
                // restart at the first source tensor some rank still needs; ranks that kept it discard its bytes
                while (first < names.Count && targets[first].All(r => writers[r]!.IsKept(names[first]))) first++;
                log.LogInformation("resume: {Kept} shard(s) kept, restarting at source tensor {First} of {Count}", kept, first + 1, names.Count);
                foreach (var f in Directory.EnumerateFiles(staging)) File.Delete(f);
            }
            var streams = new Stream[placement.Ranks];
            for (int i = first; i < names.Count; i++)
            {
                stagingArea.Step(cancellation);
                var ranks = targets[i];
                for (int k = 0; k < ranks.Length; k++) streams[k] = writers[ranks[k]]!.BeginTensor(names[i], out _);
                var info = src.Tensors.Info(names[i]);
                if (!handles.TryGetValue(info.File, out var handle))
                    handles[info.File] = handle = File.OpenHandle(info.File, FileMode.Open, FileAccess.Read, FileShare.Read);
                long length = info.ByteLength;
                for (int k = 0; k < ranks.Length; k++)
                    if (streams[k] is FileStream file) FileRangeCopy.Copy(handle, info.File, info.FileOffset, file, length, slab); // else kept by a resume
                read += length;
                written += length * ranks.Length;
                progress?.Report(new PipelineProgress(i + 1, names.Count, written, names[i]));
            }
            for (int r = 0; r < placement.Ranks; r++)
            {
                WriteSideFiles(src, placement, r, writers[r]!.StagingDirectory);
                writers[r]!.Commit();
            }
            if (o.Onnx is { } weights)
                for (int r = 0; r < placement.Ranks; r++)
                {
                    stagingArea.Step(cancellation);
                    var onnx = ShardOnnxExport.Write(src, placement, r, Path.Combine(staging, RankFolderName(r)), weights, log,
                        reuseFrom: r == 0 ? null : Path.Combine(staging, RankFolderName(0)), cancellation); // replicated weights converted once
                    written += onnx.DataBytes;
                    log.LogInformation("rank {Rank}: model.onnx ({MB:F1} MB of {Weights} weights)", r, onnx.DataBytes / 1e6, weights.ToString().ToLowerInvariant());
                }
            PlacementJson.Write(placement, Path.Combine(staging, PlacementJson.FileName));
            o.WriteExtras?.Invoke(staging);
            stagingArea.Commit(cancellation);
        }
        finally
        {
            foreach (var w in writers) w?.Dispose();
            foreach (var h in handles.Values) h.Dispose();
        }
        log.LogInformation("wrote {Ranks} ranks, {GB:F2} GB in {Secs:F1} s", placement.Ranks, written / 1e9, clock.Elapsed.TotalSeconds);
        return new ShardResult(dest, placement.Ranks, names.Count, read, written, clock.Elapsed);
    }

    /// <summary>config.json and other side files as in the source (a rank folder is a partial HF checkpoint), plus rank.json.</summary>
    private static void WriteSideFiles(ModelCheckpoint src, ExpertPlacement p, int rank, string staging)
    {
        foreach (var file in Directory.EnumerateFiles(src.Directory))
        {
            var name = Path.GetFileName(file);
            if (name == SafetensorsCheckpoint.IndexFileName || name.EndsWith(".safetensors", StringComparison.Ordinal)) continue;
            File.Copy(file, Path.Combine(staging, name), overwrite: true); // a resumed run may have copied it already
        }
        var layers = new JsonObject();
        foreach (var l in p.Layers)
            layers[l.Layer.ToString(System.Globalization.CultureInfo.InvariantCulture)] =
                new JsonArray(l.RankSlots[rank].Select(x => (JsonNode)x).ToArray());
        var info = new JsonObject
        {
            ["rank"] = rank,
            ["ranks"] = p.Ranks,
            ["node"] = p.NodeOf(rank),
            ["placement"] = "../" + PlacementJson.FileName,
            ["experts_by_layer"] = layers,
        };
        File.WriteAllText(Path.Combine(staging, RankInfoName), info.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
    }
}
