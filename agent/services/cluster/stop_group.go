package cluster

import (
	"context"

	"github.com/haven-ha/haven/agent/services"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// StopGroup records the operator's stop.
func (s *Service) StopGroup(_ context.Context, req *havenv1.StopGroupRequest) (*havenv1.StopGroupResponse, error) {
	if err := checkGroupName(req.GetName()); err != nil {
		return nil, err
	}
	id, err := services.RequestID(req.GetRequestId())
	if err != nil {
		return nil, err
	}
	g, err := s.cfg.Leader.StopGroup(req.GetName(), id)
	if err != nil {
		return nil, s.status(err)
	}
	return &havenv1.StopGroupResponse{Group: g}, nil
}
