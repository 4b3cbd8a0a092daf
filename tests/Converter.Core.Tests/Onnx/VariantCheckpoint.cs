using System.Text.Json;
using System.Text.Json.Nodes;
using Converter.Formats.Safetensors;
using Converter.Numerics;
using Converter.Tensors;

namespace Converter.Tests.Onnx;

/// <summary>Writes modified copies of the tiny reference checkpoint (config edits, q_lora removed) for variation tests.</summary>
public static class VariantCheckpoint
{
    public static string Create(string dir, Action<JsonObject> editConfig, bool removeQLora = false)
    {
        var src = TestData.Model("tiny-dsv3");
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(src, "config.json")))!.AsObject();
        editConfig(config);
        if (!removeQLora)
        {
            Directory.CreateDirectory(dir);
            foreach (var f in Directory.GetFiles(src, "*.safetensors*")) File.Copy(f, Path.Combine(dir, Path.GetFileName(f)));
            File.WriteAllText(Path.Combine(dir, "config.json"), config.ToJsonString());
            return dir;
        }

        // No q_lora: q_proj = q_b · diag(q_a_layernorm) · q_a / rms, where rms ≈ sqrt(mean row norm² of q_a) stands in
        // for the dropped normalisation (E[(a·x)²] = |a|² for unit-RMS x), so attention logits keep their scale.
        config["q_lora_rank"] = null;
        using var st = SafetensorsCheckpoint.Open(src);
        var plan = new List<TensorSpec>();
        var replaced = new Dictionary<string, byte[]>();
        foreach (var name in st.Names)
        {
            if (name.Contains(".self_attn.q_a_") || name.Contains(".self_attn.q_b_proj")) continue;
            var info = st.Info(name);
            plan.Add(new TensorSpec(name, info.DType, info.Shape));
            if (!name.EndsWith(".self_attn.kv_a_proj_with_mqa.weight")) continue;
            string p = name[..^"kv_a_proj_with_mqa.weight".Length];
            float[] Read(string n) { using var t = st.Read(n); return TensorConvert.ToFloat32(t); }
            var qa = Read(p + "q_a_proj.weight");
            var qn = Read(p + "q_a_layernorm.weight");
            var qb = Read(p + "q_b_proj.weight");
            int rank = qn.Length, hidden = qa.Length / rank, outRows = qb.Length / rank;
            double norm2 = 0;
            foreach (var v in qa) norm2 += (double)v * v;
            double rms = Math.Sqrt(norm2 / rank);
            var q = new ushort[outRows * hidden];
            for (int r = 0; r < outRows; r++)
                for (int j = 0; j < hidden; j++)
                {
                    double s = 0;
                    for (int i = 0; i < rank; i++) s += (double)qb[r * rank + i] * qn[i] * qa[i * hidden + j];
                    q[r * hidden + j] = Bf16.FromSingle((float)(s / rms));
                }
            var qName = p + "q_proj.weight";
            plan.Add(new TensorSpec(qName, DType.BF16, [outRows, hidden]));
            replaced[qName] = System.Runtime.InteropServices.MemoryMarshal.AsBytes(q.AsSpan()).ToArray();
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
}
