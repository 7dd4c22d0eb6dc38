package node

import (
	"context"
	"testing"

	"github.com/hashicorp/raft"

	"github.com/haven-ha/haven/agent/consensus"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// A bootstrapping peer decides by these fields whether a cluster already
// exists: a wrong answer means two clusters.
func TestGetRaftStatus(t *testing.T) {
	f := newFixture(t, nil, false)
	f.raft.hasState = true
	f.raft.status = consensus.Status{Leader: "n2", Servers: []raft.Server{{ID: "n1"}, {ID: "n2"}, {ID: "n3", Suffrage: raft.Nonvoter}}}
	resp, err := f.svc.GetRaftStatus(context.Background(), &havenv1.GetRaftStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if !resp.GetHasState() || resp.GetPeers() != 3 || resp.GetLeader() != "n2" {
		t.Errorf("has state %v, peers %d, leader %q: want true, 3, n2", resp.GetHasState(), resp.GetPeers(), resp.GetLeader())
	}

	f = newFixture(t, nil, false)
	resp, err = f.svc.GetRaftStatus(context.Background(), &havenv1.GetRaftStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetHasState() || resp.GetPeers() != 0 || resp.GetLeader() != "" {
		t.Errorf("fresh node: has state %v, peers %d, leader %q: want false, 0, none", resp.GetHasState(), resp.GetPeers(), resp.GetLeader())
	}
}
