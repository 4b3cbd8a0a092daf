namespace Converter.Numerics;

/// <summary>
/// float8 e4m3fn (the format of DeepSeek's FP8 weights), codes as <see cref="byte"/>. Bit-exact with torch's
/// <c>float8_e4m3fn</c> conversions: round to nearest even; no saturation: |x| &gt; 464, +-inf and NaN all give
/// NaN (0x7F | sign). Decoding is exact; the NaN codes decode to 0x7FF00000 | sign, as torch does.
/// </summary>
public static class Fp8E4M3
{
    /// <summary>Largest finite value, 448.</summary>
    public const float MaxValue = 448f;

    public static byte FromSingle(float value) => (byte)E4M3Format.EncodeScalar(BitConverter.SingleToUInt32Bits(value));

    public static float ToSingle(byte code) => BitConverter.UInt32BitsToSingle(E4M3Format.DecodeScalar(code));

    public static void FromSingle(ReadOnlySpan<float> source, Span<byte> destination) => Fp8Spans.Encode<E4M3Format>(source, destination);

    /// <summary>bf16 bits -> e4m3fn (the bf16 value is exact in float32, so this equals converting via float32).</summary>
    public static void FromBf16(ReadOnlySpan<ushort> source, Span<byte> destination) => Fp8Spans.EncodeBf16<E4M3Format>(source, destination);

    public static void ToSingle(ReadOnlySpan<byte> source, Span<float> destination) => Fp8Spans.Decode<E4M3Format>(source, destination);
}
