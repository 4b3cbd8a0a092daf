using Converter.Formats.Onnx.Proto;
using DataType = Converter.Formats.Onnx.Proto.TensorProto.Types.DataType;

namespace Converter.Formats.Onnx;

/// <summary>
/// Appends nodes to a graph or function body and hands out unique value names. Constants are emitted as
/// <c>Constant</c> nodes so the same code works inside model-local functions (which cannot see initializers).
/// </summary>
public abstract class OnnxNodeBuilder
{
    private readonly HashSet<string> _names = new(StringComparer.Ordinal);
    private int _counter;

    public List<NodeProto> Nodes { get; } = new();
    /// <summary>Domains of the operators used so far ("" is the default domain).</summary>
    public HashSet<string> Domains { get; } = new(StringComparer.Ordinal) { "" };

    /// <summary>A value name not used before in this scope, derived from <paramref name="hint"/>.</summary>
    public string Fresh(string hint)
    {
        string name = hint;
        while (!_names.Add(name)) name = $"{hint}_{++_counter}";
        return name;
    }

    /// <summary>Reserves an exact name (a graph input, a stable output); throws if it is taken.</summary>
    public string Reserve(string name) => _names.Add(name) ? name : throw new InvalidOperationException($"value name '{name}' used twice");

    /// <summary>Adds a node whose outputs get fresh names; returns them.</summary>
    public string[] Op(string opType, IReadOnlyList<string> inputs, int outputs, string domain = "", params AttributeProto[] attributes)
    {
        var names = new string[outputs];
        for (int i = 0; i < outputs; i++) names[i] = Fresh($"{opType.ToLowerInvariant()}_out{i}");
        OpNamed(opType, inputs, names, domain, attributes);
        return names;
    }

    /// <summary>Adds a single-output node and returns its output name.</summary>
    public string Op(string opType, IReadOnlyList<string> inputs, params AttributeProto[] attributes) =>
        Op(opType, inputs, 1, "", attributes)[0];

    /// <summary>Adds a node with caller-chosen output names ("" for an unused optional output).</summary>
    public void OpNamed(string opType, IReadOnlyList<string> inputs, IReadOnlyList<string> outputs, string domain = "", params AttributeProto[] attributes)
    {
        var n = new NodeProto { OpType = opType, Domain = domain, Name = Fresh("n_" + opType) };
        n.Input.AddRange(inputs);
        n.Output.AddRange(outputs);
        n.Attribute.AddRange(attributes);
        Nodes.Add(n);
        Domains.Add(domain);
    }

    public string ConstInt64(params long[] values) => Const(OnnxTensors.Int64("", [values.Length], values));
    public string ScalarInt64(long v) => Const(OnnxTensors.Int64("", [], v));
    public string ScalarFloat(float v) => Const(OnnxTensors.Float("", [], v));
    public string ConstFloat(long[] dims, params float[] values) => Const(OnnxTensors.Float("", dims, values));

    public string Const(TensorProto value)
    {
        var name = Fresh("const");
        value = value.Clone();
        value.Name = name;
        OpNamed("Constant", [], [name], "", OnnxAttr.Tensor("value", value));
        return name;
    }

    // Shorthands for the operators every body uses.
    public string Reshape(string x, string shape) => Op("Reshape", [x, shape]);
    public string Reshape(string x, params long[] shape) => Reshape(x, ConstInt64(shape));
    public string Transpose(string x, params long[] perm) => Op("Transpose", [x], OnnxAttr.Ints("perm", perm));
    public string Add(string a, string b) => Op("Add", [a, b]);
    public string Mul(string a, string b) => Op("Mul", [a, b]);
    public string Shape(string x, long? start = null, long? end = null)
    {
        var attrs = new List<AttributeProto>();
        if (start is { } s) attrs.Add(OnnxAttr.Int("start", s));
        if (end is { } e) attrs.Add(OnnxAttr.Int("end", e));
        return Op("Shape", [x], attrs.ToArray());
    }
    public string Concat(long axis, params string[] xs) => Op("Concat", xs, OnnxAttr.Int("axis", axis));
    public string Unsqueeze(string x, params long[] axes) => Op("Unsqueeze", [x, ConstInt64(axes)]);
    public string[] Split(string x, long axis, params long[] sizes) =>
        Op("Split", [x, ConstInt64(sizes)], sizes.Length, "", OnnxAttr.Int("axis", axis));
    /// <summary>x @ w^T for a 2-D x and a PyTorch-layout weight [out, in].</summary>
    public string Linear(string x2d, string weight) => Op("Gemm", [x2d, weight], OnnxAttr.Int("transB", 1));
    public string Cast(string x, DataType to) => Op("Cast", [x], OnnxAttr.Int("to", (long)to));
}

/// <summary>Builds a model-local function (FunctionProto) in a custom domain.</summary>
public sealed class OnnxFunctionBuilder : OnnxNodeBuilder
{
    public string Name { get; }
    public string Domain { get; }
    public List<string> Inputs { get; } = new();
    public List<string> Outputs { get; } = new();
    public string DocString { get; set; } = "";

    public OnnxFunctionBuilder(string domain, string name)
    {
        Domain = domain;
        Name = name;
    }

    public string Input(string name)
    {
        Inputs.Add(Reserve(name));
        return name;
    }

    /// <summary>Declares <paramref name="value"/> (already produced) as the next function output.</summary>
    public void Output(string value) => Outputs.Add(value);

    public FunctionProto Build(IReadOnlyDictionary<string, long> opsets)
    {
        var f = new FunctionProto { Name = Name, Domain = Domain, DocString = DocString };
        f.Input.AddRange(Inputs);
        f.Output.AddRange(Outputs);
        f.Node.AddRange(Nodes);
        // A function needs its own opset_import; inlined bodies are checked against the model's versions.
        foreach (var (domain, version) in opsets) f.OpsetImport.Add(new OperatorSetIdProto { Domain = domain, Version = version });
        return f;
    }
}

/// <summary>Builds the main graph: inputs, outputs, nodes; initializers are declared by the writer.</summary>
public sealed class OnnxGraphBuilder : OnnxNodeBuilder
{
    public string Name { get; }
    public List<ValueInfoProto> Inputs { get; } = new();
    public List<ValueInfoProto> Outputs { get; } = new();

    public OnnxGraphBuilder(string name) => Name = name;

    public string Input(string name, DataType type, params object?[] dims)
    {
        Inputs.Add(OnnxTensors.Value(Reserve(name), type, dims));
        return name;
    }

    /// <summary>Reserves a value name for an initializer so no node output collides with it.</summary>
    public string Initializer(string name) => Reserve(name);

    public void Output(string value, DataType type, params object?[]? dims) => Outputs.Add(OnnxTensors.Value(value, type, dims));

    public GraphProto Build()
    {
        var g = new GraphProto { Name = Name };
        g.Input.AddRange(Inputs);
        g.Output.AddRange(Outputs);
        g.Node.AddRange(Nodes);
        return g;
    }
}
