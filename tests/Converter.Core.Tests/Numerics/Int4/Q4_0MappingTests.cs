using Converter.Numerics;
using Converter.Numerics.Int4;

namespace Converter.Tests.Numerics.Int4;

public class Q4_0MappingTests
{
    [Fact]
    public void SymmetricGroup32MapsToQ4_0BitIdentically()
    {
        int rows = 16, cols = 256;
        var w = Int4QuantizerTests.RandomWeight(rows, cols, 3);
        var q = Int4GroupQuantizer.Quantize(w, rows, cols, new Int4Scheme(32, true), Int4ClipSearch.Default);
        var blocks = new byte[rows * cols / 32 * Q4_0Mapping.BlockBytes];
        Q4_0Mapping.Convert(q, blocks, Q4_0Inexact.Throw).Should().Be(0);
        var back = new float[rows * cols];
        Q4_0Mapping.Dequantize(blocks, back);
        var expected = q.Dequantize();
        for (int i = 0; i < back.Length; i++)
            BitConverter.SingleToInt32Bits(back[i]).Should().Be(BitConverter.SingleToInt32Bits(expected[i]), $"value {i}");
        // Layout by hand: block 0's byte 2 holds element 0 (low nibble) and element 16 (high nibble) as q + 8.
        blocks[2].Should().Be((byte)((q.Q[0] + 8) | (q.Q[16] + 8) << 4));
        ((ushort)(blocks[0] | blocks[1] << 8)).Should().Be(F16.FromSingle(Bf16.ToSingle(q.Scales[0])));
    }

    [Fact]
    public void ScaleNotExactInFp16IsRefusedOrRoundedAndCounted()
    {
        var q = Int4Weight.Allocate(1, 64, new Int4Scheme(32, true));
        for (int i = 0; i < 64; i++) q.Q[i] = (sbyte)(i % 16 - 8);
        // 2^-20 * (1 + 2^-7): a BF16 value below fp16's normal range with a mantissa bit fp16 subnormals lack.
        ushort tiny = Bf16.FromSingle(MathF.Pow(2, -20) * (1 + 1f / 128));
        Q4_0Mapping.IsExactInF16(tiny).Should().BeFalse();
        q.Scales[0] = tiny;
        q.Scales[1] = Bf16.FromSingle(0.01f);
        Q4_0Mapping.IsExactInF16(q.Scales[1]).Should().BeTrue();
        var blocks = new byte[2 * Q4_0Mapping.BlockBytes];
        var strict = () => Q4_0Mapping.Convert(q, blocks, Q4_0Inexact.Throw, "blk.3.ffn_down_exps");
        strict.Should().Throw<InvalidDataException>().WithMessage("*blk.3.ffn_down_exps*row 0, group 0*");
        Q4_0Mapping.Convert(q, blocks, Q4_0Inexact.RoundScale).Should().Be(1);
    }

    [Fact]
    public void AsymmetricOrOtherGroupSizesAreRefused()
    {
        var act = () => Q4_0Mapping.Convert(Int4Weight.Allocate(1, 64, new Int4Scheme(64, true)), new byte[64], Q4_0Inexact.Throw, "t");
        act.Should().Throw<InvalidDataException>().WithMessage("*group 64*");
        var act2 = () => Q4_0Mapping.Convert(Int4Weight.Allocate(1, 64, new Int4Scheme(32, false)), new byte[64], Q4_0Inexact.Throw, "t");
        act2.Should().Throw<InvalidDataException>().WithMessage("*asymmetric*");
    }
}
