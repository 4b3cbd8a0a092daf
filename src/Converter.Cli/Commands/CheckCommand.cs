using System.CommandLine;
using Converter.Staging;

namespace Converter.Cli.Commands;

/// <summary><c>converter check &lt;artifact&gt;</c>: the artifact against the manifest its command wrote.</summary>
public static class CheckCommand
{
    public static Command Create()
    {
        var path = new Argument<string>("artifact")
        {
            Description = "An artifact folder (its manifest.json), a single-file artifact (x.gguf, checked against x.gguf.manifest.json) or a manifest",
        };
        var cmd = new Command("check", "Check an artifact against its manifest: every file present, with its size and XXH3-64 hash, and no file the manifest does not list " +
                                       "(exit 1 on a mismatch, 2 when the manifest is missing or malformed)")
        {
            path,
        };
        cmd.SetAction(parse => CommandRunner.Run(parse, (_, cancellation) =>
        {
            var target = parse.GetValue(path)!;
            var r = ArtifactManifest.Check(target, cancellation);
            var output = parse.InvocationConfiguration.Output;
            foreach (var p in r.Problems) parse.InvocationConfiguration.Error.WriteLine($"mismatch: {p}");
            output.WriteLine(r.Ok
                ? $"ok: {r.Files} file(s), {OsErrors.Size(r.Bytes)}, match the manifest of {target}"
                : $"FAILED: {r.Problems.Count} problem(s) in {target}");
            return r.Ok ? CommandRunner.Ok : CommandRunner.Failed;
        }));
        return cmd;
    }
}
