namespace Converter.Pipelines;

/// <summary>
/// Writes one slab on a background task while the caller computes the next into the other of two buffers, so
/// the page-cache copy of a write overlaps the quantization of the following slab.
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
        if (_free.Length < bytes) _free = new byte[bytes];
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
    public void Complete() => _pending.GetAwaiter().GetResult();
}
