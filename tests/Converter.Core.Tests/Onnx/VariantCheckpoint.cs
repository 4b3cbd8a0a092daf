using System.Runtime.InteropServices;
using System.Text.Json.Nodes;
using Converter.Formats.Safetensors;
using Converter.Numerics;
using Converter.Tensors;

namespace Converter.Tests.Onnx;

/// <summary>Writes modified copies of the tiny reference checkpoint (config edits, rewritten tensors) for variation tests.</summary>
public static class VariantCheckpoint
{
    /// <summary>
    /// Replaces one source tensor: return null to keep it, or the tensors (BF16-rounded) to write in its place
    /// (an empty list drops it). <c>read</c> returns any source tensor as float32.
    /// </summary>
    public delegate IReadOnlyList<(string Name, long[] Shape, float[] Data)>? Rewrite(string name, long[] shape, Func<string, float[]> read);

    public static string Create(string dir, Action<JsonObject> editConfig, Rewrite? rewrite = null, string model = "tiny-dsv3")
    {
        var src = TestData.Model(model);
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(src, "config.json")))!.AsObject();
        editConfig(config);
        if (rewrite == null)
        {
            Directory.CreateDirectory(dir);
            foreach (var f in Directory.GetFiles(src, "*.safetensors*")) File.Copy(f, Path.Combine(dir, Path.GetFileName(f)));
            File.WriteAllText(Path.Combine(dir, "config.json"), config.ToJsonString());
            return dir;
        }

        using var st = SafetensorsCheckpoint.Open(src);
        float[] Read(string n) { using var t = st.Read(n); return TensorConvert.ToFloat32(t); }
        var plan = new List<TensorSpec>();
        var replaced = new Dictionary<string, byte[]>();
        foreach (var name in st.Names)
        {
            var info = st.Info(name);
            var outs = rewrite(name, info.Shape, Read);
            if (outs == null)
            {
                plan.Add(new TensorSpec(name, info.DType, info.Shape));
                continue;
            }
            foreach (var (n, shape, data) in outs)
            {
                var bits = new ushort[data.Length];
                for (int i = 0; i < data.Length; i++) bits[i] = Bf16.FromSingle(data[i]);
                plan.Add(new TensorSpec(n, DType.BF16, shape));
                replaced[n] = MemoryMarshal.AsBytes(bits.AsSpan()).ToArray();
            }
        }
        using var w = new SafetensorsWriter(dir, plan, long.MaxValue, overwrite: false);
        foreach (var spec in plan)
        {
            if (replaced.TryGetValue(spec.Name, out var bytes)) { w.Write(spec.Name, bytes); continue; }
            using var t = st.Read(spec.Name);
            w.Write(spec.Name, t.Bytes);
        }
        File.WriteAllText(Path.Combine(w.StagingDirectory, "config.json"), config.ToJsonString());
        w.Commit();
        return dir;
    }

    /// <summary>
    /// No q_lora: q_proj = q_b · diag(q_a_layernorm) · q_a / rms, where rms ≈ sqrt(mean row norm² of q_a) stands
    /// in for the dropped normalisation (E[(a·x)²] = |a|² for unit-RMS x), so attention logits keep their scale.
    /// </summary>
    public static IReadOnlyList<(string, long[], float[])>? RemoveQLora(string name, long[] shape, Func<string, float[]> read)
    {
        if (name.EndsWith(".self_attn.q_a_layernorm.weight") || name.EndsWith(".self_attn.q_b_proj.weight")) return [];
        if (!name.EndsWith(".self_attn.q_a_proj.weight")) return null;
        string p = name[..^"q_a_proj.weight".Length];
        var qa = read(name);
        var qn = read(p + "q_a_layernorm.weight");
        var qb = read(p + "q_b_proj.weight");
        int rank = qn.Length, hidden = qa.Length / rank, outRows = qb.Length / rank;
        double norm2 = 0;
        foreach (var v in qa) norm2 += (double)v * v;
        double rms = Math.Sqrt(norm2 / rank);
        var q = new float[outRows * hidden];
        for (int r = 0; r < outRows; r++)
            for (int j = 0; j < hidden; j++)
            {
                double s = 0;
                for (int i = 0; i < rank; i++) s += (double)qb[r * rank + i] * qn[i] * qa[i * hidden + j];
                q[r * hidden + j] = (float)(s / rms);
            }
        return [(p + "q_proj.weight", [outRows, hidden], q)];
    }

    /// <summary>
    /// Fewer heads and a narrower V: keeps the first <paramref name="heads"/> heads of q_b / kv_b / o_proj and the
    /// first <paramref name="vDim"/> value channels of each (tiny-dsv3: 4 heads, nope 32, rope 16, v 32).
    /// </summary>
    public static Rewrite SliceHeads(int heads, int vDim, int nope = 32, int rope = 16, int oldV = 32) => (name, shape, read) =>
    {
        if (name.EndsWith(".self_attn.q_b_proj.weight"))
        {
            int cols = (int)shape[1];
            return [(name, [heads * (nope + rope), cols], read(name).AsSpan(0, heads * (nope + rope) * cols).ToArray())];
        }
        if (name.EndsWith(".self_attn.kv_b_proj.weight"))
        {
            int cols = (int)shape[1];
            var w = read(name);
            var o = new float[heads * (nope + vDim) * cols];
            for (int h = 0; h < heads; h++)
                for (int r = 0; r < nope + vDim; r++)
                    w.AsSpan((h * (nope + oldV) + r) * cols, cols).CopyTo(o.AsSpan((h * (nope + vDim) + r) * cols));
            return [(name, [heads * (nope + vDim), cols], o)];
        }
        if (name.EndsWith(".self_attn.o_proj.weight"))
        {
            int rows = (int)shape[0], cols = (int)shape[1];
            var w = read(name);
            var o = new float[rows * heads * vDim];
            for (int r = 0; r < rows; r++)
                for (int h = 0; h < heads; h++)
                    w.AsSpan(r * cols + h * oldV, vDim).CopyTo(o.AsSpan(r * heads * vDim + h * vDim));
            return [(name, [rows, heads * vDim], o)];
        }
        return null;
    };
}
