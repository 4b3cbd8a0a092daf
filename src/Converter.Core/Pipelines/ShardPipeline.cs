using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Nodes;
using Converter.Formats.Safetensors;
using Converter.Models;
using Converter.Decoder.Onnx;
using Converter.Sharding;
using Converter.Tensors;
using Microsoft.Extensions.Logging;
using Microsoft.Win32.SafeHandles;

namespace Converter.Pipelines;

/// <param name="WriteExtras">Called with the staging folder before it is renamed, to add files beside placement.json (a load report).</param>
/// <param name="Onnx">Also write each rank's ONNX model (<c>rank-XXXXX/model.onnx</c> + data) with these weights (fp32 or fp8); null: none.</param>
public sealed record ShardOptions(string Output, long MaxShardBytes = 5_000_000_000, bool Overwrite = false, Action<string>? WriteExtras = null,
    OnnxWeightFormat? Onnx = null);

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

    public static ShardResult Run(ModelCheckpoint src, ExpertPlacement placement, ShardOptions o, ILogger log, IProgress<PipelineProgress>? progress = null)
    {
        var clock = Stopwatch.StartNew();
        PlacementJson.CheckMatches(placement, src.Architecture, "placement");
        if (o.Onnx != null) ShardOnnxExport.Check(src);
        var dest = Path.GetFullPath(o.Output);
        if (File.Exists(dest)) throw new IOException($"{dest}: a file is in the way of the output folder");
        if (Directory.Exists(dest) && !o.Overwrite) throw new IOException($"{dest}: output folder already exists (use --overwrite to replace it)");

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

        var parent = Path.GetDirectoryName(dest)!;
        Directory.CreateDirectory(parent);
        var staging = Path.Combine(parent, "." + Path.GetFileName(dest) + ".tmp-" + Environment.ProcessId);
        if (Directory.Exists(staging)) Directory.Delete(staging, true);
        Directory.CreateDirectory(staging);
        var writers = new SafetensorsWriter?[placement.Ranks];
        var handles = new Dictionary<string, SafeFileHandle>(StringComparer.Ordinal);
        // Tensor bytes go file to file in the kernel (copy_file_range) where it can; otherwise through this one buffer.
        var slab = GC.AllocateUninitializedArray<byte>((int)SlabBytes);
        long read = 0, written = 0;
        try
        {
            for (int r = 0; r < placement.Ranks; r++)
                writers[r] = new SafetensorsWriter(Path.Combine(staging, RankFolderName(r)), plans[r], o.MaxShardBytes, overwrite: false);
            var streams = new Stream[placement.Ranks];
            for (int i = 0; i < names.Count; i++)
            {
                var ranks = targets[i];
                for (int k = 0; k < ranks.Length; k++) streams[k] = writers[ranks[k]]!.BeginTensor(names[i], out _);
                var info = src.Tensors.Info(names[i]);
                if (!handles.TryGetValue(info.File, out var handle))
                    handles[info.File] = handle = File.OpenHandle(info.File, FileMode.Open, FileAccess.Read, FileShare.Read);
                long length = info.ByteLength;
                for (int k = 0; k < ranks.Length; k++)
                    FileRangeCopy.Copy(handle, info.File, info.FileOffset, (FileStream)streams[k], length, slab);
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
                    var onnx = ShardOnnxExport.Write(src, placement, r, Path.Combine(staging, RankFolderName(r)), weights, log,
                        reuseFrom: r == 0 ? null : Path.Combine(staging, RankFolderName(0))); // replicated weights converted once
                    written += onnx.DataBytes;
                    log.LogInformation("rank {Rank}: model.onnx ({MB:F1} MB of {Weights} weights)", r, onnx.DataBytes / 1e6, weights.ToString().ToLowerInvariant());
                }
            PlacementJson.Write(placement, Path.Combine(staging, PlacementJson.FileName));
            o.WriteExtras?.Invoke(staging);
            if (Directory.Exists(dest))
            {
                if (!o.Overwrite) throw new IOException($"{dest}: output folder appeared while writing");
                Directory.Delete(dest, true);
            }
            Directory.Move(staging, dest);
        }
        finally
        {
            foreach (var w in writers) w?.Dispose();
            foreach (var h in handles.Values) h.Dispose();
            if (Directory.Exists(staging))
                try { Directory.Delete(staging, true); } catch (IOException) { }
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
            File.Copy(file, Path.Combine(staging, name));
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
