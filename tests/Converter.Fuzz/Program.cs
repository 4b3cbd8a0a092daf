using Converter.Fuzz;

// converter-fuzz <target>                 : AFL++ mode (tools/fuzz.sh runs it under afl-fuzz through SharpFuzz)
// converter-fuzz replay <target> <file>.. : runs files through a target, one line each: ok, bad input (the message) or CRASH
// converter-fuzz seeds <repo-root>        : rewrites tests/Converter.Fuzz/corpus from the bundled golden/ inputs
if (args.Length == 0 || args[0] is "-h" or "--help")
{
    Console.WriteLine($"usage: converter-fuzz <target> | replay <target> <file>... | seeds <repo-root>\ntargets: {string.Join(", ", FuzzTargets.Names)}");
    return args.Length == 0 ? 2 : 0;
}
var work = Path.Combine(Environment.GetEnvironmentVariable("CONVERTER_FUZZ_WORK") ?? Path.GetTempPath(), $"converter-fuzz-{Environment.ProcessId}");
if (args[0] == "seeds")
{
    SeedCorpus.Write(args[1], Path.Combine(args[1], "tests", "Converter.Fuzz", "corpus"));
    return 0;
}
if (args[0] == "replay")
{
    using var targets = new FuzzTargets(work);
    int crashes = 0;
    foreach (var file in args.Skip(2))
    {
        try
        {
            targets.Run(args[1], File.ReadAllBytes(file));
            Console.WriteLine($"{file}: ok");
        }
        catch (Exception e) when (FuzzTargets.IsBadInput(e))
        {
            Console.WriteLine($"{file}: bad input: {e.Message}");
        }
        catch (Exception e)
        {
            crashes++;
            Console.WriteLine($"{file}: CRASH {e}");
        }
    }
    return crashes == 0 ? 0 : 1;
}
string target = args[0];
if (!FuzzTargets.Names.Contains(target))
{
    Console.Error.WriteLine($"unknown target '{target}' (targets: {string.Join(", ", FuzzTargets.Names)})");
    return 2;
}
// Built inside the fuzzer's callback: instrumented code may only run once SharpFuzz has attached AFL's coverage map.
FuzzTargets? fuzz = null;
SharpFuzz.Fuzzer.OutOfProcess.Run(stream =>
{
    fuzz ??= new FuzzTargets(work);
    var ms = new MemoryStream();
    stream.CopyTo(ms);
    try
    {
        fuzz.Run(target, ms.ToArray());
    }
    catch (Exception e) when (FuzzTargets.IsBadInput(e))
    {
        // documented bad input: the CLI reports it in one line with exit 2
    }
});
return 0;
