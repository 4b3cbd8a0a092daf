using Converter.Tensors;
using FluentAssertions;
using Xunit;

namespace Converter.Tests.Tensors;

public class PageSpliceWriterTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("splice-").FullName;

    public void Dispose() => Directory.Delete(_dir, true);

    [Fact]
    public void WritesBuffersLargerThanThePipeAtTheStreamPositionInterleavedWithPlainWrites()
    {
        var rng = new Random(7);
        var head = new byte[13];
        var big = new byte[(3 << 20) + 4097]; // several pipe fills, odd length, unaligned end
        var mid = new byte[100];
        var tail = new byte[70_001];
        foreach (var b in new[] { head, big, mid, tail }) rng.NextBytes(b);
        var path = Path.Combine(_dir, "out.bin");

        using (var splice = new PageSpliceWriter())
        using (var fs = new FileStream(path, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 20))
        {
            fs.Write(head); // still in FileStream's buffer: the splice must flush it first
            splice.Write(fs, big);
            fs.Position.Should().Be(head.Length + big.Length);
            fs.Write(mid);
            splice.Write(fs, tail.AsSpan(1)); // an unaligned start inside the array
            if (OperatingSystem.IsLinux()) splice.UsesSplice.Should().BeTrue("Linux has vmsplice/splice: the fast path must be the one tested");
        }

        var expected = head.Concat(big).Concat(mid).Concat(tail.Skip(1)).ToArray();
        File.ReadAllBytes(path).Should().Equal(expected);
    }

    [Fact]
    public void ReusingTheSameBufferAfterReturnDoesNotChangeWhatWasWritten()
    {
        // The pipe lends the buffer's pages: Write must only return once they were copied into the file.
        var buffer = new byte[2 << 20];
        var path = Path.Combine(_dir, "reuse.bin");
        using (var splice = new PageSpliceWriter())
        using (var fs = new FileStream(path, FileMode.CreateNew, FileAccess.Write))
        {
            for (int round = 0; round < 4; round++)
            {
                buffer.AsSpan().Fill((byte)(round + 1));
                splice.Write(fs, buffer);
            }
        }
        var bytes = File.ReadAllBytes(path);
        for (int round = 0; round < 4; round++)
            bytes.AsSpan(round * buffer.Length, buffer.Length).IndexOfAnyExcept((byte)(round + 1)).Should().Be(-1, $"round {round}");
    }
}
