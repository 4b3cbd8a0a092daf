using System.Runtime.InteropServices;

namespace Converter.Tensors;

/// <summary>
/// Writes a user buffer to a file through a pipe: vmsplice lends the buffer's pages to the pipe (no copy), splice
/// then copies them into the page cache inside the kernel. On the VM this was measured on, write() of freshly
/// computed buffers cost 2-5x the kernel time of this path (copy_from_user page by page against a kernel memcpy:
/// see BENCHMARKS.md, "quantize"). Every call finishes with the pipe drained, so the buffer is free again when it
/// returns. Where the kernel refuses (not Linux, vmsplice unavailable) it falls back to <see cref="Stream.Write(ReadOnlySpan{byte})"/>.
/// One instance owns one pipe: use it from one thread.
/// </summary>
public sealed unsafe class PageSpliceWriter : IDisposable
{
    private const int F_SETPIPE_SZ = 1031, EPERM = 1, EBADF = 9, EINVAL = 22, ENOSYS = 38;
    private static bool _supported = OperatingSystem.IsLinux();
    private readonly int _read = -1, _write = -1;
    private readonly int _pipeBytes = 64 * 1024;
    /// <summary>Writes shorter than this go through the stream's buffer.</summary>
    public const int MinSpliceBytes = 1 << 16;
    private bool _broken; // a failure mid-buffer may leave bytes in the pipe: never reuse it then

    [StructLayout(LayoutKind.Sequential)]
    private struct IoVec { public void* Base; public nuint Length; }

    [DllImport("libc", SetLastError = true)] private static extern int pipe(int* fds);
    [DllImport("libc", SetLastError = true)] private static extern int close(int fd);
    [DllImport("libc", SetLastError = true)] private static extern int fcntl(int fd, int cmd, int arg);
    [DllImport("libc", SetLastError = true)] private static extern nint vmsplice(int fd, IoVec* iov, nuint count, uint flags);
    [DllImport("libc", SetLastError = true)] private static extern nint splice(int fdIn, long* offIn, int fdOut, long* offOut, nuint len, uint flags);

    public PageSpliceWriter()
    {
        if (!_supported) return;
        int* fds = stackalloc int[2];
        if (pipe(fds) != 0) { _supported = false; return; }
        (_read, _write) = (fds[0], fds[1]);
        int size = fcntl(_write, F_SETPIPE_SZ, 1 << 20); // larger pipe, fewer round trips; the default 64 KiB also works
        if (size > 0) _pipeBytes = size;
    }

    /// <summary>True while writes go through the pipe (false after a fallback to plain writes).</summary>
    public bool UsesSplice => _read >= 0 && _supported;

    /// <summary>Appends <paramref name="data"/> at the stream's position and advances it.</summary>
    public void Write(FileStream dst, ReadOnlySpan<byte> data)
    {
        if (data.IsEmpty) return;
        if (data.Length < MinSpliceBytes) { dst.Write(data); return; } // small pieces: FileStream's buffer beats a flush + two syscalls
        if (_broken) throw new InvalidOperationException("an earlier splice failed; this writer is unusable");
        if (_read < 0 || !_supported) { dst.Write(data); return; }
        _broken = true;
        bool spliced = TrySplice(dst, data);
        _broken = false;
        if (!spliced) dst.Write(data);
    }

    private bool TrySplice(FileStream dst, ReadOnlySpan<byte> data)
    {
        dst.Flush();
        long offset = dst.Position;
        int fd = (int)dst.SafeFileHandle.DangerousGetHandle();
        fixed (byte* p = data) // pinned until the pipe is drained: the pipe holds the buffer's pages, not a copy
        {
            int done = 0;
            while (done < data.Length)
            {
                var iov = new IoVec { Base = p + done, Length = (nuint)Math.Min(_pipeBytes, data.Length - done) };
                nint lent = vmsplice(_write, &iov, 1, 0);
                if (lent <= 0)
                {
                    int err = Marshal.GetLastPInvokeError();
                    if (done == 0 && err is EPERM or EBADF or EINVAL or ENOSYS)
                    {
                        _supported = false; // this kernel cannot: plain writes from now on
                        return false;
                    }
                    throw new IOException($"{dst.Name}: vmsplice failed with errno {err} at offset {offset}");
                }
                for (nint left = lent; left > 0;)
                {
                    nint moved = splice(_read, null, fd, &offset, (nuint)left, 0);
                    if (moved <= 0)
                        throw new IOException($"{dst.Name}: splice failed with errno {Marshal.GetLastPInvokeError()} at offset {offset}");
                    left -= moved;
                }
                done += (int)lent;
            }
        }
        dst.Seek(offset, SeekOrigin.Begin);
        return true;
    }

    public void Dispose()
    {
        if (_read >= 0) close(_read);
        if (_write >= 0) close(_write);
    }
}
