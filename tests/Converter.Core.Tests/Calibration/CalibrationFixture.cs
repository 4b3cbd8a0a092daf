using System.Runtime.InteropServices;
using Converter.Calibration;
using Converter.Formats.Safetensors;
using Converter.Decoder.Onnx;
using Converter.Pipelines;
using Converter.Runtime.Calibration;
using Converter.Tensors;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;

namespace Converter.Tests.Calibration;

/// <summary>tiny-dsv3 exported once (with diagnostic outputs) and calibrated once on the first 16 calibration sequences.</summary>
public sealed class CalibrationFixture : IDisposable
{
    public const int Sequences = 16, Length = 128;
    public TestData.TempDir Tmp { get; } = new();
    public string Model { get; } = TestData.Model("tiny-dsv3");
    public string Onnx { get; }
    public string TokensPath { get; }
    public string Calib { get; }
    public int[] Tokens { get; }
    public CalibrateResult Result { get; }

    public CalibrationFixture()
    {
        Onnx = OnnxExportPipeline.Run(Model, Tmp["onnx"], new OnnxExportOptions(DiagnosticOutputs: true)).OutputDirectory;
        using (var f = SafetensorsFile.Open(TestData.Golden("tiny-dsv3", "calib.safetensors")))
        using (var t = f.Read("tokens"))
            Tokens = t.As<int>()[..(Sequences * Length)].ToArray();
        TokensPath = WriteTokens(Tmp["tokens"], Tokens, Sequences, Length);
        Calib = Tmp["calib"];
        Result = CalibratePipeline.Run(Model, TokensPath, Calib, new CalibrateOptions(Batch: 4, Threads: 2, OnnxDir: Onnx));
    }

    public static string WriteTokens(string dir, int[] tokens, int seqs, int len)
    {
        using (var w = new SafetensorsWriter(dir, [new TensorSpec("tokens", DType.I32, [seqs, len])], long.MaxValue, overwrite: true))
        {
            w.Write("tokens", MemoryMarshal.AsBytes(tokens.AsSpan()));
            w.Commit();
        }
        return Path.Combine(dir, "model.safetensors");
    }

    /// <summary>Every MoE layer's input [tokens, hidden] straight from an ONNX Runtime session on the export's graph outputs.</summary>
    public Dictionary<int, float[]> MoeInputs(IEnumerable<int> layers)
    {
        using var so = new SessionOptions { IntraOpNumThreads = 2 };
        using var s = new InferenceSession(Path.Combine(Onnx, "model.onnx"), so);
        var ids = Array.ConvertAll(Tokens, v => (long)v);
        var pos = new long[ids.Length];
        for (int i = 0; i < pos.Length; i++) pos[i] = i % Length;
        var ones = new long[ids.Length];
        Array.Fill(ones, 1L);
        var inputs = new List<NamedOnnxValue>
        {
            NamedOnnxValue.CreateFromTensor("input_ids", new DenseTensor<long>(ids, [Sequences, Length])),
            NamedOnnxValue.CreateFromTensor("attention_mask", new DenseTensor<long>(ones, [Sequences, Length])),
            NamedOnnxValue.CreateFromTensor("position_ids", new DenseTensor<long>(pos, [Sequences, Length])),
        };
        var names = layers.Select(OnnxDecoderNames.MoeInput).ToList();
        using var r = s.Run(inputs, names);
        return layers.Zip(r).ToDictionary(p => p.First, p => p.Second.AsTensor<float>().ToArray());
    }

    public void Dispose() => Tmp.Dispose();
}
