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

    internal TensorData(TensorInfo info, MemoryMappedFile file)
    {
        Info = info;
        if (info.ByteLength > int.MaxValue)
            throw new NotSupportedException($"{info.File}: tensor '{info.Name}' is {info.ByteLength} bytes; tensors over 2 GiB are not supported");
        if (info.ByteLength == 0) return;
        _view = file.CreateViewAccessor(info.FileOffset, info.ByteLength, MemoryMappedFileAccess.Read);
        byte* basePtr = null;
        _view.SafeMemoryMappedViewHandle.AcquirePointer(ref basePtr);
        _ptr = basePtr + _view.PointerOffset;
    }

    public ReadOnlySpan<byte> Bytes
    {
        get
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            return _ptr == null ? ReadOnlySpan<byte>.Empty : new ReadOnlySpan<byte>(_ptr, checked((int)Info.ByteLength));
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
