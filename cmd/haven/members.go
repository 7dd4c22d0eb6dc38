package main

import (
	"context"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/haven-ha/haven/internal/rpcclient"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

func newMembersCmd(g *globalOptions) *cobra.Command {
	var (
		consistent  bool
		state, site string
		labels      []string
		pageSize    int32
	)
	cmd := &cobra.Command{
		Use:   "members",
		Short: "List the cluster's nodes with their site, status and Raft role",
		Long: `List the cluster's nodes with their site, status and Raft role, sorted by
name. The agent answers a page at a time; the list follows every page.
Filters are ANDed.`,
		Example: `  haven members --state failed
  haven members --site a --label rack=r1`,
		Args: argsExactly(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			req := &havenv1.ListNodesRequest{Consistent: consistent, Site: site, PageSize: pageSize}
			if state != "" {
				v, ok := havenv1.NodeStatus_value["NODE_STATUS_"+strings.ToUpper(state)]
				if !ok || v == 0 {
					return usagef(cmd, "--state %q: want alive, failed or left", state)
				}
				req.Status = havenv1.NodeStatus(v)
			}
			var err error
			if req.Labels, err = parseLabels(labels); err != nil {
				return usagef(cmd, "--label: %v", err)
			}
			if pageSize < 0 {
				return usagef(cmd, "--page-size %d: must not be negative", pageSize)
			}
			return g.call(cmd.Context(), func(ctx context.Context, c havenv1.ClusterServiceClient) error {
				resp, err := rpcclient.AllNodes(ctx, c, req)
				if err != nil {
					return err
				}
				return g.render(cmd.OutOrStdout(), resp, func(w io.Writer) error { return writeNodesTable(w, resp) })
			})
		},
	}
	f := cmd.Flags()
	f.BoolVar(&consistent, "consistent", false, consistentHelp)
	f.StringVar(&state, "state", "", "only nodes of this status (alive, failed, left)")
	f.StringVar(&site, "site", "", "only nodes of this site")
	f.StringArrayVar(&labels, "label", nil, "only nodes with label key=value (repeatable, ANDed)")
	f.Int32Var(&pageSize, "page-size", 0, "nodes per call to the agent (0: the agent's default)")
	return cmd
}
