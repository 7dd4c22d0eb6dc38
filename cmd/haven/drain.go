package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/haven-ha/haven/internal/rpcclient"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

func newDrainCmd(g *globalOptions) *cobra.Command {
	var (
		requestID string
		wait      bool
	)
	cmd := &cobra.Command{
		Use:   "drain NODE",
		Short: "Move every group off a node for maintenance and keep new ones away",
		Long: `Move every group off a node for maintenance and keep new ones away.

Each group moves live where the two nodes can (else quick), most important
first, a few at a time, to where placement puts it; only a group whose moves
rolled back, or that cannot migrate at all, is restarted there instead. With
--wait the command reports each group as it leaves and returns once the node
runs none. 'haven members' shows the node as draining until 'haven resume
NODE'.`,
		Args: argsExactly(1, "NODE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			err := g.call(cmd.Context(), func(ctx context.Context, c havenv1.ClusterServiceClient) error {
				resp, err := c.DrainNode(ctx, &havenv1.DrainNodeRequest{Node: args[0], RequestId: requestID})
				if err != nil {
					return err
				}
				return g.render(cmd.OutOrStdout(), resp, func(w io.Writer) error {
					if len(resp.GetGroups()) == 0 {
						_, err := fmt.Fprintf(w, "node %s is draining; it runs no group\n", args[0])
						return err
					}
					_, err := fmt.Fprintf(w, "node %s is draining; moving %s\n", args[0], strings.Join(resp.GetGroups(), ", "))
					return err
				})
			})
			if err != nil || !wait {
				return err
			}
			return g.waitDrained(cmd.Context(), args[0], cmd.OutOrStdout())
		},
	}
	cmd.Flags().StringVar(&requestID, "request-id", "", requestIDUsage)
	cmd.Flags().BoolVar(&wait, "wait", false, "report each group as it leaves, until the node runs none (Ctrl-C stops waiting, not the drain)")
	return cmd
}

// waitDrained polls until node runs no group, printing a line whenever one
// of its groups starts or ends a move or leaves by a restart.
func (g *globalOptions) waitDrained(ctx context.Context, node string, w io.Writer) error {
	start := time.Now()
	said := map[string]string{}
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for {
		var groups []*havenv1.Group
		ops := map[string]*havenv1.Operation{}
		err := g.call(ctx, func(ctx context.Context, c havenv1.ClusterServiceClient) error {
			resp, err := rpcclient.AllGroups(ctx, c, &havenv1.ListGroupsRequest{})
			if err != nil {
				return err
			}
			groups = resp.GetGroups()
			or, err := c.ListOperations(ctx, &havenv1.ListOperationsRequest{})
			for _, op := range or.GetOperations() {
				ops[op.GetId()] = op
			}
			return err
		})
		if err != nil {
			return err
		}
		left := 0
		for _, gr := range groups {
			name := gr.GetSpec().GetName()
			line := ""
			switch {
			case gr.GetOwner() == node && gr.GetState() != havenv1.GroupState_GROUP_STATE_OFFLINE && gr.GetState() != havenv1.GroupState_GROUP_STATE_FAILED:
				left++
				if op := ops[gr.GetOperation()]; op != nil {
					line = fmt.Sprintf("%s: %s move to %s, %s", name, enumWord(op.GetKind().String(), "MOVE_KIND_"), op.GetTarget(), enumWord(op.GetPhase().String(), "OPERATION_PHASE_"))
				} else if gr.GetMoveTo() != "" {
					line = fmt.Sprintf("%s: restarting on %s (%s)", name, gr.GetMoveTo(), gr.GetStateReason())
				}
			case said[name] != "":
				line = fmt.Sprintf("%s: now on %s", name, gr.GetOwner())
			}
			if gr.GetOwner() == node && line == "" {
				// On the node, not moving yet: remembered so that its
				// leaving is reported.
				said[name] = "waiting"
			}
			if line != "" && said[name] != line {
				said[name] = line
				if _, err := fmt.Fprintln(w, line); err != nil {
					return err
				}
			}
		}
		if left == 0 {
			_, err := fmt.Fprintf(w, "node %s is drained: it runs no group (%s)\n", node, time.Since(start).Round(100*time.Millisecond))
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

func newResumeCmd(g *globalOptions) *cobra.Command {
	var requestID string
	cmd := &cobra.Command{
		Use:   "resume NODE",
		Short: "End a node's drain: it takes groups again",
		Args:  argsExactly(1, "NODE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.call(cmd.Context(), func(ctx context.Context, c havenv1.ClusterServiceClient) error {
				resp, err := c.ResumeNode(ctx, &havenv1.ResumeNodeRequest{Node: args[0], RequestId: requestID})
				if err != nil {
					return err
				}
				return g.render(cmd.OutOrStdout(), resp, func(w io.Writer) error {
					_, err := fmt.Fprintf(w, "node %s takes groups again\n", args[0])
					return err
				})
			})
		},
	}
	cmd.Flags().StringVar(&requestID, "request-id", "", requestIDUsage)
	return cmd
}
