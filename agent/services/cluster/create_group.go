package cluster

import (
	"context"

	"github.com/haven-ha/haven/agent/services"
	"github.com/haven-ha/haven/fsm"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// CreateGroup validates the spec and has the leader admit and create it.
func (s *Service) CreateGroup(_ context.Context, req *havenv1.CreateGroupRequest) (*havenv1.CreateGroupResponse, error) {
	if req.GetSpec() == nil {
		return nil, services.Invalid("spec: is missing")
	}
	fsm.NormalizeGroupSpec(req.Spec)
	if err := fsm.ValidateGroupSpec(req.Spec); err != nil {
		return nil, services.Invalid("%v", err)
	}
	id, err := services.RequestID(req.GetRequestId())
	if err != nil {
		return nil, err
	}
	g, err := s.cfg.Leader.CreateGroup(req.Spec, id)
	if err != nil {
		return nil, s.status(err)
	}
	return &havenv1.CreateGroupResponse{Group: g}, nil
}
