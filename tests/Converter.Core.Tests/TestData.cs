namespace Converter.Tests;

/// <summary>Locates the repository's golden/ folder from the test binaries.</summary>
public static class TestData
{
    public static string Root { get; } = FindRoot();

    public static string Golden(params string[] parts) => Path.Combine([Root, "golden", .. parts]);

    public static string Model(string name) => Golden("models", name);

    private static string FindRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir != null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "Converter.sln"))) return dir.FullName;
        throw new DirectoryNotFoundException("Converter.sln not found above " + AppContext.BaseDirectory);
    }

    /// <summary>A fresh temporary folder, deleted when disposed.</summary>
    public sealed class TempDir : IDisposable
    {
        public string Path { get; } = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "converter-test-" + Guid.NewGuid().ToString("N"));
        public TempDir() => Directory.CreateDirectory(Path);
        public string this[string name] => System.IO.Path.Combine(Path, name);
        public void Dispose() { try { Directory.Delete(Path, true); } catch (IOException) { } }
    }
}
