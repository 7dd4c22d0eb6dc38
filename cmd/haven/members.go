package main

import (
	"context"
	"io"

	"github.com/spf13/cobra"

	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

func newMembersCmd(g *globalOptions) *cobra.Command {
	var consistent bool
	cmd := &cobra.Command{
		Use:   "members",
		Short: "List the cluster's nodes with their site, status and Raft role",
		Args:  argsExactly(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.call(cmd.Context(), func(ctx context.Context, c havenv1.ClusterServiceClient) error {
				resp, err := c.ListNodes(ctx, &havenv1.ListNodesRequest{Consistent: consistent})
				if err != nil {
					return err
				}
				return g.render(cmd.OutOrStdout(), resp, func(w io.Writer) error { return writeNodesTable(w, resp) })
			})
		},
	}
	cmd.Flags().BoolVar(&consistent, "consistent", false, consistentHelp)
	return cmd
}
