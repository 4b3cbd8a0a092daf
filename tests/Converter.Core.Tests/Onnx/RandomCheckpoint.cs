using System.Runtime.InteropServices;
using System.Text.Json.Nodes;
using Converter.Formats.Safetensors;
using Converter.Models;
using Converter.Numerics;
using Converter.Tensors;

namespace Converter.Tests.Onnx;

/// <summary>
/// A deterministic random BF16 checkpoint for any deepseek_v3 config (names and shapes from the architecture's
/// tensor map): linear weights uniform in ±1/sqrt(fan_in), norms near 1, small router bias.
/// </summary>
public static class RandomCheckpoint
{
    public static string Create(string dir, JsonObject config, ulong seed = 1)
    {
        Directory.CreateDirectory(dir);
        var cfgPath = Path.Combine(dir, "config.json");
        File.WriteAllText(cfgPath, config.ToJsonString());
        var arch = ArchitectureRegistry.FromConfig(new ConfigJson(cfgPath, config));
        var tensors = arch.ExpectedTensors();
        var stage = dir + ".st";
        using (var w = new SafetensorsWriter(stage, tensors.Select(t => new TensorSpec(t.Name, DType.BF16, t.Shape)).ToList(), long.MaxValue, false))
        {
            ulong state = seed * 0x9E3779B97F4A7C15UL + 1;
            double Next()
            {
                state ^= state << 13; state ^= state >> 7; state ^= state << 17;
                return (state >> 11) * (1.0 / (1UL << 53)) * 2 - 1; // uniform in [-1, 1)
            }
            foreach (var t in tensors)
            {
                long n = 1;
                foreach (var d in t.Shape) n *= d;
                var bits = new ushort[n];
                double amp, offset = 0;
                if (t.Role.Kind == TensorKind.Norm) { amp = 0.1; offset = 1; }
                else if (t.Role.Kind == TensorKind.RouterBias) amp = 0.01;
                else if (t.Role.Kind is TensorKind.Embedding) amp = 1;
                else amp = 1 / Math.Sqrt(t.Shape[^1]);
                for (long i = 0; i < n; i++) bits[i] = Bf16.FromSingle((float)(offset + amp * Next()));
                w.Write(t.Name, MemoryMarshal.AsBytes(bits.AsSpan()));
            }
            w.Commit();
        }
        foreach (var f in Directory.GetFiles(stage)) File.Move(f, Path.Combine(dir, Path.GetFileName(f)));
        Directory.Delete(stage);
        return dir;
    }
}
