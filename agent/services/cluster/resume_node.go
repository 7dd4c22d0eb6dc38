package cluster

import (
	"context"

	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// ResumeNode ends a node's drain.
func (s *Service) ResumeNode(_ context.Context, req *havenv1.ResumeNodeRequest) (*havenv1.ResumeNodeResponse, error) {
	id, err := checkDrainRequest(req.GetNode(), req.GetRequestId())
	if err != nil {
		return nil, err
	}
	n, err := s.cfg.Leader.SetDrain(req.GetNode(), false, id)
	if err != nil {
		return nil, s.status(err)
	}
	return &havenv1.ResumeNodeResponse{Node: n}, nil
}
