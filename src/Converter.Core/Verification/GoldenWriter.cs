using System.Runtime.InteropServices;
using Converter.Formats.Safetensors;
using Converter.Tensors;
using Microsoft.Win32.SafeHandles;

namespace Converter.Verification;

/// <summary>How <see cref="GoldenWriter"/> stores logits.</summary>
/// <param name="FullLogits">Keep every logit (float32 [batch, seq, vocab]); otherwise the compact form (<see cref="CompactLogits"/>).</param>
/// <param name="TopK">Compact: the most probable entries kept exactly per position.</param>
/// <param name="TailSamples">Compact: entries drawn from the rest per position.</param>
public sealed record GoldenLogitsForm(bool FullLogits, int TopK = 256, int TailSamples = 768)
{
    /// <summary>Vocabularies up to this size keep full logits by default (256 x 4 bytes a position is already small).</summary>
    public const int FullByDefaultUpTo = 4096;

    public static GoldenLogitsForm Default(int vocab) => new(vocab <= FullByDefaultUpTo);

    public override string ToString() => FullLogits ? "full logits" : $"compact (top-{TopK} + {TailSamples} tail samples per position)";
}

/// <summary>
/// Writes a golden file in the format <see cref="GoldenSet.Load"/> reads, as a single safetensors file with the golden's
/// identity in its metadata. Logits arrive batch by batch (<see cref="AddLogits"/>) and are written in place (full) or
/// compacted position by position, so memory holds one batch of logits, not the whole set. The file is written beside
/// the destination under a temporary name and renamed into place by <see cref="Commit"/>; disposing without committing
/// deletes it.
/// </summary>
/// <summary>A model whose residual is <paramref name="Streams"/> streams: its golden keeps them for the first
/// <paramref name="Positions"/> positions of sequence 0 (as hc_states_seq0), and the final norm's output at every position.</summary>
public sealed record GoldenResidualStreams(int Streams, int Positions);

public sealed class GoldenWriter : IDisposable
{
    private readonly string _path, _temp;
    private readonly int _batch, _seq, _vocab;
    private readonly GoldenLogitsForm _form;
    private readonly SafeFileHandle _file;
    private readonly Dictionary<string, (long Begin, long End)> _at = new(StringComparer.Ordinal);
    private readonly long _dataStart;
    private readonly float[] _nll;
    private readonly bool[] _done;
    private readonly int _k, _m;
    private readonly int[]? _topIdx, _tailIdx;
    private readonly float[]? _topLp, _tailLp, _tailMass, _lse;
    private bool _committed;

    public GoldenWriter(string path, int[] tokens, int batch, int seq, int vocab, GoldenLogitsForm form, GoldenIdentity identity,
        int hiddenStates, int hiddenSize, int moeLayers, int topK, bool overwrite, GoldenResidualStreams? streams = null)
    {
        if (tokens.Length != (long)batch * seq) throw new ArgumentException($"{tokens.Length} tokens for [{batch}, {seq}]");
        if (seq < 2) throw new ArgumentException($"sequences of {seq} token(s): a golden needs at least 2 tokens per sequence");
        _path = System.IO.Path.GetFullPath(path);
        if (File.Exists(_path) && !overwrite) throw new IOException($"{_path} exists (use --overwrite)");
        if (Directory.Exists(_path)) throw new IOException($"{_path} is a folder");
        (_batch, _seq, _vocab, _form) = (batch, seq, vocab, form);
        int n = batch * seq;
        _nll = new float[batch * (seq - 1)];
        _done = new bool[batch];
        var entries = new List<(string, DType, long[])> { (GoldenSet.TokensName, DType.I32, [batch, seq]) };
        if (form.FullLogits)
        {
            entries.Add((GoldenSet.LogitsName, DType.F32, [batch, seq, vocab]));
        }
        else
        {
            _k = Math.Min(form.TopK, vocab);
            _m = _k >= vocab ? 0 : form.TailSamples;
            if (_k < 1 || _m < 0) throw new ArgumentException($"compact golden: top-k {form.TopK} and {form.TailSamples} tail samples");
            _topIdx = new int[n * _k];
            _topLp = new float[n * _k];
            _tailIdx = new int[n * _m];
            _tailLp = new float[n * _m];
            _tailMass = new float[n];
            _lse = new float[n];
            entries.Add((GoldenSet.TopIdxName, DType.I32, [batch, seq, _k]));
            entries.Add((GoldenSet.TopLogProbsName, DType.F32, [batch, seq, _k]));
            if (_m > 0)
            {
                entries.Add((GoldenSet.TailIdxName, DType.I32, [batch, seq, _m]));
                entries.Add((GoldenSet.TailLogProbsName, DType.F32, [batch, seq, _m]));
            }
            entries.Add((GoldenSet.TailLogMassName, DType.F32, [batch, seq]));
            entries.Add((GoldenSet.LogSumExpName, DType.F32, [batch, seq]));
        }
        entries.Add((GoldenSet.NllName, DType.F32, [batch, seq - 1]));
        if (streams is { } st)
        {
            // several residual streams (hyper-connections): the states as the transformers goldens keep them
            entries.Add((GoldenSet.ResidualStatesName, DType.F32, [hiddenStates, st.Positions, st.Streams, hiddenSize]));
            entries.Add((GoldenSet.FinalHiddenName, DType.F32, [seq, hiddenSize]));
        }
        else if (hiddenStates > 0) entries.Add((GoldenSet.HiddenStatesName, DType.F32, [hiddenStates, seq, hiddenSize]));
        if (moeLayers > 0)
        {
            entries.Add((GoldenSet.RouteTopKName, DType.I32, [moeLayers, batch, seq, topK]));
            entries.Add((GoldenSet.RouteMarginName, DType.F32, [moeLayers, batch, seq]));
        }
        var header = new List<(string, DType, long[], long, long)>();
        long offset = 0;
        foreach (var (name, dtype, shape) in entries)
        {
            long bytes = DTypeInfo.SizeOf(dtype);
            foreach (var d in shape) bytes = checked(bytes * d);
            header.Add((name, dtype, shape, offset, offset + bytes));
            _at[name] = (offset, offset + bytes);
            offset += bytes;
        }
        var meta = identity.ToMetadata();
        meta[GoldenIdentity.VocabKey] = vocab.ToString(System.Globalization.CultureInfo.InvariantCulture); // a compact golden needs it
        meta["converter.logits"] = form.FullLogits ? "full" : $"compact top_k={_k} tail_samples={_m}";
        var headerBytes = SafetensorsHeader.Build(header, meta);
        var dir = System.IO.Path.GetDirectoryName(_path)!;
        Directory.CreateDirectory(dir);
        _temp = System.IO.Path.Combine(dir, Staging.StagingNames.For(_path));
        _file = File.OpenHandle(_temp, FileMode.Create, FileAccess.ReadWrite, FileShare.None, FileOptions.None, 8 + headerBytes.Length + offset);
        var len = new byte[8];
        System.Buffers.Binary.BinaryPrimitives.WriteInt64LittleEndian(len, headerBytes.Length);
        RandomAccess.Write(_file, len, 0);
        RandomAccess.Write(_file, headerBytes, 8);
        _dataStart = 8 + headerBytes.Length;
        Write(GoldenSet.TokensName, 0, MemoryMarshal.AsBytes(tokens.AsSpan()));
        Tokens = tokens;
    }

    public int[] Tokens { get; }

    /// <summary>Bytes of the logits part of the file (full or compact), for reports.</summary>
    public long LogitBytes => _form.FullLogits ? (long)_batch * _seq * _vocab * 4 : (long)_batch * _seq * ((_k + _m) * 8 + 8);

    private void Write(string tensor, long offsetInTensor, ReadOnlySpan<byte> bytes)
    {
        var (begin, end) = _at[tensor];
        if (begin + offsetInTensor + bytes.Length > end) throw new InvalidOperationException($"write past the end of '{tensor}'");
        RandomAccess.Write(_file, bytes, _dataStart + begin + offsetInTensor);
    }

    /// <summary>Logits of sequences [first, first + count) as float32 [count, seq, vocab]; each sequence once.</summary>
    public void AddLogits(int first, int count, ReadOnlySpan<float> logits)
    {
        if (logits.Length != (long)count * _seq * _vocab) throw new ArgumentException($"{logits.Length} logits for {count} sequences of {_seq} x {_vocab}");
        for (int b = first; b < first + count; b++)
        {
            if (_done[b]) throw new InvalidOperationException($"sequence {b} given twice");
            _done[b] = true;
        }
        foreach (var x in logits)
            if (!float.IsFinite(x)) throw new InvalidDataException($"the reference computed non-finite logits (sequences {first}..{first + count - 1})");
        var rows = logits.ToArray(); // Parallel.For cannot capture a span
        Parallel.For(0, count * _seq, r =>
        {
            int b = first + r / _seq, s = r % _seq, p = b * _seq + s;
            var row = rows.AsSpan(r * _vocab, _vocab);
            if (s < _seq - 1)
            {
                double max = double.NegativeInfinity, sum = 0;
                foreach (var x in row) max = Math.Max(max, x);
                foreach (var x in row) sum += Math.Exp(x - max);
                _nll[b * (_seq - 1) + s] = (float)(max + Math.Log(sum) - row[Tokens[p + 1]]);
            }
            if (_form.FullLogits) return;
            var (top, topLp, tail, tailLp, mass, lse) = CompactLogits.CompactRow(row, _k, _m, (ulong)p);
            top.CopyTo(_topIdx!.AsSpan(p * _k));
            topLp.CopyTo(_topLp!.AsSpan(p * _k));
            tail.CopyTo(_tailIdx!.AsSpan(p * _m));
            tailLp.CopyTo(_tailLp!.AsSpan(p * _m));
            _tailMass![p] = mass;
            _lse![p] = lse;
        });
        if (_form.FullLogits)
            Write(GoldenSet.LogitsName, (long)first * _seq * _vocab * 4, MemoryMarshal.AsBytes(logits));
    }

    /// <summary>Sequence 0's hidden states [count, seq, hidden].</summary>
    public void SetHiddenStates(float[] hidden) => Write(GoldenSet.HiddenStatesName, 0, MemoryMarshal.AsBytes(hidden.AsSpan()));

    /// <summary>Sequence 0's residual streams [count, positions, streams, hidden] and its hidden state after the final
    /// norm [seq, hidden] (a golden made with <see cref="GoldenResidualStreams"/>).</summary>
    public void SetResidualStates(float[] states, float[] finalHidden)
    {
        Write(GoldenSet.ResidualStatesName, 0, MemoryMarshal.AsBytes(states.AsSpan()));
        Write(GoldenSet.FinalHiddenName, 0, MemoryMarshal.AsBytes(finalHidden.AsSpan()));
    }

    /// <summary>Routing [moe layers, batch, seq, k] and margins [moe layers, batch, seq].</summary>
    public void SetRouting(int[] topk, float[] margin)
    {
        Write(GoldenSet.RouteTopKName, 0, MemoryMarshal.AsBytes(topk.AsSpan()));
        Write(GoldenSet.RouteMarginName, 0, MemoryMarshal.AsBytes(margin.AsSpan()));
    }

    public void Commit()
    {
        for (int b = 0; b < _batch; b++)
            if (!_done[b]) throw new InvalidOperationException($"sequence {b} has no logits");
        Write(GoldenSet.NllName, 0, MemoryMarshal.AsBytes(_nll.AsSpan()));
        if (!_form.FullLogits)
        {
            Write(GoldenSet.TopIdxName, 0, MemoryMarshal.AsBytes(_topIdx.AsSpan()));
            Write(GoldenSet.TopLogProbsName, 0, MemoryMarshal.AsBytes(_topLp.AsSpan()));
            if (_m > 0)
            {
                Write(GoldenSet.TailIdxName, 0, MemoryMarshal.AsBytes(_tailIdx.AsSpan()));
                Write(GoldenSet.TailLogProbsName, 0, MemoryMarshal.AsBytes(_tailLp.AsSpan()));
            }
            Write(GoldenSet.TailLogMassName, 0, MemoryMarshal.AsBytes(_tailMass.AsSpan()));
            Write(GoldenSet.LogSumExpName, 0, MemoryMarshal.AsBytes(_lse.AsSpan()));
        }
        _file.Dispose();
        File.Move(_temp, _path, overwrite: true);
        _committed = true;
    }

    public void Dispose()
    {
        _file.Dispose();
        if (!_committed && File.Exists(_temp)) File.Delete(_temp);
    }
}
