package node

import (
	"context"

	"github.com/haven-ha/haven/agent/services"
	"github.com/haven-ha/haven/fsm"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// ReportDiskChange takes an owner's report on a group's pending disk
// change (on the leader).
func (s *Service) ReportDiskChange(_ context.Context, req *havenv1.ReportDiskChangeRequest) (*havenv1.ReportDiskChangeResponse, error) {
	if !fsm.ValidName(req.GetNode()) {
		return nil, services.Invalid("node: %q is not a valid node name", req.GetNode())
	}
	if !fsm.ValidName(req.GetGroup()) {
		return nil, services.Invalid("group: %q is not a valid group name", req.GetGroup())
	}
	switch req.GetOutcome() {
	case havenv1.DiskChangeOutcome_DISK_CHANGE_OUTCOME_APPLIED, havenv1.DiskChangeOutcome_DISK_CHANGE_OUTCOME_FAILED:
	default:
		return nil, services.Invalid("outcome: %s: an owner reports a disk change applied or failed", req.GetOutcome())
	}
	if err := s.checkMember(req.GetNode(), "disk change report"); err != nil {
		return nil, err
	}
	if err := s.cfg.Reports.ReportDiskChange(req); err != nil {
		return nil, s.status(err)
	}
	return &havenv1.ReportDiskChangeResponse{}, nil
}
