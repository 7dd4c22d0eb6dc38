package cluster

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// GetGroup reads one group.
func (s *Service) GetGroup(_ context.Context, req *havenv1.GetGroupRequest) (*havenv1.GetGroupResponse, error) {
	if err := checkGroupName(req.GetName()); err != nil {
		return nil, err
	}
	meta, err := s.consistent(req.GetConsistent())
	if err != nil {
		return nil, err
	}
	g := s.cfg.State.Group(req.GetName())
	if g == nil {
		return nil, status.Errorf(codes.NotFound, "group %q not found", req.GetName())
	}
	return &havenv1.GetGroupResponse{Group: g, Meta: meta}, nil
}
