namespace Converter.Formats.Gguf;

/// <summary>
/// One typed GGUF metadata value. The type is explicit because loaders compare it exactly (a key llama.cpp
/// expects as u32 fails to load when written as i32), so there are no implicit conversions.
/// </summary>
/// <remarks>
/// <see cref="Value"/> holds the CLR form: byte, sbyte, ushort, short, uint, int, float, bool, string, ulong,
/// long, double; an array holds a T[] of its element type (string[] for strings, GgufValue[] for nested arrays).
/// </remarks>
public sealed class GgufValue : IEquatable<GgufValue>
{
    public GgufValueType Type { get; }

    /// <summary>Element type of an array; equal to <see cref="Type"/> for scalars.</summary>
    public GgufValueType ElementType { get; }

    public object Value { get; }

    private GgufValue(GgufValueType type, GgufValueType elementType, object value)
    {
        Type = type;
        ElementType = elementType;
        Value = value;
    }

    public static GgufValue UInt8(byte v) => new(GgufValueType.UInt8, GgufValueType.UInt8, v);
    public static GgufValue Int8(sbyte v) => new(GgufValueType.Int8, GgufValueType.Int8, v);
    public static GgufValue UInt16(ushort v) => new(GgufValueType.UInt16, GgufValueType.UInt16, v);
    public static GgufValue Int16(short v) => new(GgufValueType.Int16, GgufValueType.Int16, v);
    public static GgufValue UInt32(uint v) => new(GgufValueType.UInt32, GgufValueType.UInt32, v);
    public static GgufValue Int32(int v) => new(GgufValueType.Int32, GgufValueType.Int32, v);
    public static GgufValue Float32(float v) => new(GgufValueType.Float32, GgufValueType.Float32, v);
    public static GgufValue Bool(bool v) => new(GgufValueType.Bool, GgufValueType.Bool, v);
    public static GgufValue String(string v) => new(GgufValueType.String, GgufValueType.String, v ?? throw new ArgumentNullException(nameof(v)));
    public static GgufValue UInt64(ulong v) => new(GgufValueType.UInt64, GgufValueType.UInt64, v);
    public static GgufValue Int64(long v) => new(GgufValueType.Int64, GgufValueType.Int64, v);
    public static GgufValue Float64(double v) => new(GgufValueType.Float64, GgufValueType.Float64, v);

    /// <summary>An array; the element type follows from T (byte, sbyte, ushort, short, uint, int, float, bool,
    /// string, ulong, long, double, or GgufValue for nested arrays, whose elements must all be arrays).</summary>
    public static GgufValue Array<T>(T[] values)
    {
        ArgumentNullException.ThrowIfNull(values);
        var element = ElementTypeOf(typeof(T));
        if (values is GgufValue[] nested)
            foreach (var v in nested)
                if (v is null || v.Type != GgufValueType.Array)
                    throw new ArgumentException("nested GGUF array elements must themselves be arrays", nameof(values));
        if (values is string[] strings && System.Array.IndexOf(strings, null) >= 0)
            throw new ArgumentException("GGUF string arrays cannot hold null", nameof(values));
        return new GgufValue(GgufValueType.Array, element, values);
    }

    internal static GgufValue FromRaw(GgufValueType type, GgufValueType elementType, object value) => new(type, elementType, value);

    internal static GgufValueType ElementTypeOf(Type t) =>
        t == typeof(byte) ? GgufValueType.UInt8 :
        t == typeof(sbyte) ? GgufValueType.Int8 :
        t == typeof(ushort) ? GgufValueType.UInt16 :
        t == typeof(short) ? GgufValueType.Int16 :
        t == typeof(uint) ? GgufValueType.UInt32 :
        t == typeof(int) ? GgufValueType.Int32 :
        t == typeof(float) ? GgufValueType.Float32 :
        t == typeof(bool) ? GgufValueType.Bool :
        t == typeof(string) ? GgufValueType.String :
        t == typeof(ulong) ? GgufValueType.UInt64 :
        t == typeof(long) ? GgufValueType.Int64 :
        t == typeof(double) ? GgufValueType.Float64 :
        t == typeof(GgufValue) ? GgufValueType.Array :
        throw new ArgumentException($"{t} is not a GGUF value type");

    public bool IsArray => Type == GgufValueType.Array;

    /// <summary>Number of elements of an array value.</summary>
    public int ArrayLength => Value is System.Array a ? a.Length : throw NotA(GgufValueType.Array);

    public byte AsUInt8() => Get<byte>(GgufValueType.UInt8);
    public sbyte AsInt8() => Get<sbyte>(GgufValueType.Int8);
    public ushort AsUInt16() => Get<ushort>(GgufValueType.UInt16);
    public short AsInt16() => Get<short>(GgufValueType.Int16);
    public uint AsUInt32() => Get<uint>(GgufValueType.UInt32);
    public int AsInt32() => Get<int>(GgufValueType.Int32);
    public float AsFloat32() => Get<float>(GgufValueType.Float32);
    public bool AsBool() => Get<bool>(GgufValueType.Bool);
    public string AsString() => Get<string>(GgufValueType.String);
    public ulong AsUInt64() => Get<ulong>(GgufValueType.UInt64);
    public long AsInt64() => Get<long>(GgufValueType.Int64);
    public double AsFloat64() => Get<double>(GgufValueType.Float64);

    /// <summary>The elements of an array whose element type is exactly T's GGUF type.</summary>
    public T[] AsArray<T>()
    {
        if (Type != GgufValueType.Array) throw NotA(GgufValueType.Array);
        if (Value is T[] a && ElementType == ElementTypeOf(typeof(T))) return a;
        throw new InvalidOperationException($"GGUF array holds {ElementType}, not {typeof(T).Name}");
    }

    private T Get<T>(GgufValueType expected) =>
        Type == expected ? (T)Value : throw NotA(expected);

    private InvalidOperationException NotA(GgufValueType expected) =>
        new($"GGUF value is {Describe()}, not {expected}");

    private string Describe() => IsArray ? $"Array of {ElementType}" : Type.ToString();

    public bool Equals(GgufValue? other)
    {
        if (other is null || other.Type != Type || other.ElementType != ElementType) return false;
        if (!IsArray) return Value.Equals(other.Value);
        var a = (System.Array)Value;
        var b = (System.Array)other.Value;
        if (a.Length != b.Length) return false;
        for (int i = 0; i < a.Length; i++)
            if (!Equals(a.GetValue(i), b.GetValue(i))) return false;
        return true;
    }

    public override bool Equals(object? obj) => Equals(obj as GgufValue);

    public override int GetHashCode() => HashCode.Combine(Type, ElementType, IsArray ? ArrayLength : Value.GetHashCode());

    public override string ToString() => IsArray ? $"{Describe()}[{ArrayLength}]" : $"{Type} {Value}";
}
