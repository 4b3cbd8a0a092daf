using Converter.Formats.Safetensors;
using Converter.Tensors;

namespace Converter.Tests.Numerics;

/// <summary>Opens golden/models/tiny-dsv4 and tiny-dsv4-fp8 (whose scales are <c>F8_E8M0</c>) with the project's safetensors reader.</summary>
internal static class DeepseekV4GoldenCheckpoints
{
    public static SafetensorsCheckpoint OpenBf16() => SafetensorsCheckpoint.Open(TestData.Model("tiny-dsv4"));

    public static SafetensorsCheckpoint OpenFp8() => SafetensorsCheckpoint.Open(TestData.Model("tiny-dsv4-fp8"));

    /// <summary>True for a scale entry of the official layout.</summary>
    public static bool IsScaleDType(DType t) => t == DType.F8_E8M0;
}
