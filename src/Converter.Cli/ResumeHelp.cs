namespace Converter.Cli;

/// <summary>What --resume says in every command that has it.</summary>
internal static class ResumeHelp
{
    public const string Text =
        "Continue an interrupted run (crash, kill, Ctrl-C with a second signal) to the same output from its last finished file or tensor, " +
        "byte-identical to an uninterrupted run; refused when the inputs or options changed. Without it, what an interrupted run left is removed";
}
