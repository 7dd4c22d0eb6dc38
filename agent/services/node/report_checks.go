package node

import (
	"context"

	"github.com/haven-ha/haven/agent/services"
	"github.com/haven-ha/haven/fsm"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// ReportChecks takes a node's report of the groups its driver cannot run
// (on the leader).
func (s *Service) ReportChecks(_ context.Context, req *havenv1.ReportChecksRequest) (*havenv1.ReportChecksResponse, error) {
	if !fsm.ValidName(req.GetNode()) {
		return nil, services.Invalid("node: %q is not a valid node name", req.GetNode())
	}
	for i, r := range req.GetCannotRun() {
		if !fsm.ValidName(r.GetGroup()) {
			return nil, services.Invalid("cannot_run[%d].group: %q is not a valid group name", i, r.GetGroup())
		}
	}
	if err := s.checkMember(req.GetNode(), "checks report"); err != nil {
		return nil, err
	}
	if err := s.cfg.Reports.ReportChecks(req); err != nil {
		return nil, s.status(err)
	}
	return &havenv1.ReportChecksResponse{}, nil
}
