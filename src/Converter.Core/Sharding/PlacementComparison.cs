using Converter.Calibration;
using Converter.Models;

namespace Converter.Sharding;

/// <summary>Builds the load report of a written placement next to the alternatives the same inputs allow.</summary>
public static class PlacementComparison
{
    /// <summary>
    /// Contiguous, balanced (flat), balanced group-aware (several nodes and groups) and the written one with its
    /// replicas, each replayed on <paramref name="heldOut"/>. Alternatives the inputs cannot build are left out.
    /// </summary>
    public static LoadReport Build(ModelArchitecture arch, ExpertPlacement written, CalibrationData? calibration, RoutingTrace heldOut)
    {
        var variants = new List<PlacementOptions> { new(written.Ranks, written.RanksPerNode, PlacementMethod.Contiguous) };
        if (calibration != null)
        {
            variants.Add(new(written.Ranks, written.RanksPerNode, PlacementMethod.Balanced, 0, GroupAware: false));
            variants.Add(new(written.Ranks, written.RanksPerNode, PlacementMethod.Balanced, 0, GroupAware: true));
            if (written.Redundant > 0)
            {
                variants.Add(new(written.Ranks, written.RanksPerNode, PlacementMethod.Balanced, written.Redundant, GroupAware: false));
                variants.Add(new(written.Ranks, written.RanksPerNode, PlacementMethod.Balanced, written.Redundant, GroupAware: true));
            }
        }
        var loads = new List<PlacementLoad>();
        int writtenIndex = -1;
        foreach (var v in variants)
        {
            ExpertPlacement p;
            try { p = PlacementPlanner.Plan(arch, v, calibration); }
            catch (ArgumentException) { continue; }
            if (loads.Any(l => l.Placement.Label == p.Label)) continue; // group-aware collapses to flat on one node
            bool isWritten = p.Label == written.Label;
            if (isWritten) writtenIndex = loads.Count;
            loads.Add(LoadEvaluator.Evaluate(isWritten ? written : p, heldOut));
        }
        if (writtenIndex < 0)
        {
            writtenIndex = loads.Count;
            loads.Add(LoadEvaluator.Evaluate(written, heldOut));
        }
        return new LoadReport { Trace = heldOut, Placements = loads, Written = writtenIndex };
    }
}
