package cluster

import (
	"context"

	"github.com/haven-ha/haven/agent/services"
	"github.com/haven-ha/haven/fsm"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// StartGroup has the leader place and start a group, on the node given if
// any.
func (s *Service) StartGroup(_ context.Context, req *havenv1.StartGroupRequest) (*havenv1.StartGroupResponse, error) {
	if err := checkGroupName(req.GetName()); err != nil {
		return nil, err
	}
	if req.GetNode() != "" && !fsm.ValidName(req.GetNode()) {
		return nil, services.Invalid("node: %q is not a valid node name", req.GetNode())
	}
	id, err := services.RequestID(req.GetRequestId())
	if err != nil {
		return nil, err
	}
	g, err := s.cfg.Leader.StartGroup(req.GetName(), req.GetNode(), id)
	if err != nil {
		return nil, s.status(err)
	}
	return &havenv1.StartGroupResponse{Group: g}, nil
}
