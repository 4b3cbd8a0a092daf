namespace Converter.Pipelines;

/// <summary>A progress event of a long pipeline: items done of total, bytes written so far, the current item.</summary>
public readonly record struct PipelineProgress(int Done, int Total, long Bytes, string Current);
