package node

import (
	"context"

	"github.com/haven-ha/haven/agent/services"
	"github.com/haven-ha/haven/fsm"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// RenewLease grants a member node a lease (on the leader).
func (s *Service) RenewLease(ctx context.Context, req *havenv1.RenewLeaseRequest) (*havenv1.RenewLeaseResponse, error) {
	if !fsm.ValidName(req.GetNode()) {
		return nil, services.Invalid("node: %q is not a valid node name", req.GetNode())
	}
	if err := s.checkMember(req.GetNode(), "lease renewal"); err != nil {
		return nil, err
	}
	resp, err := s.cfg.Leases.Renew(ctx, req.GetNode())
	if err != nil {
		return nil, s.status(err)
	}
	return resp, nil
}
