package node

import (
	"context"

	"github.com/haven-ha/haven/agent/services"
	"github.com/haven-ha/haven/fsm"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// ReportGroup takes an owner's report of its group (on the leader).
func (s *Service) ReportGroup(_ context.Context, req *havenv1.ReportGroupRequest) (*havenv1.ReportGroupResponse, error) {
	if !fsm.ValidName(req.GetNode()) {
		return nil, services.Invalid("node: %q is not a valid node name", req.GetNode())
	}
	if !fsm.ValidName(req.GetName()) {
		return nil, services.Invalid("name: %q is not a valid group name", req.GetName())
	}
	if err := s.checkMember(req.GetNode(), "group report"); err != nil {
		return nil, err
	}
	if err := s.cfg.Reports.Report(req); err != nil {
		return nil, s.status(err)
	}
	return &havenv1.ReportGroupResponse{}, nil
}
