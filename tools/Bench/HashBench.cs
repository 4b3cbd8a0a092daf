using System.Diagnostics;
using System.IO.Hashing;
using System.Security.Cryptography;

namespace Converter.Tools.Bench;

/// <summary>
/// Why manifests and resume journals use XXH3-64 and not SHA-256: throughput of each over one in-memory buffer (what
/// hashing a file costs on top of reading it), and the time that is for a 700 GB artifact.
/// </summary>
public static class HashBench
{
    public static int Run(string[] args)
    {
        int mb = args.Length > 0 && int.TryParse(args[0], out var m) ? m : 256, reps = 4;
        var buffer = new byte[mb << 20];
        new Random(1).NextBytes(buffer);
        Console.WriteLine($"| hash | GB/s ({mb} MiB x {reps}) | 700 GB takes |");
        Console.WriteLine("|---|---:|---:|");
        foreach (var (name, hash) in new (string, Action<byte[]>)[]
                 {
                     ("SHA-256", b => SHA256.HashData(b)), ("XXH64", b => XxHash64.Hash(b)), ("XXH3-64 (manifest)", b => XxHash3.Hash(b)),
                 })
        {
            hash(buffer); // warm up
            var clock = Stopwatch.StartNew();
            for (int i = 0; i < reps; i++) hash(buffer);
            double gbs = (double)reps * buffer.Length / (1 << 30) / clock.Elapsed.TotalSeconds;
            Console.WriteLine($"| {name} | {gbs:F2} | {700 / gbs / 60:F1} min |");
        }
        return 0;
    }
}
