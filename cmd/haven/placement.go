package main

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// The placement commands: the reserve, ranking nodes for a new group, and
// the balancer's proposal. The leader answers all three (any agent
// forwards them).

func newReserveCmd(g *globalOptions) *cobra.Command {
	var k uint32
	cmd := &cobra.Command{
		Use:   "reserve",
		Short: "Can the cluster sustain K node failures? Which failure breaks it, and what room is left",
		Long: `Show the cluster reserve: whether every running HA group can restart after any
K simultaneous node failures (K is the leader's placement.reserve unless --k is
given). For K of 1 and 2 every failure set is checked and has a concrete restart
plan, which the leader executes when that failure happens; "yes" never comes
from an estimate. When the answer is no, the breach names the failure and the
group that would find no room, and why.`,
		Example: `  haven reserve
  haven reserve --k 2 -o json`,
		Args: argsExactly(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.call(cmd.Context(), func(ctx context.Context, c havenv1.ClusterServiceClient) error {
				resp, err := c.GetReserve(ctx, &havenv1.GetReserveRequest{K: k})
				if err != nil {
					return err
				}
				return g.render(cmd.OutOrStdout(), resp, func(w io.Writer) error { return writeReserve(w, resp) })
			})
		},
	}
	cmd.Flags().Uint32Var(&k, "k", 0, "failures to check for (default: the leader's placement.reserve)")
	return cmd
}

// breachText says what breaks, in the words the agent's refusals use.
func breachText(b *havenv1.ReserveBreach) string {
	if b.GetSite() != "" && len(b.GetFailedNodes()) > 0 {
		return fmt.Sprintf("if site %s fails (%s), group %q cannot restart: %s", b.GetSite(), strings.Join(b.GetFailedNodes(), ","), b.GetGroup(), b.GetReason())
	}
	switch len(b.GetFailedNodes()) {
	case 0:
		return fmt.Sprintf("with no further failure, group %q cannot restart: %s", b.GetGroup(), b.GetReason())
	case 1:
		return fmt.Sprintf("if %s fails, group %q cannot restart: %s", b.GetFailedNodes()[0], b.GetGroup(), b.GetReason())
	}
	return fmt.Sprintf("if %s fail, group %q cannot restart: %s", strings.Join(b.GetFailedNodes(), ","), b.GetGroup(), b.GetReason())
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func writeReserve(w io.Writer, r *havenv1.GetReserveResponse) error {
	tw := newTable(w)
	kv := func(k, v string) { fmt.Fprintf(tw, "%s:\t%s\n", k, v) }
	if r.GetK() == 0 && r.GetReserveSites() > 0 {
		kv("Can sustain the loss of any one site", yesNo(r.GetCanSustain()))
	} else {
		kv(fmt.Sprintf("Can sustain %d failure(s)", r.GetK()), yesNo(r.GetCanSustain()))
	}
	method := enumWord(r.GetMethod().String(), "RESERVE_METHOD_")
	switch r.GetMethod() {
	case havenv1.ReserveMethod_RESERVE_METHOD_ENUMERATED:
		method += " (every failure set has a restart plan)"
	case havenv1.ReserveMethod_RESERVE_METHOD_BOUND:
		method += " (a conservative bound: too many failure sets to enumerate)"
	}
	kv("Method", method)
	kv("Failure sets", fmt.Sprintf("%d checked, %d pruned (displace no HA group), %d broken",
		r.GetFailureSetsChecked(), r.GetFailureSetsPruned(), r.GetFailureSetsBroken()))
	switch {
	case r.GetReserveSites() > 0:
		kv("Site loss", "checked too: each site that hosts groups is a failure set (placement.reserve_sites 1)")
	case r.GetConfiguredReserveSites() > 0:
		kv("Site loss", "not kept: placement.reserve_sites is 1, but fewer than two sites host groups")
	}
	kv("Worst failure", dash(strings.Join(r.GetWorstFailure(), ",")))
	if r.GetBreach() != nil {
		kv("Breach", breachText(r.GetBreach()))
	} else {
		kv("Breach", "-")
	}
	kv("Headroom", fmt.Sprintf("cpu %s, memory %s (least left after any failure of up to %d node(s) and its restarts)",
		formatCPU(r.GetHeadroom().GetCpuMillis()), formatSize(r.GetHeadroom().GetMemoryBytes()), r.GetK()))
	switch {
	case r.GetEnforced() && r.GetReserveSites() > 0:
		kv("Admission", fmt.Sprintf("enforced: groups that would break it are refused (placement.reserve %d, placement.reserve_sites 1)", r.GetConfiguredK()))
	case r.GetEnforced():
		kv("Admission", fmt.Sprintf("enforced: groups that would break it are refused (placement.reserve %d)", r.GetConfiguredK()))
	case r.GetConfiguredK() == 0:
		kv("Admission", "off (placement.reserve 0)")
	case uint32(r.GetK()) < r.GetConfiguredK():
		kv("Admission", fmt.Sprintf("placement.reserve is %d, but too few nodes host groups to keep more than %d", r.GetConfiguredK(), r.GetK()))
	default:
		kv("Admission", fmt.Sprintf("not this K: the leader enforces placement.reserve %d", r.GetConfiguredK()))
	}
	kv("CPU overcommit", fmt.Sprintf("%gx", r.GetCpuOvercommit()))
	kv("Leader", dash(r.GetLeader()))
	return tw.Flush()
}

func newPlaceCmd(g *globalOptions) *cobra.Command {
	var (
		cpu, mem, prio, site string
		possible, preferred  []string
		aac, selector        []string
	)
	cmd := &cobra.Command{
		Use:   "place --cpu CPUS --mem SIZE",
		Short: "Rank the nodes where a new group of this size could go, with stars and why",
		Long: `Rate every node for a new group, best first, as the leader would place it: a
0-100 score and 1-5 stars where it fits, with the reasons (anti-affinity,
preferences, load after placing it). A node where the group would break the
cluster reserve gets no stars, and the failure that would break it is named.`,
		Example: `  haven place --cpu 2 --mem 4G
  haven place --cpu 500m --mem 1G --anti-affinity sql:hard --preferred-site room-b
  haven place --cpu 8 --mem 64G --node-selector gpu=a100`,
		Args: argsExactly(0, "no arguments (give the size with --cpu and --mem)"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			req := &havenv1.RankNodesRequest{PossibleOwners: possible, PreferredOwners: preferred, PreferredSite: site}
			var err error
			if req.CpuMillis, err = parseCPU(cpu); err != nil {
				return usagef(cmd, "--cpu: %v", err)
			}
			if req.MemoryBytes, err = parseSize(mem); err != nil {
				return usagef(cmd, "--mem: %v", err)
			}
			if req.Priority, err = parsePriority(prio); err != nil {
				return usagef(cmd, "--priority: %v", err)
			}
			if req.AntiAffinity, err = parseAntiAffinity(aac); err != nil {
				return usagef(cmd, "--anti-affinity: %v", err)
			}
			if req.NodeSelector, err = parseLabels(selector); err != nil {
				return usagef(cmd, "--node-selector: %v", err)
			}
			return g.call(cmd.Context(), func(ctx context.Context, c havenv1.ClusterServiceClient) error {
				resp, err := c.RankNodes(ctx, req)
				if err != nil {
					return err
				}
				return g.render(cmd.OutOrStdout(), resp, func(w io.Writer) error { return writeRanked(w, resp) })
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&cpu, "cpu", "1", "CPUs the group needs: 2, 0.5 or 500m")
	f.StringVar(&mem, "mem", "512MiB", "memory the group needs (512M, 4G, 4GiB or bytes)")
	f.StringVar(&prio, "priority", "medium", "high, medium, low or no-auto-start (no-auto-start needs no reserve)")
	f.StringVar(&site, "preferred-site", "", "site the group should run in when it can")
	f.StringArrayVar(&possible, "possible-owner", nil, "node the group may run on; when given, no other (repeatable)")
	f.StringArrayVar(&preferred, "preferred-owner", nil, "node the group should run on, in order of preference (repeatable)")
	f.StringArrayVar(&aac, "anti-affinity", nil, "CLASS[:hard][:sites] the group would belong to (repeatable)")
	f.StringArrayVar(&selector, "node-selector", nil, "KEY=VALUE label a node must carry to take the group (repeatable)")
	return cmd
}

// stars draws a rating like VMM does: filled for the stars earned, empty
// for the rest; a node the group cannot use shows none at all.
func stars(n int32, feasible bool) string {
	if !feasible {
		return "-"
	}
	n = min(max(n, 0), 5)
	return strings.Repeat("★", int(n)) + strings.Repeat("☆", int(5-n))
}

func writeRanked(w io.Writer, r *havenv1.RankNodesResponse) error {
	tw := newTable(w)
	fmt.Fprintln(tw, "NODE\tSCORE\tSTARS\tRESERVE\tWHY")
	for _, n := range r.GetNodes() {
		score, res := "-", "-"
		if n.GetFeasible() {
			score = fmt.Sprint(n.GetScore())
			switch {
			case r.GetReserveK() == 0:
				res = "not kept"
			case n.GetKeepsReserve():
				res = "keeps"
			default:
				res = "breaks"
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", n.GetNode(), score, stars(n.GetStars(), n.GetFeasible()), res, dash(strings.Join(n.GetWhy(), "; ")))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if r.GetReserveK() > 0 {
		_, err := fmt.Fprintf(w, "\nRESERVE: whether the cluster still sustains %d node failure(s) with the group on that node.\n", r.GetReserveK())
		return err
	}
	return nil
}

func newBalanceCmd(g *globalOptions) *cobra.Command {
	var dryRun, power bool
	cmd := &cobra.Command{
		Use:   "balance",
		Short: "Show the balancer's proposal: which groups it would move where, and why",
		Long: `Ask the leader's balancer what it would move to even out CPU and memory load
(or, with --power, to empty nodes that could then be powered off while the
reserve holds), explaining every move: the load before and after, the
imbalance it removes, what the live migration would cost, and that the
reserve still holds. The balancer never breaks a constraint or the reserve
and holds off groups that moved recently.

Nothing moves yet, in any mode: moves need live migration, which haven does
not have yet.`,
		Example: `  haven balance --dry-run
  haven balance --dry-run --power -o json`,
		Args: argsExactly(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.call(cmd.Context(), func(ctx context.Context, c havenv1.ClusterServiceClient) error {
				resp, err := c.Balance(ctx, &havenv1.BalanceRequest{DryRun: dryRun, Power: power})
				if err != nil {
					return err
				}
				return g.render(cmd.OutOrStdout(), resp, func(w io.Writer) error { return writeBalance(w, resp) })
			})
		},
	}
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "only propose (also when the balancer is off)")
	cmd.Flags().BoolVar(&power, "power", false, "consolidate and list the nodes that could be powered off")
	return cmd
}

func writeBalance(w io.Writer, r *havenv1.BalanceResponse) error {
	tw := newTable(w)
	kv := func(k, v string) { fmt.Fprintf(tw, "%s:\t%s\n", k, v) }
	kv("Balancer", enumWord(r.GetMode().String(), "BALANCER_MODE_"))
	kv("Imbalance", fmt.Sprintf("%.4f -> %.4f (threshold %.4f)", r.GetImbalanceBefore(), r.GetImbalanceAfter(), r.GetThreshold()))
	if r.GetReserveK() > 0 {
		kv("Reserve", fmt.Sprintf("every move keeps the reserve of %d failure(s)", r.GetReserveK()))
	}
	kv("Moves", fmt.Sprint(len(r.GetMoves())))
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(r.GetMoves()) > 0 {
		fmt.Fprintln(w)
		tw = newTable(w)
		fmt.Fprintln(tw, "GROUP\tFROM\tTO\tGAIN\tMIGRATION\tCOST")
		for _, m := range r.GetMoves() {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%.4f\t%s in ~%.1fs\t%.4f\n", m.GetGroup(), m.GetFrom(), m.GetTo(), m.GetGain(), formatSize(m.GetCostBytes()), m.GetCostSeconds(), m.GetCost())
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		fmt.Fprintln(w, "\nWhy:")
		for _, m := range r.GetMoves() {
			fmt.Fprintf(w, "  %s\n", m.GetWhy())
		}
	}
	if len(r.GetPowerOff()) > 0 {
		fmt.Fprintf(w, "\nCould be powered off: %s\n", strings.Join(r.GetPowerOff(), ", "))
	}
	if r.GetStopped() != "" {
		fmt.Fprintf(w, "\nStopped: %s\n", r.GetStopped())
	}
	if len(r.GetNotes()) > 0 {
		fmt.Fprintln(w, "\nNotes:")
		for _, n := range r.GetNotes() {
			fmt.Fprintf(w, "  %s\n", n)
		}
	}
	if !r.GetExecuted() && len(r.GetMoves()) > 0 {
		fmt.Fprintln(w, "\nNothing was moved: the balancer only recommends (placement.balancer: automatic moves groups live), or this was a dry run.")
	}
	return nil
}
