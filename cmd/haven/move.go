package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"

	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

func newMoveCmd(g *globalOptions) *cobra.Command {
	var (
		to, requestID, bandwidth string
		live, quick, noWait      bool
		postcopy                 bool
		channels                 uint32
		downtime                 time.Duration
	)
	cmd := &cobra.Command{
		Use:   "move GROUP",
		Short: "Move a running group to another node without a restart",
		Long: `Move a running group to another node without a restart.

A live move copies the guest's memory while it runs, round after round, then
pauses it for the last pages (the downtime) and resumes it on the target. A
quick move pauses it, saves its state to shared storage and restores it on the
target. Without --live or --quick the move is live where both nodes' drivers
can, else quick. Without --to placement picks the node, keeping the reserve.

--channels N carries a live move's copy over N streams (QEMU's multifd).
--postcopy lets a live move whose pre-copy cannot converge (the guest dirties
memory faster than the link carries it, even slowed) end in post-copy: the
source pauses, the move commits, and the guest runs on the target while the
pages it lacks still come from the source. Its pause is short whatever the
guest does, but from the commit until the last page arrived the guest lives on
both nodes at once: a failure of either loses it (it restarts from its disks).

The command follows the move with a progress bar until it ends; --no-wait
returns its operation id at once ('haven ops ID' follows it later). A move
that has not committed can be cancelled: 'haven ops cancel ID'.`,
		Args: argsExactly(1, "GROUP"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if live && quick {
				return usagef(cmd, "--live and --quick exclude each other")
			}
			req := &havenv1.MoveGroupRequest{Name: args[0], Target: to, RequestId: requestID, Kind: havenv1.MoveKind_MOVE_KIND_AUTO}
			switch {
			case live:
				req.Kind = havenv1.MoveKind_MOVE_KIND_LIVE
			case quick:
				req.Kind = havenv1.MoveKind_MOVE_KIND_QUICK
			}
			if downtime != 0 {
				req.DowntimeTarget = durationpb.New(downtime)
			}
			if bandwidth != "" {
				b, err := parseSize(bandwidth)
				if err != nil {
					return usagef(cmd, "--bandwidth: %v", err)
				}
				req.BandwidthLimit = b
			}
			req.Channels, req.Postcopy = channels, postcopy
			var op *havenv1.Operation
			err := g.call(cmd.Context(), func(ctx context.Context, c havenv1.ClusterServiceClient) error {
				resp, err := c.MoveGroup(ctx, req)
				op = resp.GetOperation()
				return err
			})
			if err != nil {
				return err
			}
			if noWait {
				return g.render(cmd.OutOrStdout(), op, func(w io.Writer) error { return writeOperation(w, op) })
			}
			done, err := g.follow(cmd.Context(), op, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			if err := g.render(cmd.OutOrStdout(), done, func(w io.Writer) error { return writeOperation(w, done) }); err != nil {
				return err
			}
			if done.GetOutcome() != havenv1.OperationOutcome_OPERATION_OUTCOME_COMPLETED {
				return errors.New("the move did not complete: " + done.GetReason())
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&to, "to", "", "the target node (default: placement picks one)")
	f.BoolVar(&live, "live", false, "live migration (pre-copy, a short pause)")
	f.BoolVar(&quick, "quick", false, "quick migration (save and restore through shared storage)")
	f.DurationVar(&downtime, "downtime", 0, "the longest pause the guest should see (default 300ms)")
	f.StringVar(&bandwidth, "bandwidth", "", "cap the copy at this many bytes per second, e.g. 500M (default: no cap)")
	f.Uint32Var(&channels, "channels", 0, "parallel streams for a live move's copy (QEMU's multifd; default one)")
	f.BoolVar(&postcopy, "postcopy", false, "if the pre-copy cannot converge, end in post-copy: the guest runs on the target while its\nlast pages arrive; a failure of either node before they all did loses the guest")
	f.BoolVar(&noWait, "no-wait", false, "return the operation at once instead of following it")
	f.StringVar(&requestID, "request-id", "", requestIDUsage)
	return cmd
}

// follow polls the operation until it finishes, drawing its progress on
// w. Each poll has the global --timeout; the whole follow has none but
// the user's interrupt.
func (g *globalOptions) follow(ctx context.Context, op *havenv1.Operation, w io.Writer) (*havenv1.Operation, error) {
	bar := progressbar.NewOptions64(max(op.GetProgress().GetMemoryBytes(), 1),
		progressbar.OptionSetWriter(w),
		progressbar.OptionShowBytes(true),
		progressbar.OptionSetWidth(30),
		progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionSetVisibility(isTerminal(w)),
		progressbar.OptionClearOnFinish(),
		progressbar.OptionSetDescription(describeMove(op)))
	defer bar.Exit()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for inFlight(op) {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-tick.C:
		}
		err := g.call(ctx, func(ctx context.Context, c havenv1.ClusterServiceClient) error {
			resp, err := c.GetOperation(ctx, &havenv1.GetOperationRequest{Id: op.GetId()})
			if err == nil {
				op = resp.GetOperation()
			}
			return err
		})
		if err != nil {
			return nil, err
		}
		p := op.GetProgress()
		if p.GetMemoryBytes() > 0 && bar.GetMax64() != p.GetMemoryBytes() {
			bar.ChangeMax64(p.GetMemoryBytes())
		}
		_ = bar.Set64(min(p.GetBytesSent(), bar.GetMax64()))
		bar.Describe(describeMove(op))
	}
	_ = bar.Finish()
	return op, nil
}

func inFlight(op *havenv1.Operation) bool {
	return op.GetPhase() != havenv1.OperationPhase_OPERATION_PHASE_FINISHED
}

// describeMove is the bar's text: phase, round, rate, what is left and
// the downtime it would cost now.
func describeMove(op *havenv1.Operation) string {
	p := op.GetProgress()
	s := fmt.Sprintf("%s %s→%s %s", op.GetGroup(), op.GetSource(), op.GetTarget(), enumWord(op.GetPhase().String(), "OPERATION_PHASE_"))
	if p.GetRound() > 0 {
		s += fmt.Sprintf(" round %d, %s/s, %s left, ~%s downtime", p.GetRound(), formatSize(p.GetRateBytesPerSec()), formatSize(p.GetRemainingBytes()), p.GetExpectedDowntime().AsDuration().Round(time.Millisecond))
	}
	if t := p.GetThrottlePercent(); t > 0 {
		s += fmt.Sprintf(", guest slowed %d%%", t)
	}
	return s
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

func newOpsCmd(g *globalOptions) *cobra.Command {
	var group string
	cmd := &cobra.Command{
		Use:   "ops [ID]",
		Short: "List moves in flight and recently finished, or show one",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.call(cmd.Context(), func(ctx context.Context, c havenv1.ClusterServiceClient) error {
				if len(args) == 1 {
					resp, err := c.GetOperation(ctx, &havenv1.GetOperationRequest{Id: args[0]})
					if err != nil {
						return err
					}
					return g.render(cmd.OutOrStdout(), resp, func(w io.Writer) error { return writeOperation(w, resp.GetOperation()) })
				}
				resp, err := c.ListOperations(ctx, &havenv1.ListOperationsRequest{Group: group})
				if err != nil {
					return err
				}
				return g.render(cmd.OutOrStdout(), resp, func(w io.Writer) error { return writeOperationsTable(w, resp.GetOperations()) })
			})
		},
	}
	cmd.Flags().StringVar(&group, "group", "", "only this group's moves")
	cmd.AddCommand(newOpsCancelCmd(g))
	return cmd
}

func newOpsCancelCmd(g *globalOptions) *cobra.Command {
	var requestID string
	cmd := &cobra.Command{
		Use:   "cancel ID",
		Short: "Roll back a move that has not committed: the group stays where it was",
		Args:  argsExactly(1, "ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.call(cmd.Context(), func(ctx context.Context, c havenv1.ClusterServiceClient) error {
				resp, err := c.CancelOperation(ctx, &havenv1.CancelOperationRequest{Id: args[0], RequestId: requestID})
				if err != nil {
					return err
				}
				return g.render(cmd.OutOrStdout(), resp, func(w io.Writer) error { return writeOperation(w, resp.GetOperation()) })
			})
		},
	}
	cmd.Flags().StringVar(&requestID, "request-id", "", requestIDUsage)
	return cmd
}

func outcomeWord(op *havenv1.Operation) string {
	if inFlight(op) {
		return enumWord(op.GetPhase().String(), "OPERATION_PHASE_")
	}
	return enumWord(op.GetOutcome().String(), "OPERATION_OUTCOME_")
}

func writeOperationsTable(w io.Writer, ops []*havenv1.Operation) error {
	tw := newTable(w)
	fmt.Fprintln(tw, "ID\tGROUP\tKIND\tFROM\tTO\tSTATE\tSENT\tROUNDS\tREASON")
	for _, op := range ops {
		p := op.GetProgress()
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n", op.GetId(), op.GetGroup(), enumWord(op.GetKind().String(), "MOVE_KIND_"),
			op.GetSource(), op.GetTarget(), outcomeWord(op), formatSize(p.GetBytesSent()), p.GetRound(), dash(op.GetReason()))
	}
	return tw.Flush()
}

func writeOperation(w io.Writer, op *havenv1.Operation) error {
	p := op.GetProgress()
	tw := newTable(w)
	fmt.Fprintf(tw, "id:\t%s\n", op.GetId())
	fmt.Fprintf(tw, "group:\t%s\n", op.GetGroup())
	fmt.Fprintf(tw, "kind:\t%s (asked by %s)\n", enumWord(op.GetKind().String(), "MOVE_KIND_"), dash(op.GetCause()))
	fmt.Fprintf(tw, "from:\t%s (epoch %d)\n", op.GetSource(), op.GetSourceEpoch())
	fmt.Fprintf(tw, "to:\t%s (epoch %d)\n", op.GetTarget(), op.GetTargetEpoch())
	fmt.Fprintf(tw, "state:\t%s\n", outcomeWord(op))
	fmt.Fprintf(tw, "reason:\t%s\n", dash(op.GetReason()))
	fmt.Fprintf(tw, "progress:\tround %d, %s sent of %s, %s left, %s/s, expected downtime %s, guest slowed %d%%\n",
		p.GetRound(), formatSize(p.GetBytesSent()), formatSize(p.GetMemoryBytes()), formatSize(p.GetRemainingBytes()),
		formatSize(p.GetRateBytesPerSec()), p.GetExpectedDowntime().AsDuration().Round(time.Millisecond), p.GetThrottlePercent())
	if op.GetChecksum() != 0 {
		fmt.Fprintf(tw, "checksum:\t%016x (verified by the target)\n", op.GetChecksum())
	}
	if st, ft := op.GetCreateTime(), op.GetFinishTime(); st != nil && ft != nil {
		fmt.Fprintf(tw, "took:\t%s\n", ft.AsTime().Sub(st.AsTime()).Round(time.Millisecond))
	}
	return tw.Flush()
}
