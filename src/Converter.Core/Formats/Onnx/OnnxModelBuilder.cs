using Converter.Formats.Onnx.Proto;

namespace Converter.Formats.Onnx;

/// <summary>Assembles a ModelProto: the graph, model-local functions, opset imports and metadata.</summary>
public sealed class OnnxModelBuilder
{
    public const long IrVersion = 11;
    public const long DefaultOpset = 23;
    public const string MicrosoftDomain = "com.microsoft";

    /// <summary>Opset version per domain; every domain a node uses must appear here.</summary>
    public Dictionary<string, long> Opsets { get; } = new(StringComparer.Ordinal) { [""] = DefaultOpset };
    public List<OnnxFunctionBuilder> Functions { get; } = new();
    public Dictionary<string, string> Metadata { get; } = new(StringComparer.Ordinal);
    public string ProducerName { get; set; } = "converter";
    public string ProducerVersion { get; set; } = "0.1";
    public string DocString { get; set; } = "";

    public OnnxModelBuilder Import(string domain, long version)
    {
        Opsets[domain] = version;
        return this;
    }

    public OnnxFunctionBuilder Function(string domain, string name)
    {
        if (!Opsets.ContainsKey(domain)) Opsets[domain] = 1;
        var f = new OnnxFunctionBuilder(domain, name);
        Functions.Add(f);
        return f;
    }

    public ModelProto Build(OnnxGraphBuilder graph)
    {
        foreach (var d in graph.Domains)
            if (!Opsets.ContainsKey(d)) throw new InvalidOperationException($"graph uses domain '{d}' that the model does not import");
        foreach (var f in Functions)
            foreach (var d in f.Domains)
                if (!Opsets.ContainsKey(d)) throw new InvalidOperationException($"function {f.Domain}::{f.Name} uses domain '{d}' that the model does not import");
        var m = new ModelProto
        {
            IrVersion = IrVersion,
            ProducerName = ProducerName,
            ProducerVersion = ProducerVersion,
            DocString = DocString,
            Graph = graph.Build(),
        };
        foreach (var (domain, version) in Opsets) m.OpsetImport.Add(new OperatorSetIdProto { Domain = domain, Version = version });
        foreach (var f in Functions) m.Functions.Add(f.Build(Opsets));
        foreach (var (k, v) in Metadata) m.MetadataProps.Add(new StringStringEntryProto { Key = k, Value = v });
        return m;
    }
}
