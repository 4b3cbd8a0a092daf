using Converter.Calibration;
using Converter.Models;

namespace Converter.Sharding;

/// <summary>
/// Builds an <see cref="ExpertPlacement"/> for every MoE layer of a model (MTP layers included: they have experts too).
/// <list type="bullet">
/// <item>contiguous: rank i holds experts [i*E/N, (i+1)*E/N) (DeepSeek's convert.py).</item>
/// <item>balanced: loads from calibration routing counts; R extra replicas go to the experts with the highest load per
/// copy, then copies are packed heaviest first onto the least loaded rank with a free slot. Ranks hold E/N experts
/// plus an even share of the R replicas (R mod N ranks carry one more), so R need not be a multiple of N.</item>
/// <item>group-aware (balanced with several nodes and expert groups): whole groups are packed onto nodes by group load
/// (n_group/nodes groups each), replicas go one at a time to the node with the highest load per expert copy and stay
/// there, then the node's copies are packed onto its ranks. A token
/// then reaches at most topk_group nodes, as group-limited routing intends.</item>
/// </list>
/// Layers without routing data (MTP layers are never routed on calibration text) are balanced on uniform loads.
/// </summary>
public static class PlacementPlanner
{
    public static PlacementModel Describe(ModelArchitecture arch) => new(arch.ModelType, CalibrationData.Fingerprint(arch),
        arch.NumRoutedExperts, arch.NumExpertsPerToken, arch.NumExpertGroups, arch.TopkExpertGroups, arch.HiddenSize);

    public static ExpertPlacement Plan(ModelArchitecture arch, PlacementOptions o, CalibrationData? calibration = null, string? calibrationPath = null)
    {
        var model = Describe(arch);
        int e = model.RoutedExperts, n = o.Ranks, m = o.EffectiveRanksPerNode, r = o.Redundant;
        var moeLayers = arch.MoeLayers();
        if (moeLayers.Count == 0) throw new NotSupportedException($"{arch.Config.Path}: the model has no MoE layer to shard");
        if (n <= 0) throw new ArgumentException($"--ranks must be positive, got {n}");
        if (m <= 0 || n % m != 0) throw new ArgumentException($"--ranks-per-node {m} does not divide --ranks {n}");
        if (r < 0) throw new ArgumentException($"--redundant must not be negative, got {r}");
        if (r > e) throw new ArgumentException($"--redundant {r} asks for more replicas than the {e} routed experts of a layer");
        if (e % n != 0)
            throw new ArgumentException($"{n} ranks do not divide the {e} routed experts (choose ranks among the divisors of {e})");
        if (o.Method == PlacementMethod.Contiguous && r > 0)
            throw new ArgumentException("--redundant needs --placement balanced (replicas go to the hottest experts of the calibration)");
        if (o.Method == PlacementMethod.Balanced && calibration == null)
            throw new ArgumentException("--placement balanced needs --calibration <dir> (routing counts from `converter calibrate`)");
        if (calibration != null)
        {
            calibration.CheckMatches(arch, calibrationPath ?? "calibration");
            if (calibration.ExpertsPerToken != arch.NumExpertsPerToken)
                throw new InvalidDataException($"{Path.Combine(calibrationPath ?? "calibration", CalibrationData.ManifestName)}: " +
                    $"{calibration.ExpertsPerToken} experts per token, the model routes {arch.NumExpertsPerToken}");
        }

        int nodes = n / m, groups = model.ExpertGroups;
        bool grouped = o.Method == PlacementMethod.Balanced && o.GroupAware && nodes > 1 && groups > 1;
        if (grouped)
        {
            if (groups % nodes != 0)
                throw new ArgumentException($"group-aware placement keeps each of the {groups} expert groups on one node, but {nodes} nodes " +
                    $"({n} ranks / {m} per node) do not divide {groups} groups");
        }

        var layers = new List<LayerPlacement>();
        foreach (var layer in moeLayers)
        {
            if (o.Method == PlacementMethod.Contiguous)
            {
                layers.Add(Contiguous(layer, e, n));
                continue;
            }
            bool measured = calibration!.TopK.ContainsKey(layer);
            var load = new double[e];
            if (measured) { var c = calibration.ExpertCounts(layer); for (int i = 0; i < e; i++) load[i] = c[i]; }
            else Array.Fill(load, 1.0);
            var held = grouped ? Grouped(load, n, m, r, groups) : Flat(load, n, r);
            layers.Add(Build(layer, measured ? "calibration" : "uniform", load, held));
        }
        var placement = new ExpertPlacement
        {
            Model = model,
            Ranks = n,
            RanksPerNode = m,
            Method = o.Method,
            GroupAware = grouped,
            Redundant = r,
            CalibrationFingerprint = o.Method == PlacementMethod.Balanced ? calibration!.ConfigFingerprint : null,
            CalibrationTokens = o.Method == PlacementMethod.Balanced ? calibration!.Tokens : 0,
            Layers = layers,
        };
        PlacementValidator.Validate(placement, "planned placement");
        return placement;
    }

    private static LayerPlacement Contiguous(int layer, int e, int n)
    {
        var held = new List<int>[n];
        for (int rank = 0; rank < n; rank++)
        {
            held[rank] = new List<int>();
            for (int x = rank * (e / n); x < (rank + 1) * (e / n); x++) held[rank].Add(x);
        }
        var ones = new double[e];
        Array.Fill(ones, 1.0);
        return Build(layer, "none", ones, held);
    }

    private static List<int>[] Flat(double[] load, int n, int r)
    {
        var experts = Enumerable.Range(0, load.Length).ToArray();
        var copies = ExpertPacking.Replicate(load, r, n);
        return ExpertPacking.Pack(experts, load, copies, n);
    }

    private static List<int>[] Grouped(double[] load, int n, int m, int r, int groups)
    {
        int e = load.Length, nodes = n / m, perGroup = e / groups;
        // Step 1: groups onto nodes, each group as one item carrying its total load.
        var groupIds = Enumerable.Range(0, groups).ToArray();
        var groupLoad = new double[groups];
        for (int x = 0; x < e; x++) groupLoad[x / perGroup] += load[x];
        var ones = new int[groups];
        Array.Fill(ones, 1);
        var nodeGroups = ExpertPacking.Pack(groupIds, groupLoad, ones, nodes);
        // Step 2: within each node, replicate its experts and pack them onto its ranks. Replicas go one at a time to the
        // node where, after repacking, the heaviest rank of the whole layer is lightest: a replica can also hurt (on a node of
        // two ranks it forces a 3/2 split of slots), so it goes where it helps most or harms least.
        var nodeExperts = new List<int>[nodes];
        for (int node = 0; node < nodes; node++)
        {
            nodeExperts[node] = new List<int>();
            foreach (var g in nodeGroups[node].Order())
                for (int x = g * perGroup; x < (g + 1) * perGroup; x++) nodeExperts[node].Add(x);
        }
        var nodeReplicas = new int[nodes];
        var packed = new (List<int>[] Held, double Max)[nodes];
        for (int node = 0; node < nodes; node++) packed[node] = PackNode(nodeExperts[node], load, 0, m);
        for (int i = 0; i < r; i++)
        {
            int best = -1;
            (List<int>[] Held, double Max) bestPack = default;
            double bestGlobal = double.MaxValue;
            for (int node = 0; node < nodes; node++)
            {
                if (nodeReplicas[node] + 1 > nodeExperts[node].Count * (m - 1)) continue; // every expert already on every rank of the node
                var trial = PackNode(nodeExperts[node], load, nodeReplicas[node] + 1, m);
                double global = trial.Max;
                for (int other = 0; other < nodes; other++) if (other != node) global = Math.Max(global, packed[other].Max);
                if (global < bestGlobal - 1e-9 || (Math.Abs(global - bestGlobal) <= 1e-9 && trial.Max < bestPack.Max))
                    (best, bestPack, bestGlobal) = (node, trial, global);
            }
            if (best < 0) throw new ArgumentException($"cannot place {r} replicas within nodes of {m} ranks: every expert already has a copy on every rank of its node");
            nodeReplicas[best]++;
            packed[best] = bestPack;
        }
        var held = new List<int>[n];
        for (int node = 0; node < nodes; node++)
            for (int i = 0; i < m; i++) held[node * m + i] = packed[node].Held[i];
        return held;
    }

    /// <summary>One node's experts with <paramref name="replicas"/> extra copies packed onto its <paramref name="m"/> ranks, and the heaviest rank's load.</summary>
    private static (List<int>[] Held, double Max) PackNode(List<int> experts, double[] load, int replicas, int m)
    {
        var nodeLoad = experts.Select(x => load[x]).ToArray();
        var copies = ExpertPacking.Replicate(nodeLoad, replicas, m);
        var held = ExpertPacking.Pack(experts, nodeLoad, copies, m);
        double max = 0;
        foreach (var h in held)
        {
            double sum = 0;
            foreach (var x in h) sum += load[x] / copies[experts.IndexOf(x)];
            max = Math.Max(max, sum);
        }
        return (held, max);
    }

    /// <summary>Slots follow ascending expert id on each rank; a replicated expert's tokens split evenly.</summary>
    private static LayerPlacement Build(int layer, string source, double[] load, List<int>[] held)
    {
        int e = load.Length;
        var replicas = new List<ExpertReplica>[e];
        for (int x = 0; x < e; x++) replicas[x] = new List<ExpertReplica>();
        var slots = new int[held.Length][];
        var copies = new int[e];
        foreach (var h in held) foreach (var x in h) copies[x]++;
        for (int rank = 0; rank < held.Length; rank++)
        {
            slots[rank] = held[rank].Order().ToArray();
            for (int s = 0; s < slots[rank].Length; s++)
            {
                int x = slots[rank][s];
                replicas[x].Add(new ExpertReplica(rank, s, 1.0 / copies[x]));
            }
        }
        return new LayerPlacement
        {
            Layer = layer,
            LoadSource = source,
            ExpertLoad = load,
            Replicas = replicas.Select(l => l.ToArray()).ToArray(),
            RankSlots = slots,
        };
    }
}
