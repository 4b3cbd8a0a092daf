using System.Buffers;

namespace Converter.Pipelines;

/// <summary>
/// Writes one slab on a background task while the caller computes the next into the other of two buffers, so
/// the page-cache copy of a write overlaps the quantization of the following slab. Buffers come from the shared
/// pool and go back on <see cref="Complete"/>, so tensor after tensor reuses the same few large arrays instead of
/// leaving them to the large-object heap.
/// </summary>
internal sealed class OverlappedWriter
{
    private readonly Stream _output;
    private byte[] _free = [], _inFlight = [];
    private Task _pending = Task.CompletedTask;

    public OverlappedWriter(Stream output) => _output = output;

    /// <summary>A buffer of at least <paramref name="bytes"/> that no write is using.</summary>
    public byte[] Buffer(int bytes)
    {
        if (_free.Length < bytes)
        {
            if (_free.Length > 0) ArrayPool<byte>.Shared.Return(_free);
            _free = ArrayPool<byte>.Shared.Rent(bytes);
        }
        return _free;
    }

    /// <summary>Queues the first <paramref name="count"/> bytes of the buffer from <see cref="Buffer"/>.</summary>
    public void Submit(int count)
    {
        _pending.GetAwaiter().GetResult();
        (_free, _inFlight) = (_inFlight, _free);
        var buffer = _inFlight;
        _pending = Task.Run(() => _output.Write(buffer, 0, count));
    }

    /// <summary>Waits for the last write; the stream is then free for other writes.</summary>
    public void Complete()
    {
        _pending.GetAwaiter().GetResult();
        foreach (var b in new[] { _free, _inFlight })
            if (b.Length > 0) ArrayPool<byte>.Shared.Return(b);
        _free = _inFlight = [];
    }
}
