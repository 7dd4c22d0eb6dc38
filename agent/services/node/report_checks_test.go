package node

import (
	"context"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/haven-ha/haven/agent/consensus"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

func checksReport(node string) *havenv1.ReportChecksRequest {
	return &havenv1.ReportChecksRequest{Node: node, CheckedIndex: 12,
		CannotRun: []*havenv1.GroupRefusal{{Group: "web", CreateIndex: 9, Reason: "vm: boot.kernel: no such file"}}}
}

func TestReportChecks(t *testing.T) {
	for _, n := range members {
		f := newFixture(t, nil, false)
		req := checksReport(n)
		if _, err := f.svc.ReportChecks(context.Background(), req); err != nil {
			t.Errorf("member %s's report refused: %v", n, err)
			continue
		}
		if len(f.reports.checks) != 1 || f.reports.checks[0] != req {
			t.Errorf("member %s: leader got %v, want the report as sent", n, f.reports.checks)
		}
	}
	for _, n := range nonMembers {
		f := newFixture(t, nil, false)
		_, err := f.svc.ReportChecks(context.Background(), checksReport(n))
		wantStatus(t, err, codes.PermissionDenied, `checks report: node "`+n+`" is not a member`)
		if len(f.reports.checks) != 0 {
			t.Errorf("stranger %s's report reached the leader", n)
		}
	}
}

func TestReportChecksInvalid(t *testing.T) {
	for _, c := range []struct {
		mutate func(*havenv1.ReportChecksRequest)
		msg    string
	}{
		{func(r *havenv1.ReportChecksRequest) { r.Node = "" }, `node: "" is not a valid node name`},
		{func(r *havenv1.ReportChecksRequest) { r.CannotRun[0].Group = "Web" }, `cannot_run[0].group: "Web" is not a valid group name`},
	} {
		f := newFixture(t, nil, false)
		req := checksReport("n2")
		c.mutate(req)
		_, err := f.svc.ReportChecks(context.Background(), req)
		wantStatus(t, err, codes.InvalidArgument, c.msg)
		if len(f.reports.checks) != 0 {
			t.Errorf("invalid report (%s) reached the leader", c.msg)
		}
	}
	f := newFixture(t, nil, false)
	f.reports.err = consensus.ErrNotLeader
	_, err := f.svc.ReportChecks(context.Background(), checksReport("n2"))
	wantStatus(t, err, codes.Unavailable, "not the leader")
}
