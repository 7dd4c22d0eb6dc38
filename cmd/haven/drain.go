package main

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

func newDrainCmd(g *globalOptions) *cobra.Command {
	var requestID string
	cmd := &cobra.Command{
		Use:   "drain NODE",
		Short: "Move every group off a node for maintenance and keep new ones away",
		Long: `Move every group off a node for maintenance and keep new ones away.

Until migration exists each group moves by a planned restart: stopped on the
node, then started where placement puts it. 'haven members' shows the node as
draining until 'haven resume NODE'.`,
		Args: argsExactly(1, "NODE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.call(cmd.Context(), func(ctx context.Context, c havenv1.ClusterServiceClient) error {
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
		},
	}
	cmd.Flags().StringVar(&requestID, "request-id", "", requestIDUsage)
	return cmd
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
