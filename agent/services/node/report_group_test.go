package node

import (
	"context"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/haven-ha/haven/agent/consensus"
	"github.com/haven-ha/haven/agent/leader"
	"github.com/haven-ha/haven/fsm"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

func report(node string) *havenv1.ReportGroupRequest {
	return &havenv1.ReportGroupRequest{
		Node: node, Name: "web", Epoch: 4, State: havenv1.GroupState_GROUP_STATE_FAILED, Reason: "disk fenced", DesiredIndex: 12,
	}
}

func TestReportGroup(t *testing.T) {
	for _, n := range members {
		f := newFixture(t, nil, false)
		req := report(n)
		if _, err := f.svc.ReportGroup(context.Background(), req); err != nil {
			t.Errorf("member %s's report refused: %v", n, err)
			continue
		}
		if len(f.reports.got) != 1 || f.reports.got[0] != req {
			t.Errorf("member %s: leader got %v, want the report as sent", n, f.reports.got)
		}
	}
}

// A report from a node the cluster does not know is a lie or a
// misconfiguration; it must not move a group.
func TestReportGroupStrangers(t *testing.T) {
	for _, n := range nonMembers {
		f := newFixture(t, nil, false)
		_, err := f.svc.ReportGroup(context.Background(), report(n))
		wantStatus(t, err, codes.PermissionDenied, `group report: node "`+n+`" is not a member`)
		if len(f.reports.got) != 0 {
			t.Errorf("stranger %s's report reached the leader", n)
		}
	}
}

func TestReportGroupInvalid(t *testing.T) {
	for _, c := range []struct {
		node, name string
		msg        string
	}{
		{"", "web", `node: "" is not a valid node name`},
		{"N2", "web", `node: "N2" is not a valid node name`},
		{"n2", "", `name: "" is not a valid group name`},
		{"n2", "Web", `name: "Web" is not a valid group name`},
	} {
		f := newFixture(t, nil, false)
		req := report(c.node)
		req.Name = c.name
		_, err := f.svc.ReportGroup(context.Background(), req)
		wantStatus(t, err, codes.InvalidArgument, c.msg)
		if len(f.reports.got) != 0 {
			t.Errorf("invalid report (%s) reached the leader", c.msg)
		}
	}
}

// The executor keeps reporting until the leader answers; the code tells
// it whether to retry (Unavailable) or give up (the report is stale).
func TestReportGroupRefused(t *testing.T) {
	for _, c := range []struct {
		err  error
		code codes.Code
		msg  string
	}{
		{consensus.ErrNotLeader, codes.Unavailable, "not the leader; the leader is n2 at 10.0.0.2:7443"},
		{fmt.Errorf("group %q is owned by %q at epoch 5: %w", "web", "n3", leader.ErrConflict), codes.FailedPrecondition, `owned by "n3" at epoch 5`},
		{fmt.Errorf("group %q not found: %w", "web", leader.ErrNotFound), codes.NotFound, `group "web" not found`},
		{&fsm.Error{Code: fsm.CodeFailedPrecondition, Msg: "desired index 12 is stale"}, codes.FailedPrecondition, "desired index 12 is stale"},
	} {
		f := newFixture(t, nil, false)
		f.reports.err = c.err
		_, err := f.svc.ReportGroup(context.Background(), report("n2"))
		wantStatus(t, err, c.code, c.msg)
	}
}
