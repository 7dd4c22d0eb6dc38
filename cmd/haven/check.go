package main

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/haven-ha/haven/check"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// violationsError is what check returns when the report has violations:
// an ordinary run-time failure (exit 1), after the report is printed.
type violationsError struct{ n int }

func (e *violationsError) Error() string {
	if e.n == 1 {
		return "1 invariant violation"
	}
	return fmt.Sprintf("%d invariant violations", e.n)
}

func newCheckCmd(g *globalOptions) *cobra.Command {
	var (
		shared                      string
		freshness, skew, stopWithin time.Duration
		offline                     bool
	)
	cmd := &cobra.Command{
		Use:   "check --shared DIR",
		Short: "Check the cluster's invariants from the sim VMs' records and the cluster state",
		Long: `Check haven's invariants from the evidence sim VMs leave on shared storage:

  two-runners        two (node, epoch) runs of a VM executed at overlapping
                     times, or one epoch ran on two nodes
  counter-backwards  a VM's counter went back on a disk or within a run
  epoch-backwards    a disk took a write from an older epoch after a newer
                     one, or without a claim; an older owner ran after a newer
  not-running        a group the cluster says runs has no recent tick by its
                     owner at its epoch (asks the agent at --addr)
  runs-stopped       a group that was stopped ticked more than --stop-within
                     after the stop (a lost stop; asks the agent)

Failed groups are listed as notes with their reasons. The exit code is 1 when
there is any violation. --offline reads the shared directory only, for when
no agent is reachable. Times are compared across writers, which assumes one
shared clock (agents on one host); across hosts give --skew.`,
		Example: `  haven check --shared /srv/haven-shared
  haven check --shared /srv/haven-shared --offline -o json`,
		Args: argsExactly(0, "no arguments (the directory is --shared)"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if shared == "" {
				return usagef(cmd, "--shared DIR is required: the shared storage directory of the sim driver")
			}
			if freshness <= 0 {
				return usagef(cmd, "--freshness %s: must be positive", freshness)
			}
			if skew < 0 {
				return usagef(cmd, "--skew %s: must not be negative", skew)
			}
			if stopWithin <= 0 {
				return usagef(cmd, "--stop-within %s: must be positive", stopWithin)
			}
			opt := check.Options{Freshness: freshness, Skew: skew, StopWithin: stopWithin}
			var (
				r   check.Report
				err error
			)
			if offline {
				r, err = check.RecordsWith(shared, opt)
			} else {
				err = g.call(cmd.Context(), func(ctx context.Context, c havenv1.ClusterServiceClient) error {
					r, err = check.Cluster(ctx, c, shared, opt)
					return err
				})
				if c := status.Code(err); c == codes.Unavailable || c == codes.DeadlineExceeded {
					return fmt.Errorf("%s (--offline checks the shared directory without an agent)", describeError(err))
				}
			}
			if err != nil {
				return err
			}
			if err := writeCheckReport(cmd, g, r); err != nil {
				return err
			}
			if !r.OK() {
				return &violationsError{len(r.Violations)}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&shared, "shared", "", "shared storage directory of the sim driver (required)")
	f.DurationVar(&freshness, "freshness", check.DefaultFreshness, "how recent a running group's last tick must be")
	f.DurationVar(&skew, "skew", 0, "bound on any writer's clock error; 0 asserts one shared clock")
	f.DurationVar(&stopWithin, "stop-within", check.DefaultStopWithin, "how long a stopped group may go on ticking (at least the cluster's lease.duration)")
	f.BoolVar(&offline, "offline", false, "check the records only, without asking an agent")
	return cmd
}

// writeCheckReport prints the report: with -o json as the Report itself
// (violations and notes as lists, empty when there are none), else as its
// summary, one line per violation and note.
func writeCheckReport(cmd *cobra.Command, g *globalOptions, r check.Report) error {
	w := cmd.OutOrStdout()
	if g.output == "json" {
		if r.Violations == nil {
			r.Violations = []check.Violation{}
		}
		if r.Notes == nil {
			r.Notes = []check.Violation{}
		}
		b, err := json.MarshalIndent(r, "", "  ")
		if err != nil {
			return err
		}
		_, err = w.Write(append(b, '\n'))
		return err
	}
	_, err := fmt.Fprintln(w, r.String())
	return err
}
