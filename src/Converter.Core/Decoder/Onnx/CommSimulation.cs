using Converter.Formats.Onnx;
using Converter.Numerics;
using Converter.Numerics.ActivationFormats;
using DataType = Converter.Formats.Onnx.Proto.TensorProto.Types.DataType;
using static Converter.Formats.Onnx.OnnxAttr;

namespace Converter.Decoder.Onnx;

/// <summary>
/// Expert-parallel traffic to simulate inside the MoE function: a quantize-dequantize of the dispatch (the MoE
/// input as sent to the routed experts; the router and the shared experts read the exact input, they run on
/// the token's own rank) and/or of the combine (each selected expert's output before its routing weight).
/// Null: exact.
/// </summary>
public sealed record CommSimulation(ActivationFormat? Dispatch, ActivationFormat? Combine)
{
    public bool Any => Dispatch != null || Combine != null;

    public override string ToString() =>
        $"dispatch {(Dispatch is { } d ? ActivationFormatParser.Name(d) : "exact")}, combine {(Combine is { } c ? ActivationFormatParser.Name(c) : "exact")}";
}

/// <summary>
/// Quantize-dequantize of activation rows [tokens, hidden] in standard ONNX ops (stock ONNX Runtime), per 1x128
/// tile of the hidden dimension (zero-padded to a multiple of 128, which changes neither amax nor the nonzero
/// amin), mirroring <see cref="ActivationQuantizer"/>:
/// <list type="bullet">
/// <item>BF16: Cast to bfloat16 and back.</item>
/// <item>E4M3/E5M2: s = max(amax, 1e-4) / fmax in float32; Cast(x / s) to float8 (saturating) and back, times s.</item>
/// <item>LogFMT-n: the pinned codec. Tile statistics in float32 (amax, nonzero amin, amin_eff = max(amin,
/// amax * 2^-32), all exact), then in float64: lmin, lmax, step; k = clamp(floor((log2|x| - lmin) / step), 0, K-2)
/// picks the two neighbouring levels, each rounded to float32 as the codec does, and the nearer one wins in
/// linear space (ties to the larger; below half the first level: zero). Constant tiles decode to amax, all-zero
/// tiles to zero. The float64 log of |x| can put a value one bracket off only when it sits within ~1e-16 of a
/// level, so codes agree except at such boundaries (tests measure the agreement on real activations).</item>
/// </list>
/// </summary>
public static class OnnxCommQdq
{
    public const int Tile = ActivationQuantizer.TileSize;

    /// <summary>Emits the nodes for y = qdq(x2) into <paramref name="f"/> and returns y ([tokens, hidden], float32).</summary>
    public static string Emit(OnnxNodeBuilder f, string x2, ActivationFormat format, long hidden)
    {
        if (format.Kind == ActivationFormatKind.Bf16) return f.Cast(f.Cast(x2, DataType.Bfloat16), DataType.Float);
        long pad = (Tile - hidden % Tile) % Tile, tiles = (hidden + pad) / Tile;
        string xp = pad == 0 ? x2 : f.Op("Pad", [x2, f.ConstInt64(0, 0, 0, pad)]);
        string xt = f.Reshape(xp, -1, tiles, Tile);
        string yt = format.Kind switch
        {
            ActivationFormatKind.E4M3 => Fp8(f, xt, DataType.Float8E4M3Fn, Fp8E4M3.MaxValue),
            ActivationFormatKind.E5M2 => Fp8(f, xt, DataType.Float8E5M2, Fp8E5M2.MaxValue),
            ActivationFormatKind.LogFmt => LogFmt(f, xt, format.Bits),
            _ => throw new ArgumentOutOfRangeException(nameof(format), format, null),
        };
        string y = f.Reshape(yt, -1, tiles * Tile);
        return pad == 0 ? y : f.Op("Slice", [y, f.ConstInt64(0), f.ConstInt64(hidden), f.ConstInt64(1)]);
    }

    private static string ReduceMax(OnnxNodeBuilder f, string x) => f.Op("ReduceMax", [x, f.ConstInt64(-1)], Int("keepdims", 1));

    private static string Fp8(OnnxNodeBuilder f, string xt, DataType type, float fmax)
    {
        string amax = ReduceMax(f, f.Op("Abs", [xt]));
        string s = f.Op("Div", [f.Op("Max", [amax, f.ScalarFloat(ActivationQuantizer.AmaxFloor)]), f.ScalarFloat(fmax)]);
        string codes = f.Cast(f.Op("Div", [xt, s]), type);
        return f.Mul(f.Cast(codes, DataType.Float), s);
    }

    private static string ScalarDouble(OnnxNodeBuilder f, double v) => f.Const(OnnxTensors.Raw<double>("", DataType.Double, [], [v]));

    private static string LogFmt(OnnxNodeBuilder f, string xt, int bits)
    {
        long k = (1L << (bits - 1)) - 1; // largest magnitude code
        string a = f.Op("Abs", [xt]);
        string amax = ReduceMax(f, a);
        string nz = f.Op("Greater", [a, f.ScalarFloat(0f)]);
        string amin = f.Op("ReduceMin", [f.Op("Where", [nz, a, f.ScalarFloat(float.PositiveInfinity)]), f.ConstInt64(-1)], Int("keepdims", 1));
        string aminEff = f.Op("Max", [amin, f.Mul(amax, f.ScalarFloat(MathF.ScaleB(1f, -32)))]);

        string D(string v) => f.Cast(v, DataType.Double);
        string invLn2 = ScalarDouble(f, 1.0 / Math.Log(2.0));
        string Log2(string v) => f.Mul(f.Op("Log", [v]), invLn2);
        string lmin = Log2(D(aminEff)), lmax = Log2(D(amax));
        string step = f.Op("Div", [f.Op("Sub", [lmax, lmin]), ScalarDouble(f, k - 1)]);
        string positive = f.Op("Greater", [step, ScalarDouble(f, 0)]);
        string stepSafe = f.Op("Where", [positive, step, ScalarDouble(f, 1)]);
        string ad = D(a);
        string t = f.Op("Div", [f.Op("Sub", [Log2(ad), lmin]), stepSafe]);
        // Clip has no float64 CPU kernel in every build: clamp with Max/Min.
        string j = f.Op("Min", [f.Op("Max", [f.Op("Floor", [t]), ScalarDouble(f, 0)]), ScalarDouble(f, k - 2)]);
        string two = ScalarDouble(f, 2.0);
        string Level(string idx) => D(f.Cast(f.Op("Pow", [two, f.Add(lmin, f.Mul(idx, step))]), DataType.Float)); // float32 level
        string lo = Level(j), hi = Level(f.Add(j, ScalarDouble(f, 1)));
        string half = ScalarDouble(f, 0.5);
        string mag = f.Op("Where", [f.Op("GreaterOrEqual", [ad, f.Mul(f.Add(lo, hi), half)]), hi, lo]);
        string v1 = Level(ScalarDouble(f, 0));
        mag = f.Op("Where", [f.Op("Less", [ad, f.Mul(v1, half)]), ScalarDouble(f, 0), mag]);
        string magF = f.Cast(mag, DataType.Float);
        string constant = f.Op("Where", [nz, f.Op("Expand", [amax, f.Shape(a)]), f.ScalarFloat(0f)]);
        string r = f.Op("Where", [positive, magF, constant]);
        return f.Op("Where", [f.Op("Less", [xt, f.ScalarFloat(0f)]), f.Op("Neg", [r]), r]);
    }
}
