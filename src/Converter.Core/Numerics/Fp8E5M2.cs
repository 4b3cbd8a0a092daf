namespace Converter.Numerics;

/// <summary>
/// float8 e5m2, codes as <see cref="byte"/>. Bit-exact with torch's <c>float8_e5m2</c> conversions: round to
/// nearest even; |x| &gt;= 61440 and +-inf give +-inf (0x7C | sign); NaN gives 0x7F | sign. Decoding is exact;
/// NaN codes decode to quiet NaNs carrying the two mantissa bits, as torch does.
/// </summary>
public static class Fp8E5M2
{
    /// <summary>Largest finite value, 57344.</summary>
    public const float MaxValue = 57344f;

    public static byte FromSingle(float value) => (byte)E5M2Format.EncodeScalar(BitConverter.SingleToUInt32Bits(value));

    public static float ToSingle(byte code) => BitConverter.UInt32BitsToSingle(E5M2Format.DecodeScalar(code));

    public static void FromSingle(ReadOnlySpan<float> source, Span<byte> destination) => Fp8Spans.Encode<E5M2Format>(source, destination);

    /// <summary>bf16 bits -> e5m2 (equal to converting via float32).</summary>
    public static void FromBf16(ReadOnlySpan<ushort> source, Span<byte> destination) => Fp8Spans.EncodeBf16<E5M2Format>(source, destination);

    public static void ToSingle(ReadOnlySpan<byte> source, Span<float> destination) => Fp8Spans.Decode<E5M2Format>(source, destination);
}
