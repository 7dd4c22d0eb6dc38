package node

import (
	"context"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/haven-ha/haven/agent/consensus"
	"github.com/haven-ha/haven/fsm"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

func diskReport(node string) *havenv1.ReportDiskChangeRequest {
	return &havenv1.ReportDiskChangeRequest{Node: node, Group: "web", Epoch: 4, Index: 17,
		Outcome: havenv1.DiskChangeOutcome_DISK_CHANGE_OUTCOME_APPLIED}
}

func TestReportDiskChange(t *testing.T) {
	for _, n := range members {
		f := newFixture(t, nil, false)
		req := diskReport(n)
		if _, err := f.svc.ReportDiskChange(context.Background(), req); err != nil {
			t.Errorf("member %s's report refused: %v", n, err)
			continue
		}
		if len(f.reports.disks) != 1 || f.reports.disks[0] != req {
			t.Errorf("member %s: leader got %v, want the report as sent", n, f.reports.disks)
		}
	}
	for _, n := range nonMembers {
		f := newFixture(t, nil, false)
		_, err := f.svc.ReportDiskChange(context.Background(), diskReport(n))
		wantStatus(t, err, codes.PermissionDenied, `disk change report: node "`+n+`" is not a member`)
		if len(f.reports.disks) != 0 {
			t.Errorf("stranger %s's report reached the leader", n)
		}
	}
}

func TestReportDiskChangeInvalid(t *testing.T) {
	for _, c := range []struct {
		mutate func(*havenv1.ReportDiskChangeRequest)
		msg    string
	}{
		{func(r *havenv1.ReportDiskChangeRequest) { r.Node = "" }, `node: "" is not a valid node name`},
		{func(r *havenv1.ReportDiskChangeRequest) { r.Group = "Web" }, `group: "Web" is not a valid group name`},
		{func(r *havenv1.ReportDiskChangeRequest) { r.Outcome = 0 }, "applied or failed"},
		{func(r *havenv1.ReportDiskChangeRequest) {
			r.Outcome = havenv1.DiskChangeOutcome_DISK_CHANGE_OUTCOME_RECORDED
		}, "applied or failed"},
	} {
		f := newFixture(t, nil, false)
		req := diskReport("n2")
		c.mutate(req)
		_, err := f.svc.ReportDiskChange(context.Background(), req)
		wantStatus(t, err, codes.InvalidArgument, c.msg)
		if len(f.reports.disks) != 0 {
			t.Errorf("invalid report (%s) reached the leader", c.msg)
		}
	}
}

func TestReportDiskChangeRefused(t *testing.T) {
	for _, c := range []struct {
		err  error
		code codes.Code
		msg  string
	}{
		{consensus.ErrNotLeader, codes.Unavailable, "not the leader"},
		{&fsm.Error{Code: fsm.CodeFailedPrecondition, Msg: `group "web": the attach of disk data (web/data.img) is for n3 at epoch 5`}, codes.FailedPrecondition, "for n3 at epoch 5"},
	} {
		f := newFixture(t, nil, false)
		f.reports.err = c.err
		_, err := f.svc.ReportDiskChange(context.Background(), diskReport("n2"))
		wantStatus(t, err, c.code, c.msg)
	}
}
