using System.Text.RegularExpressions;
using Converter.Numerics.Ggml;

namespace Converter.Models;

/// <summary>One <c>--tensor-type REGEX=TYPE</c>: tensors whose name the pattern matches anywhere (std::regex_search,
/// as llama-quantize) get the type instead of the file type's rules; the first matching override wins.</summary>
public sealed record GgufTensorTypeOverride(Regex Pattern, GgmlType Type)
{
    /// <summary>Parses <c>REGEX=TYPE</c> (split at the last '='; the type in any case).</summary>
    /// <exception cref="ArgumentException">No '=', an empty side, an unknown type or a pattern that does not compile.</exception>
    public static GgufTensorTypeOverride Parse(string text)
    {
        int eq = text.LastIndexOf('=');
        if (eq <= 0 || eq == text.Length - 1)
            throw new ArgumentException($"--tensor-type '{text}': expected REGEX=TYPE, e.g. 'ffn_down=q6_k'");
        string pattern = text[..eq], typeName = text[(eq + 1)..];
        var type = GgufFileTypes.ParseGgmlType(typeName)
                   ?? throw new ArgumentException($"--tensor-type '{text}': unknown ggml type '{typeName}'");
        try
        {
            // ECMAScript: the grammar of std::regex's default; culture-invariant, no backtracking surprises from .NET-only syntax
            return new(new Regex(pattern, RegexOptions.ECMAScript | RegexOptions.CultureInvariant, TimeSpan.FromSeconds(1)), type);
        }
        catch (ArgumentException e)
        {
            throw new ArgumentException($"--tensor-type '{text}': bad regular expression ({e.Message})");
        }
    }
}

/// <summary>
/// What ggml type each GGUF weight gets: a llama.cpp file type (llama-quantize's <c>ftype</c> argument) with
/// llama-quantize's options. <see cref="GgufTypePolicy"/> turns it into one type per tensor.
/// </summary>
public sealed record GgufQuantization(GgufFileType FileType)
{
    /// <summary>llama-quantize <c>--pure</c>: every quantizable weight the default type, no per-tensor rules.</summary>
    public bool Pure { get; init; }

    /// <summary><c>--output-tensor-type</c>: the type of output.weight (and, with tied embeddings, token_embd).</summary>
    public GgmlType? OutputType { get; init; }

    /// <summary><c>--token-embedding-type</c>: the type of token_embd.weight.</summary>
    public GgmlType? TokenEmbeddingType { get; init; }

    /// <summary><c>--tensor-type</c> overrides in the order given.</summary>
    public IReadOnlyList<GgufTensorTypeOverride> Overrides { get; init; } = [];

    /// <summary>An importance matrix is given (llama-quantize's rules differ for IQ4_NL/IQ4_XS, Q4_0 and Q5_0).</summary>
    public bool HasImatrix { get; init; }

    /// <summary>The default ggml type of <see cref="FileType"/>.</summary>
    public GgmlType DefaultType => GgufFileTypes.DefaultType(FileType);

    /// <summary>The file type of a <c>--type</c> name in any case (see <see cref="GgufFileTypes.All"/>).</summary>
    /// <exception cref="ArgumentException">An unknown name.</exception>
    public static GgufQuantization Parse(string name) => GgufFileTypes.Find(name) is { } e
        ? new GgufQuantization(e.FileType) { Pure = e.Pure }
        : throw new ArgumentException($"unknown GGUF type '{name}' (one of {GgufFileTypes.Names})");

    /// <summary>The file whose quantizable weights are all <paramref name="type"/> where it has a name here
    /// (<c>q4_k</c>: the pure Q4_K file; <c>q8_0</c>: the Q8_0 file type).</summary>
    public static GgufQuantization Of(GgmlType type) => Parse(type.ToString());
}
