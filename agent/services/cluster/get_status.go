package cluster

import (
	"context"
	"sort"

	"github.com/hashicorp/raft"

	"github.com/haven-ha/haven/heartbeat"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
	"github.com/haven-ha/haven/quorum"
)

// GetStatus answers from this node's own view: its Raft state, the voters
// gossip sees alive, the FSM's nodes and groups, and the kept reserve.
func (s *Service) GetStatus(context.Context, *havenv1.GetStatusRequest) (*havenv1.GetStatusResponse, error) {
	rs := s.cfg.Raft.Status()
	resp := &havenv1.GetStatusResponse{
		Node:         s.cfg.Name,
		RaftState:    rs.State,
		Term:         rs.Term,
		CommitIndex:  rs.CommitIndex,
		AppliedIndex: rs.AppliedIndex,
	}
	if name, addr, err := s.cfg.Locate(); err == nil {
		resp.Leader, resp.LeaderAddr = name, addr
	}
	alive := map[string]bool{}
	for _, m := range s.cfg.Members.Members() {
		alive[m.Name] = m.State == heartbeat.StateAlive
	}
	for _, srv := range rs.Servers {
		if srv.Suffrage == raft.Voter {
			resp.Voters++
			if alive[string(srv.ID)] {
				resp.AliveVoters++
			}
		} else {
			resp.Nonvoters++
		}
	}
	resp.QuorumSize = uint32(quorum.QuorumSize(int(resp.Voters)))
	sites := map[string]bool{}
	for _, n := range s.cfg.State.Nodes() {
		resp.NodeCount++
		if n.GetStatus() == havenv1.NodeStatus_NODE_STATUS_ALIVE {
			resp.AliveNodes++
		}
		sites[n.GetSite()] = true
	}
	for site := range sites {
		resp.Sites = append(resp.Sites, site)
	}
	sort.Strings(resp.Sites)
	resp.GroupCount = uint32(len(s.cfg.State.Groups()))
	if r, k := s.cfg.Leader.KeptReserve(); r != nil {
		resp.ReserveK, resp.ReserveOk, resp.ReserveSummary = uint32(k), r.OK, r.Summary()
	}
	return resp, nil
}
