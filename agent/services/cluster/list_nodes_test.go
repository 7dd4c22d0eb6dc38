package cluster

import (
	"context"
	"testing"

	"github.com/hashicorp/raft"

	"github.com/haven-ha/haven/agent/consensus"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

func TestListNodes(t *testing.T) {
	f := newFixture()
	f.raft.status = consensus.Status{Leader: "n2", Servers: []raft.Server{
		{ID: "n1", Suffrage: raft.Voter},
		{ID: "n2", Suffrage: raft.Voter},
		{ID: "n3", Suffrage: raft.Nonvoter},
	}}
	// n4 joined the FSM but is not (or no longer) in the Raft configuration.
	f.state.nodes = []*havenv1.Node{{Name: "n1"}, {Name: "n2"}, {Name: "n3"}, {Name: "n4"}}
	resp, err := f.svc.ListNodes(context.Background(), &havenv1.ListNodesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	want := []struct {
		name   string
		role   havenv1.RaftRole
		leader bool
	}{
		{"n1", havenv1.RaftRole_RAFT_ROLE_VOTER, false},
		{"n2", havenv1.RaftRole_RAFT_ROLE_VOTER, true},
		{"n3", havenv1.RaftRole_RAFT_ROLE_NONVOTER, false},
		{"n4", havenv1.RaftRole_RAFT_ROLE_NONE, false},
	}
	if len(resp.GetNodes()) != len(want) {
		t.Fatalf("%d nodes, want %d: %v", len(resp.GetNodes()), len(want), resp.GetNodes())
	}
	for i, w := range want {
		n := resp.GetNodes()[i]
		if n.GetNode().GetName() != w.name || n.GetRaftRole() != w.role || n.GetLeader() != w.leader {
			t.Errorf("node %d: %s %v leader=%v, want %s %v leader=%v", i, n.GetNode().GetName(), n.GetRaftRole(), n.GetLeader(), w.name, w.role, w.leader)
		}
	}
}

// Without a leader (an election), no node may be flagged as one.
func TestListNodesNoLeader(t *testing.T) {
	f := newFixture()
	f.raft.status = consensus.Status{Servers: []raft.Server{{ID: "n1", Suffrage: raft.Voter}}}
	f.state.nodes = []*havenv1.Node{{Name: "n1"}}
	resp, err := f.svc.ListNodes(context.Background(), &havenv1.ListNodesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetNodes()[0].GetLeader() {
		t.Errorf("n1 flagged leader while Raft knows none")
	}
}

func TestListNodesReads(t *testing.T) {
	checkReads(t, func(f *fixture, consistent bool) (*havenv1.ReadMeta, error) {
		resp, err := f.svc.ListNodes(context.Background(), &havenv1.ListNodesRequest{Consistent: consistent})
		return resp.GetMeta(), err
	})
}
