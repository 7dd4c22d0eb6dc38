package cluster

import (
	"context"
	"sort"

	"github.com/hashicorp/raft"

	"github.com/haven-ha/haven/fsm"
	"github.com/haven-ha/haven/heartbeat"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
	"github.com/haven-ha/haven/quorum"
)

// GetStatus answers from this node's own view: its Raft state, the voters
// gossip sees alive, the FSM's nodes and groups, the kept reserve, and all
// of it per site.
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
	sites := map[string]*havenv1.SiteSummary{}
	siteOf := map[string]string{}
	for _, n := range s.cfg.State.Nodes() {
		resp.NodeCount++
		ss := sites[n.GetSite()]
		if ss == nil {
			ss = &havenv1.SiteSummary{Name: n.GetSite(), WitnessOnly: true}
			sites[n.GetSite()] = ss
		}
		siteOf[n.GetName()] = n.GetSite()
		ss.NodeCount++
		if n.GetStatus() == havenv1.NodeStatus_NODE_STATUS_ALIVE {
			resp.AliveNodes++
			ss.AliveNodes++
		}
		ss.WitnessOnly = ss.WitnessOnly && n.GetWitness()
	}
	for site := range sites {
		resp.Sites = append(resp.Sites, site)
	}
	sort.Strings(resp.Sites)
	for _, srv := range rs.Servers {
		if ss := sites[siteOf[string(srv.ID)]]; ss != nil && srv.Suffrage == raft.Voter {
			ss.Voters++
		}
	}
	if ss := sites[siteOf[resp.Leader]]; ss != nil && resp.Leader != "" {
		ss.Leader = true
	}
	// Counted in the FSM's order, without the sorted copy of every group
	// that Groups makes.
	s.cfg.State.GroupsAfter("", func(g *havenv1.Group) bool {
		resp.GroupCount++
		if ss := sites[siteOf[g.GetOwner()]]; ss != nil && g.GetOwner() != "" && fsm.Active(g.GetState()) {
			ss.GroupsRunning++
		}
		return true
	})
	rep := s.cfg.Leader.KeptReserve()
	resp.ConfiguredReserveSites = uint32(rep.ConfiguredSites)
	if r := rep.Reserve; r != nil {
		resp.ReserveK, resp.ReserveOk, resp.ReserveSummary = uint32(rep.Kept), r.OK, r.Summary()
		resp.ReserveSites = uint32(rep.KeptSites)
	}
	for _, name := range resp.Sites {
		ss := sites[name]
		ss.Reserve = havenv1.SiteReserveState_SITE_RESERVE_STATE_OFF
		if r := rep.Reserve; r != nil && r.SiteLoss && !ss.WitnessOnly {
			if sr, ok := r.Site(name); ok {
				ss.Reserve = havenv1.SiteReserveState_SITE_RESERVE_STATE_HOLDS
				if !sr.OK {
					ss.Reserve = havenv1.SiteReserveState_SITE_RESERVE_STATE_BROKEN
					ss.ReserveBreach = sr.Breach.String()
				}
			}
		}
		resp.SiteSummaries = append(resp.SiteSummaries, ss)
	}
	return resp, nil
}
