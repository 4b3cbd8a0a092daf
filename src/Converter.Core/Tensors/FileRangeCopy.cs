using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace Converter.Tensors;

/// <summary>
/// Copies a byte range of one file to the current position of a FileStream. On Linux this is copy_file_range: the
/// kernel moves page-cache pages (or shares extents on file systems that can), so bytes never pass through this
/// process and writes are not throttled as user-space copies are. Elsewhere, or where the kernel refuses (other file
/// system, old kernel), it falls back to reading into the caller's buffer and writing that.
/// </summary>
public static class FileRangeCopy
{
    private const int EPERM = 1, EXDEV = 18, EINVAL = 22, ENOSYS = 38, EOPNOTSUPP = 95;
    private static bool _kernelCopy = OperatingSystem.IsLinux();

    [DllImport("libc", SetLastError = true, EntryPoint = "copy_file_range")]
    private static extern nint CopyFileRange(int fdIn, ref long offIn, int fdOut, ref long offOut, nuint len, uint flags);

    /// <summary>Appends [<paramref name="srcOffset"/>, +<paramref name="length"/>) of <paramref name="src"/> to <paramref name="dst"/>.</summary>
    public static void Copy(SafeFileHandle src, string srcPath, long srcOffset, FileStream dst, long length, byte[] buffer)
    {
        if (length == 0) return;
        if (_kernelCopy && TryKernelCopy(src, srcPath, srcOffset, dst, length)) return;
        for (long done = 0; done < length;)
        {
            int want = (int)Math.Min(buffer.Length, length - done);
            int n = RandomAccess.Read(src, buffer.AsSpan(0, want), srcOffset + done);
            if (n <= 0) throw new InvalidDataException($"{srcPath}: ends at {srcOffset + done}, before the {length} bytes asked for (truncated while reading?)");
            dst.Write(buffer, 0, n);
            done += n;
        }
    }

    private static bool TryKernelCopy(SafeFileHandle src, string srcPath, long srcOffset, FileStream dst, long length)
    {
        dst.Flush();
        long inOff = srcOffset, outOff = dst.Position, left = length;
        int fdIn = (int)src.DangerousGetHandle(), fdOut = (int)dst.SafeFileHandle.DangerousGetHandle();
        while (left > 0)
        {
            nint n = CopyFileRange(fdIn, ref inOff, fdOut, ref outOff, (nuint)Math.Min(left, 1L << 30), 0);
            if (n > 0) { left -= n; continue; }
            if (n == 0) throw new InvalidDataException($"{srcPath}: ends at {inOff}, before the {length} bytes asked for (truncated while reading?)");
            int err = Marshal.GetLastPInvokeError();
            if (left == length && err is EPERM or EXDEV or EINVAL or ENOSYS or EOPNOTSUPP)
            {
                _kernelCopy = false; // this kernel or file system cannot: use the buffered path from now on
                return false;
            }
            throw new IOException($"{srcPath}: copy_file_range to {dst.Name} failed with errno {err}");
        }
        dst.Seek(outOff, SeekOrigin.Begin);
        return true;
    }
}
