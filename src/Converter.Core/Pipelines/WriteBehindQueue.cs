using System.Buffers;
using System.Collections.Concurrent;
using Converter.Formats.Safetensors;
using Converter.Tensors;

namespace Converter.Pipelines;

/// <summary>
/// One writer thread that performs every output operation of a run in the order it was posted (begin a tensor,
/// write a slab, copy a range kernel-side), while the posting thread goes on computing the next slabs and
/// tensors. Writes overlap compute across tensor boundaries, not only within a tensor: a checkpoint of many
/// one-slab expert tensors would otherwise alternate quantize, write, quantize, write. Memory stays bounded: at
/// most <c>maxBuffers</c> pooled slab buffers are out at once, and <see cref="Rent"/> waits for one to come back.
/// The first failure on the writer thread is rethrown to the poster at its next call.
/// </summary>
internal sealed class WriteBehindQueue : IDisposable
{
    private readonly BlockingCollection<Action> _work = new(boundedCapacity: 256);
    private readonly SemaphoreSlim _buffers;
    private readonly Thread _thread;
    private readonly PageSpliceWriter _splice = new();
    private Stream? _current;
    private volatile Exception? _error;

    public WriteBehindQueue(int maxBuffers = 3)
    {
        _buffers = new SemaphoreSlim(maxBuffers, maxBuffers);
        _thread = new Thread(Consume) { IsBackground = true, Name = "converter-write-behind" };
        _thread.Start();
    }

    /// <summary>Starts the writer's next tensor; later <see cref="Write"/> calls append to it.</summary>
    public void BeginTensor(SafetensorsWriter writer, string name) => Post(() => _current = writer.BeginTensor(name, out _));

    /// <summary>Runs <paramref name="write"/> on the writer thread with the current tensor's stream.</summary>
    public void Post(Action<Stream> write) => Post(() => write(_current!));

    /// <summary>A pooled buffer of at least <paramref name="bytes"/>; hand it back through <see cref="Write"/>.</summary>
    public byte[] Rent(int bytes)
    {
        _buffers.Wait();
        if (_error != null)
        {
            _buffers.Release();
            Rethrow();
        }
        return ArrayPool<byte>.Shared.Rent(bytes);
    }

    /// <summary>Appends the first <paramref name="count"/> bytes of a buffer from <see cref="Rent"/>, then returns it to the pool.</summary>
    public void Write(byte[] buffer, int count) => Post(() =>
    {
        try
        {
            if (_error != null) return;
            if (_current is FileStream file) _splice.Write(file, buffer.AsSpan(0, count));
            else _current!.Write(buffer, 0, count);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
            _buffers.Release();
        }
    });

    /// <summary>Waits until everything posted so far is written; rethrows a write failure.</summary>
    public void Drain()
    {
        using var done = new ManualResetEventSlim();
        Post(done.Set);
        done.Wait();
        if (_error != null) Rethrow();
    }

    private void Post(Action action)
    {
        if (_error != null) Rethrow();
        _work.Add(action);
    }

    private void Consume()
    {
        foreach (var action in _work.GetConsumingEnumerable())
        {
            try
            {
                action();
            }
            catch (Exception e)
            {
                _error ??= e;
            }
        }
    }

    private void Rethrow() => System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(_error!).Throw();

    public void Dispose()
    {
        _work.CompleteAdding();
        _thread.Join();
        _work.Dispose();
        _buffers.Dispose();
        _splice.Dispose();
    }
}
