package cluster

import (
	"context"

	"github.com/haven-ha/haven/agent/services"
	"github.com/haven-ha/haven/fsm"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// newGroupName names the group RankNodes rates. It is not a valid group
// name, so it can never be mistaken for (and taken off the node of) a
// real one.
const newGroupName = "(new group)"

// RankNodes rates every node for a group of the given demand and
// constraints, as placement would place it with the reserve kept.
func (s *Service) RankNodes(_ context.Context, req *havenv1.RankNodesRequest) (*havenv1.RankNodesResponse, error) {
	if err := checkRankRequest(req); err != nil {
		return nil, err
	}
	ranked, kept, err := s.cfg.Leader.Rank(rankSpec(req))
	if err != nil {
		return nil, s.status(err)
	}
	resp := &havenv1.RankNodesResponse{ReserveK: uint32(kept.K)}
	for _, r := range ranked {
		resp.Nodes = append(resp.Nodes, &havenv1.RankedNode{
			Node: r.Node, Score: int32(r.Score), Stars: int32(r.Stars), Feasible: r.Feasible,
			KeepsReserve: r.KeepsReserve || (!kept.On() && r.Feasible), Why: r.Why,
		})
	}
	return resp, nil
}

// rankSpec is the group RankNodes rates: every constraint of the request
// binds it as it would bind a group created with them.
func rankSpec(req *havenv1.RankNodesRequest) *havenv1.GroupSpec {
	return &havenv1.GroupSpec{
		Name: newGroupName, CpuMillis: req.GetCpuMillis(), MemoryBytes: req.GetMemoryBytes(), Priority: req.GetPriority(),
		PossibleOwners: req.GetPossibleOwners(), PreferredOwners: req.GetPreferredOwners(),
		AntiAffinity: req.GetAntiAffinity(), PreferredSite: req.GetPreferredSite(), NodeSelector: req.GetNodeSelector(),
	}
}

// checkRankRequest checks each field RankNodes is asked about as the group
// spec checks it (ranges, names, selectors, one class each); a question
// need not be a group that could be created (no owner count limits, and
// preferred owners need not be possible ones), so the spec's rules that
// relate fields to each other are left out.
func checkRankRequest(req *havenv1.RankNodesRequest) error {
	invalid := services.Invalid
	switch {
	case req.GetCpuMillis() < 0 || req.GetCpuMillis() > fsm.MaxCPUMillis:
		return invalid("cpu_millis: %d is outside 0..%d", req.GetCpuMillis(), fsm.MaxCPUMillis)
	case req.GetMemoryBytes() < 0 || req.GetMemoryBytes() > fsm.MaxMemoryBytes:
		return invalid("memory_bytes: %d is outside 0..%d (64 TiB)", req.GetMemoryBytes(), int64(fsm.MaxMemoryBytes))
	case req.GetCpuMillis() == 0 && req.GetMemoryBytes() == 0:
		return invalid("cpu_millis, memory_bytes: give the demand to rank nodes for")
	}
	if _, ok := havenv1.Priority_name[int32(req.GetPriority())]; !ok {
		return invalid("priority: %d is not a known priority", req.GetPriority())
	}
	// A slice, not a map: the same request must name the same field.
	for _, owners := range []struct {
		field string
		names []string
	}{{"possible_owners", req.GetPossibleOwners()}, {"preferred_owners", req.GetPreferredOwners()}} {
		for i, n := range owners.names {
			if !fsm.ValidName(n) {
				return invalid("%s[%d]: %q is not a valid node name", owners.field, i, n)
			}
		}
	}
	seen := map[string]bool{}
	for i, aa := range req.GetAntiAffinity() {
		if !fsm.ValidName(aa.GetClass()) {
			return invalid("anti_affinity[%d].class: %q is not a valid class name", i, aa.GetClass())
		}
		if seen[aa.GetClass()] {
			return invalid("anti_affinity[%d].class: %q is listed twice", i, aa.GetClass())
		}
		seen[aa.GetClass()] = true
	}
	if s := req.GetPreferredSite(); s != "" && !fsm.ValidName(s) {
		return invalid("preferred_site: %q is not a valid site name", s)
	}
	if err := fsm.ValidateNodeSelector(req.GetNodeSelector()); err != nil {
		return invalid("%v", err)
	}
	return nil
}
