using Converter.Formats.Safetensors;
using Converter.Models;
using Converter.Pipelines;

namespace Converter.Sharding;

public sealed record ShardCheckResult(int SourceTensors, int RankCopies, long BytesCompared, IReadOnlyList<string> Problems)
{
    public bool Ok => Problems.Count == 0;
}

/// <summary>
/// Proves a sharded output loses nothing: every source tensor is found on exactly the ranks the placement names
/// (every replica of an expert, every rank for the rest), with the same dtype, shape and bytes; no rank holds
/// anything else; every rank's config.json is the source's.
/// </summary>
public static class ShardChecker
{
    private const long SlabBytes = 16L << 20;

    public static ShardCheckResult Check(string outDir, string sourceDir, int maxProblems = 50)
    {
        var placementPath = Path.Combine(outDir, PlacementJson.FileName);
        var placement = PlacementJson.Read(placementPath);
        using var src = ModelCheckpoint.Open(sourceDir);
        PlacementJson.CheckMatches(placement, src.Architecture, placementPath);
        var problems = new List<string>();
        void Problem(string p) { if (problems.Count < maxProblems) problems.Add(p); }

        var rankDirs = Directory.GetDirectories(outDir, "rank-*").Select(Path.GetFileName).Order().ToArray();
        var expected = Enumerable.Range(0, placement.Ranks).Select(ShardPipeline.RankFolderName).ToArray();
        if (!rankDirs.SequenceEqual(expected))
            throw new InvalidDataException($"{outDir}: rank folders [{string.Join(", ", rankDirs)}] do not match the {placement.Ranks} ranks of {placementPath}");

        var ranks = new SafetensorsCheckpoint[placement.Ranks];
        try
        {
            for (int r = 0; r < placement.Ranks; r++) ranks[r] = SafetensorsCheckpoint.Open(Path.Combine(outDir, expected[r]));
            var configBytes = File.ReadAllBytes(Path.Combine(sourceDir, "config.json"));
            var seen = new HashSet<string>[placement.Ranks];
            for (int r = 0; r < placement.Ranks; r++)
            {
                seen[r] = new HashSet<string>(StringComparer.Ordinal);
                var cfg = Path.Combine(outDir, expected[r], "config.json");
                if (!File.Exists(cfg) || !File.ReadAllBytes(cfg).AsSpan().SequenceEqual(configBytes))
                    Problem($"{cfg}: missing or differs from the source config.json");
            }
            int copies = 0;
            long compared = 0;
            foreach (var name in src.Tensors.Names)
            {
                var info = src.Tensors.Info(name);
                foreach (var r in ShardPipeline.Destinations(src.Architecture, placement, name, info.File))
                {
                    seen[r].Add(name);
                    var rank = ranks[r];
                    if (!rank.Contains(name)) { Problem($"{expected[r]}: tensor '{name}' is missing"); continue; }
                    var got = rank.Info(name);
                    if (got.DType != info.DType || !got.Shape.AsSpan().SequenceEqual(info.Shape))
                    {
                        Problem($"{got.File}: tensor '{name}' is {got.DType} {got.ShapeText}, source is {info.DType} {info.ShapeText}");
                        continue;
                    }
                    for (long off = 0; off < info.ByteLength; off += SlabBytes)
                    {
                        long n = Math.Min(SlabBytes, info.ByteLength - off);
                        using var a = src.Tensors.ReadRange(name, off, n);
                        using var b = rank.ReadRange(name, off, n);
                        if (!a.Bytes.SequenceEqual(b.Bytes))
                        {
                            Problem($"{got.File}: tensor '{name}' differs from the source in bytes [{off}, {off + n})");
                            break;
                        }
                        compared += n;
                    }
                    copies++;
                }
            }
            for (int r = 0; r < placement.Ranks; r++)
                foreach (var name in ranks[r].Names)
                    if (!seen[r].Contains(name)) Problem($"{expected[r]}: holds tensor '{name}' that the placement does not give this rank");
            return new ShardCheckResult(src.Tensors.Names.Count, copies, compared, problems);
        }
        finally
        {
            foreach (var r in ranks) r?.Dispose();
        }
    }
}
