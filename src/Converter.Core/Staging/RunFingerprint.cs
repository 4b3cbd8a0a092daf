using System.IO.Hashing;
using System.Text;

namespace Converter.Staging;

/// <summary>
/// What a resume must find unchanged: the command, its options (as text, output excluded) and each input file's
/// name, size and modification time (not its content: hashing 700 GB to decide whether to resume would cost more than
/// most resumes save).
/// </summary>
public static class RunFingerprint
{
    public static string Of(string command, string options, params string[] inputs)
    {
        var text = new StringBuilder().Append(command).Append('\n').Append(options).Append('\n');
        foreach (var input in inputs)
        {
            if (Directory.Exists(input))
                foreach (var f in Directory.EnumerateFiles(input).Order(StringComparer.Ordinal)) Add(text, f);
            else if (File.Exists(input)) Add(text, input);
            else text.Append(input).Append(" missing\n");
        }
        return Convert.ToHexStringLower(XxHash3.Hash(Encoding.UTF8.GetBytes(text.ToString())));
    }

    private static void Add(StringBuilder text, string file)
    {
        var info = new FileInfo(file);
        text.Append(Path.GetFileName(file)).Append(' ').Append(info.Length).Append(' ').Append(info.LastWriteTimeUtc.Ticks).Append('\n');
    }
}
