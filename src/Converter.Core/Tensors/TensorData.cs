using System.IO.MemoryMappedFiles;

namespace Converter.Tensors;

/// <summary>
/// A tensor's bytes mapped from its file for as long as this handle lives. Mapping per tensor (not per
/// file) keeps the resident set bounded by the tensors in flight, not by what was read before.
/// </summary>
public sealed unsafe class TensorData : IDisposable
{
    private readonly MemoryMappedViewAccessor? _view;
    private readonly byte* _ptr;
    private bool _disposed;

    public TensorInfo Info { get; }

    /// <summary>Byte offset of this view within the tensor (non-zero for a slab of rows).</summary>
    public long Offset { get; }
    public int Length { get; }

    internal TensorData(TensorInfo info, MemoryMappedFile? file, long offset, long length)
    {
        Info = info;
        if (offset < 0 || length < 0 || offset + length > info.ByteLength)
            throw new ArgumentOutOfRangeException(nameof(offset), $"range [{offset}, {offset + length}) outside tensor '{info.Name}' ({info.ByteLength} bytes)");
        if (length > int.MaxValue)
            throw new NotSupportedException($"{info.File}: tensor '{info.Name}': a {length}-byte view exceeds 2 GiB; read it in slabs");
        Offset = offset;
        Length = (int)length;
        if (length == 0) return;
        _view = file!.CreateViewAccessor(info.FileOffset + offset, length, MemoryMappedFileAccess.Read);
        byte* basePtr = null;
        _view.SafeMemoryMappedViewHandle.AcquirePointer(ref basePtr);
        _ptr = basePtr + _view.PointerOffset;
    }

    public ReadOnlySpan<byte> Bytes
    {
        get
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            return _ptr == null ? ReadOnlySpan<byte>.Empty : new ReadOnlySpan<byte>(_ptr, Length);
        }
    }

    public ReadOnlySpan<T> As<T>() where T : unmanaged => System.Runtime.InteropServices.MemoryMarshal.Cast<byte, T>(Bytes);

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        if (_view != null)
        {
            _view.SafeMemoryMappedViewHandle.ReleasePointer();
            _view.Dispose();
        }
    }
}
