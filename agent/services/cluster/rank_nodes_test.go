package cluster

import (
	"context"
	"slices"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/haven-ha/haven/fsm"
	"github.com/haven-ha/haven/placement"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

func TestRankNodes(t *testing.T) {
	f := newFixture()
	f.leader.ranked = []placement.Ranked{
		{Node: "n2", Score: 90, Stars: 5, Feasible: true, KeepsReserve: true, Why: []string{"empty"}},
		{Node: "n3", Score: 60, Stars: 0, Feasible: true, KeepsReserve: false, Why: []string{"breaks the reserve"}},
		{Node: "n1", Score: 0, Stars: 0, Feasible: false, Why: []string{"memory"}},
	}
	f.leader.rankSpec = placement.Spec{K: 1}
	req := &havenv1.RankNodesRequest{
		CpuMillis: 2000, MemoryBytes: 4 << 30, Priority: havenv1.Priority_PRIORITY_HIGH,
		PossibleOwners: []string{"n1", "n2", "n3"}, PreferredOwners: []string{"n2"},
		AntiAffinity:  []*havenv1.AntiAffinity{{Class: "sql", Hard: true}},
		PreferredSite: "west", NodeSelector: map[string]string{"rack": "r1"},
	}
	resp, err := f.svc.RankNodes(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	// The leader must rate the group the operator described, under a
	// name no real group can have.
	s := f.leader.spec
	if s.GetName() != newGroupName || fsm.ValidName(s.GetName()) {
		t.Errorf("ranked as %q: want a name no group can have", s.GetName())
	}
	if s.GetCpuMillis() != 2000 || s.GetMemoryBytes() != 4<<30 || s.GetPriority() != havenv1.Priority_PRIORITY_HIGH ||
		!slices.Equal(s.GetPossibleOwners(), req.PossibleOwners) || !slices.Equal(s.GetPreferredOwners(), req.PreferredOwners) ||
		len(s.GetAntiAffinity()) != 1 || !s.GetAntiAffinity()[0].GetHard() || s.GetPreferredSite() != "west" || s.GetNodeSelector()["rack"] != "r1" {
		t.Errorf("leader ranked spec %v: want every constraint of the request", s)
	}
	if resp.GetReserveK() != 1 || len(resp.GetNodes()) != 3 {
		t.Fatalf("reserve k %d, %d nodes: want 1, 3", resp.GetReserveK(), len(resp.GetNodes()))
	}
	for i, want := range []struct {
		node         string
		score, stars int32
		feasible     bool
		keeps        bool
	}{
		{"n2", 90, 5, true, true},
		{"n3", 60, 0, true, false},
		{"n1", 0, 0, false, false},
	} {
		n := resp.GetNodes()[i]
		if n.GetNode() != want.node || n.GetScore() != want.score || n.GetStars() != want.stars || n.GetFeasible() != want.feasible || n.GetKeepsReserve() != want.keeps {
			t.Errorf("node %d: %v, want %+v", i, n, want)
		}
	}
	if !slices.Equal(resp.GetNodes()[1].GetWhy(), []string{"breaks the reserve"}) {
		t.Errorf("n3 why %v, want the leader's reasons", resp.GetNodes()[1].GetWhy())
	}
}

// With no reserve kept (k = 0) nothing was checked against one, and there
// is none to break: every node the group fits on keeps it.
func TestRankNodesNoReserve(t *testing.T) {
	f := newFixture()
	f.leader.ranked = []placement.Ranked{
		{Node: "n2", Score: 90, Stars: 5, Feasible: true},
		{Node: "n1", Feasible: false},
	}
	resp, err := f.svc.RankNodes(context.Background(), &havenv1.RankNodesRequest{CpuMillis: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetReserveK() != 0 || !resp.GetNodes()[0].GetKeepsReserve() || resp.GetNodes()[1].GetKeepsReserve() {
		t.Errorf("k = 0: reserve k %d, n2 keeps %v, n1 keeps %v: want 0, true (feasible), false (not)",
			resp.GetReserveK(), resp.GetNodes()[0].GetKeepsReserve(), resp.GetNodes()[1].GetKeepsReserve())
	}
}

func TestRankNodesInvalid(t *testing.T) {
	base := func(edit func(*havenv1.RankNodesRequest)) *havenv1.RankNodesRequest {
		r := &havenv1.RankNodesRequest{CpuMillis: 1000, MemoryBytes: 1 << 30}
		edit(r)
		return r
	}
	for _, c := range []struct {
		req *havenv1.RankNodesRequest
		msg string
	}{
		{base(func(r *havenv1.RankNodesRequest) { r.CpuMillis = -1 }), "cpu_millis: -1 is outside 0..1024000"},
		{base(func(r *havenv1.RankNodesRequest) { r.CpuMillis = fsm.MaxCPUMillis + 1 }), "cpu_millis: 1024001 is outside"},
		{base(func(r *havenv1.RankNodesRequest) { r.MemoryBytes = -1 }), "memory_bytes: -1 is outside"},
		{base(func(r *havenv1.RankNodesRequest) { r.MemoryBytes = fsm.MaxMemoryBytes + 1 }), "memory_bytes: 70368744177665 is outside 0..70368744177664 (64 TiB)"},
		{base(func(r *havenv1.RankNodesRequest) { r.CpuMillis, r.MemoryBytes = 0, 0 }), "cpu_millis, memory_bytes: give the demand"},
		{base(func(r *havenv1.RankNodesRequest) { r.Priority = 99 }), "priority: 99 is not a known priority"},
		{base(func(r *havenv1.RankNodesRequest) { r.PossibleOwners = []string{"n1", "N2"} }), `possible_owners[1]: "N2" is not a valid node name`},
		{base(func(r *havenv1.RankNodesRequest) { r.PreferredOwners = []string{""} }), `preferred_owners[0]: "" is not a valid node name`},
		{base(func(r *havenv1.RankNodesRequest) { r.AntiAffinity = []*havenv1.AntiAffinity{{Class: "SQL"}} }), `anti_affinity[0].class: "SQL" is not a valid class name`},
		{base(func(r *havenv1.RankNodesRequest) {
			r.AntiAffinity = []*havenv1.AntiAffinity{{Class: "sql"}, {Class: "web"}, {Class: "sql", Hard: true}}
		}), `anti_affinity[2].class: "sql" is listed twice`},
		{base(func(r *havenv1.RankNodesRequest) { r.PreferredSite = "West Wing" }), `preferred_site: "West Wing" is not a valid site name`},
		{base(func(r *havenv1.RankNodesRequest) { r.NodeSelector = map[string]string{"rack": "r 1"} }), "node_selector:"},
	} {
		f := newFixture()
		_, err := f.svc.RankNodes(context.Background(), c.req)
		wantStatus(t, err, codes.InvalidArgument, c.msg)
		if len(f.leader.calls) != 0 {
			t.Errorf("invalid request (%s) reached the leader", c.msg)
		}
	}
	// A demand of only CPU or only memory is a demand.
	for _, req := range []*havenv1.RankNodesRequest{{CpuMillis: 1}, {MemoryBytes: 1}} {
		if _, err := newFixture().svc.RankNodes(context.Background(), req); err != nil {
			t.Errorf("RankNodes(%v) = %v", req, err)
		}
	}
}

// The same wrong request gets the same answer every time, naming the
// fields in the order the group spec's checks do.
func TestRankNodesInvalidStable(t *testing.T) {
	req := &havenv1.RankNodesRequest{CpuMillis: 1000, PossibleOwners: []string{"Bad1"}, PreferredOwners: []string{"Bad2"}}
	for range 100 {
		_, err := newFixture().svc.RankNodes(context.Background(), req)
		if msg := status.Convert(err).Message(); msg != `possible_owners[0]: "Bad1" is not a valid node name` {
			t.Fatalf("RankNodes with two bad owner lists = %q: want possible_owners named, every time", msg)
		}
	}
}

func TestRankNodesLeaderErrors(t *testing.T) {
	checkLeaderErrors(t, func(f *fixture) error {
		_, err := f.svc.RankNodes(context.Background(), &havenv1.RankNodesRequest{CpuMillis: 1000})
		return err
	})
}
