package cluster

import (
	"context"
	"sort"

	"github.com/hashicorp/raft"

	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// ListNodes lists a page of the FSM's nodes, in name order, that pass the
// request's filters, with their Raft roles. Nodes are few (hundreds, a
// thousand at most) next to groups, so a page is cut from the sorted copy
// State.Nodes gives.
func (s *Service) ListNodes(_ context.Context, req *havenv1.ListNodesRequest) (*havenv1.ListNodesResponse, error) {
	size, err := pageSize(req.GetPageSize())
	if err != nil {
		return nil, err
	}
	after, err := afterToken("nodes", req.GetPageToken())
	if err != nil {
		return nil, err
	}
	if _, ok := havenv1.NodeStatus_name[int32(req.GetStatus())]; !ok {
		return nil, invalidEnum("status", int32(req.GetStatus()))
	}
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
	nodes := s.cfg.State.Nodes()
	from := sort.Search(len(nodes), func(i int) bool { return nodes[i].GetName() > after })
	for _, n := range nodes[from:] {
		if !nodeMatches(n, req) {
			continue
		}
		if len(resp.Nodes) == size {
			resp.NextPageToken = pageToken("nodes", resp.Nodes[len(resp.Nodes)-1].GetNode().GetName())
			break
		}
		role, ok := roles[n.GetName()]
		if !ok {
			role = havenv1.RaftRole_RAFT_ROLE_NONE
		}
		resp.Nodes = append(resp.Nodes, &havenv1.NodeInfo{Node: n, RaftRole: role, Leader: rs.Leader == n.GetName()})
	}
	return resp, nil
}

func nodeMatches(n *havenv1.Node, req *havenv1.ListNodesRequest) bool {
	return (req.GetStatus() == havenv1.NodeStatus_NODE_STATUS_UNSPECIFIED || n.GetStatus() == req.GetStatus()) &&
		(req.GetSite() == "" || n.GetSite() == req.GetSite()) &&
		hasLabels(n.GetLabels(), req.GetLabels())
}
