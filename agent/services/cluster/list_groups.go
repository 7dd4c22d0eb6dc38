package cluster

import (
	"context"

	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// ListGroups reads every group.
func (s *Service) ListGroups(_ context.Context, req *havenv1.ListGroupsRequest) (*havenv1.ListGroupsResponse, error) {
	meta, err := s.consistent(req.GetConsistent())
	if err != nil {
		return nil, err
	}
	return &havenv1.ListGroupsResponse{Groups: s.cfg.State.Groups(), Meta: meta}, nil
}
