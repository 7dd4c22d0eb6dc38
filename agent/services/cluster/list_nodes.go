package cluster

import (
	"context"

	"github.com/hashicorp/raft"

	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// ListNodes lists the FSM's nodes with their Raft roles.
func (s *Service) ListNodes(_ context.Context, req *havenv1.ListNodesRequest) (*havenv1.ListNodesResponse, error) {
	meta, err := s.consistent(req.GetConsistent())
	if err != nil {
		return nil, err
	}
	rs := s.cfg.Raft.Status()
	roles := map[string]havenv1.RaftRole{}
	for _, srv := range rs.Servers {
		r := havenv1.RaftRole_RAFT_ROLE_NONVOTER
		if srv.Suffrage == raft.Voter {
			r = havenv1.RaftRole_RAFT_ROLE_VOTER
		}
		roles[string(srv.ID)] = r
	}
	resp := &havenv1.ListNodesResponse{Meta: meta}
	for _, n := range s.cfg.State.Nodes() {
		role, ok := roles[n.GetName()]
		if !ok {
			role = havenv1.RaftRole_RAFT_ROLE_NONE
		}
		resp.Nodes = append(resp.Nodes, &havenv1.NodeInfo{Node: n, RaftRole: role, Leader: rs.Leader == n.GetName()})
	}
	return resp, nil
}
