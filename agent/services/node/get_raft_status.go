package node

import (
	"context"

	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// GetRaftStatus tells a bootstrapping peer whether this node already
// belongs to a cluster.
func (s *Service) GetRaftStatus(context.Context, *havenv1.GetRaftStatusRequest) (*havenv1.GetRaftStatusResponse, error) {
	rs := s.cfg.Raft.Status()
	return &havenv1.GetRaftStatusResponse{HasState: s.cfg.Raft.HasState(), Peers: uint32(len(rs.Servers)), Leader: rs.Leader}, nil
}
