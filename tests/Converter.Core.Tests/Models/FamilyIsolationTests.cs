using System.Text.RegularExpressions;

namespace Converter.Tests.Models;

/// <summary>
/// The family contract's layering rule, checked on the source tree: a model family's namespace and types are named
/// only inside its own folder under src/Converter.Core/Models/ and in the registry, so adding a family never means
/// editing a pipeline, the runtime, verification or the CLI.
/// </summary>
public class FamilyIsolationTests
{
    private static string SourceRoot
    {
        get
        {
            for (var d = new DirectoryInfo(AppContext.BaseDirectory); d != null; d = d.Parent)
                if (File.Exists(Path.Combine(d.FullName, "Converter.sln"))) return Path.Combine(d.FullName, "src");
            throw new DirectoryNotFoundException("Converter.sln not found above " + AppContext.BaseDirectory);
        }
    }

    /// <summary>Folders under Models/ that hold an architecture class: the families.</summary>
    private static string[] Families() => Directory.GetDirectories(Path.Combine(SourceRoot, "Converter.Core", "Models"))
        .Where(d => Directory.GetFiles(d, "*Architecture.cs").Length > 0)
        .Select(Path.GetFileName).OfType<string>().ToArray();

    [Fact]
    public void ThereAreSeveralFamilies() => Families().Should().Contain(["DeepseekV3", "Qwen3Moe"]);

    [Fact]
    public void NoSourceOutsideAFamilyFolderNamesItsTypes()
    {
        var offenders = new List<string>();
        foreach (var family in Families())
        {
            string folder = Path.Combine(SourceRoot, "Converter.Core", "Models", family) + Path.DirectorySeparatorChar;
            // The family's namespace and every public or internal type it declares.
            var types = Directory.GetFiles(folder, "*.cs", SearchOption.AllDirectories)
                .SelectMany(f => Regex.Matches(File.ReadAllText(f), @"\b(?:class|record|struct|enum|interface)\s+([A-Z]\w+)").Select(m => m.Groups[1].Value))
                .Distinct().ToList();
            var pattern = new Regex($@"\bConverter\.Models\.{family}\b|\b(?:{string.Join("|", types)})\b");
            foreach (var file in Directory.GetFiles(SourceRoot, "*.cs", SearchOption.AllDirectories))
            {
                if (file.StartsWith(folder, StringComparison.Ordinal) || file.Contains($"{Path.DirectorySeparatorChar}obj{Path.DirectorySeparatorChar}")
                    || file.Contains($"{Path.DirectorySeparatorChar}bin{Path.DirectorySeparatorChar}") || Path.GetFileName(file) == "ArchitectureRegistry.cs")
                    continue;
                var text = File.ReadAllText(file);
                foreach (Match m in pattern.Matches(text))
                    offenders.Add($"{Path.GetRelativePath(SourceRoot, file)} names {m.Value} ({family})");
            }
        }
        offenders.Should().BeEmpty();
    }
}
