package cluster

import (
	"context"

	"github.com/haven-ha/haven/agent/services"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// DeleteGroup deletes a stopped group.
func (s *Service) DeleteGroup(_ context.Context, req *havenv1.DeleteGroupRequest) (*havenv1.DeleteGroupResponse, error) {
	if err := checkGroupName(req.GetName()); err != nil {
		return nil, err
	}
	id, err := services.RequestID(req.GetRequestId())
	if err != nil {
		return nil, err
	}
	if err := s.cfg.Leader.DeleteGroup(req.GetName(), id); err != nil {
		return nil, s.status(err)
	}
	return &havenv1.DeleteGroupResponse{}, nil
}
