using Converter.Tools.Bench;

// Each benchmark prints a Markdown table for BENCHMARKS.md. Benchmarks are never tests.
var benches = new Dictionary<string, (string Help, Func<string[], int> Run)>
{
    ["quantize"] = ("quantize fp8-block and bf16 on a synthetic checkpoint against cp of the output bytes", QuantizeBench.Run),
};
if (args.Length == 0 || !benches.TryGetValue(args[0], out var bench))
{
    Console.WriteLine("bench <name> [options]   (dotnet run --project tools/Bench -c Release -- <name> --help)");
    foreach (var (name, b) in benches) Console.WriteLine($"  {name,-12} {b.Help}");
    return args.Length == 0 ? 0 : 2;
}
return bench.Run(args[1..]);
