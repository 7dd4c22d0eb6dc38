package main

import (
	"context"
	"io"

	"github.com/spf13/cobra"

	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

func newStatusCmd(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show the leader, quorum and counts as the answering agent sees them",
		Args:  argsExactly(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.call(cmd.Context(), func(ctx context.Context, c havenv1.ClusterServiceClient) error {
				resp, err := c.GetStatus(ctx, &havenv1.GetStatusRequest{})
				if err != nil {
					return err
				}
				return g.render(cmd.OutOrStdout(), resp, func(w io.Writer) error { return writeStatus(w, resp) })
			})
		},
	}
}
