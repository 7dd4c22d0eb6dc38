package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

func newEventsCmd(g *globalOptions) *cobra.Command {
	var (
		req  havenv1.WatchEventsRequest
		kind []string
	)
	cmd := &cobra.Command{
		Use:   "events",
		Short: "Show what happens in the cluster: commands applied, members joining and failing",
		Long: `Show the events the agent keeps (the last 4096 commands its state machine
applied, in log order) and, with --follow, new ones as they happen, including the
membership changes the agent's gossip sees. --from resumes after a log index.
With -o json every event is one JSON object on a line of its own.`,
		Args: argsExactly(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			req.Kinds = kind
			return g.watch(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr(), &req)
		},
	}
	f := cmd.Flags()
	f.BoolVarP(&req.Follow, "follow", "f", false, "keep watching for new events until interrupted")
	f.Uint64Var(&req.FromIndex, "from", 0, "only events of log indexes after this one")
	f.StringSliceVar(&kind, "kind", nil, "only events of these kinds (failover, node-fenced, member-failed, assign-group, ...); repeatable")
	f.StringVar(&req.Node, "node", "", "only events about this node")
	f.StringVar(&req.Group, "group", "", "only events about this group")
	return cmd
}

// watch prints events until the stream ends. Following, it has no
// deadline, and a stream the agent ended because this client fell behind
// is watched again from the last index printed.
func (g *globalOptions) watch(ctx context.Context, out, errOut io.Writer, req *havenv1.WatchEventsRequest) error {
	conn, err := g.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	if !req.GetFollow() {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, g.timeout)
		defer cancel()
	}
	c := havenv1.NewClusterServiceClient(conn)
	header := g.output == "table"
	for {
		stream, err := c.WatchEvents(ctx, req)
		if err != nil {
			return err
		}
		for {
			resp, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				return nil
			}
			if status.Code(err) == codes.Aborted && req.GetFollow() {
				fmt.Fprintf(errOut, "(%s; watching again from index %d)\n", status.Convert(err).Message(), req.GetFromIndex())
				break
			}
			if err != nil {
				if ctx.Err() != nil && req.GetFollow() {
					return nil
				}
				return err
			}
			e := resp.GetEvent()
			if e.GetIndex() > req.GetFromIndex() {
				req.FromIndex = e.GetIndex()
			}
			if err := g.writeEvent(out, e, header); err != nil {
				return err
			}
			header = false
		}
	}
}

func (g *globalOptions) writeEvent(w io.Writer, e *havenv1.Event, header bool) error {
	if g.output == "json" {
		b, err := protojson.Marshal(e)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(w, "%s\n", b)
		return err
	}
	const row = "%-24s %8s  %-16s %-12s %-10s %6s  %-22s %s\n"
	if header {
		if _, err := fmt.Fprintf(w, row, "TIME", "INDEX", "KIND", "GROUP", "NODE", "EPOCH", "STATE", "REASON"); err != nil {
			return err
		}
	}
	index, epoch := "-", "-"
	if e.GetIndex() > 0 {
		index = fmt.Sprint(e.GetIndex())
	}
	if e.GetEpoch() > 0 {
		epoch = fmt.Sprint(e.GetEpoch())
	}
	reason := e.GetReason()
	if e.GetRefused() != "" {
		reason = "refused: " + e.GetRefused()
	}
	when := "-"
	if e.GetTime() != nil {
		when = e.GetTime().AsTime().Local().Format("2006-01-02 15:04:05.000")
	}
	_, err := fmt.Fprintf(w, row, when, index, e.GetKind(), dash(e.GetGroup()), dash(e.GetNode()), epoch,
		dash(strings.TrimPrefix(strings.TrimPrefix(e.GetState(), "GROUP_STATE_"), "NODE_STATUS_")), dash(reason))
	return err
}
