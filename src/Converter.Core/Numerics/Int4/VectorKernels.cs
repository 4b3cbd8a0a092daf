using System.Numerics;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace Converter.Numerics.Int4;

/// <summary>Level-1 kernels shared by GPTQ's float32 column sweep and the float64 Hessian factorisation.</summary>
internal static class VectorKernels
{
    /// <summary>y += alpha * x (one loop for float and double; the JIT specialises it per type).</summary>
    public static void Axpy<T>(T alpha, ReadOnlySpan<T> x, Span<T> y) where T : unmanaged, INumber<T>
    {
        int i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            ref T px = ref MemoryMarshal.GetReference(x);
            ref T py = ref MemoryMarshal.GetReference(y);
            var va = Vector256.Create(alpha);
            for (; i <= x.Length - Vector256<T>.Count; i += Vector256<T>.Count)
                (Vector256.LoadUnsafe(ref py, (nuint)i) + va * Vector256.LoadUnsafe(ref px, (nuint)i)).StoreUnsafe(ref py, (nuint)i);
        }
        for (; i < x.Length; i++) y[i] += alpha * x[i];
    }
}
