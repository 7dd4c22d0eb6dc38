package cluster

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/hashicorp/raft"

	"github.com/haven-ha/haven/agent/consensus"
	"github.com/haven-ha/haven/heartbeat"
	"github.com/haven-ha/haven/placement"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

func TestGetStatus(t *testing.T) {
	f := newFixture()
	f.raft.status = consensus.Status{
		State: "Follower", Term: 7, CommitIndex: 120, AppliedIndex: 118, Leader: "n2",
		Servers: []raft.Server{
			{ID: "n1", Suffrage: raft.Voter},
			{ID: "n2", Suffrage: raft.Voter},
			{ID: "n3", Suffrage: raft.Voter},    // gossip says dead
			{ID: "n4", Suffrage: raft.Voter},    // unknown to gossip
			{ID: "n5", Suffrage: raft.Nonvoter}, // alive, but does not vote
			{ID: "n6", Suffrage: raft.Staging},
		},
	}
	f.members.m = []heartbeat.Member{
		{Name: "n1", State: heartbeat.StateAlive},
		{Name: "n2", State: heartbeat.StateAlive},
		{Name: "n3", State: heartbeat.StateDead},
		{Name: "n5", State: heartbeat.StateAlive},
	}
	alive, failed := havenv1.NodeStatus_NODE_STATUS_ALIVE, havenv1.NodeStatus_NODE_STATUS_FAILED
	f.state.nodes = []*havenv1.Node{
		{Name: "n1", Site: "west", Status: alive},
		{Name: "n2", Site: "east", Status: alive},
		{Name: "n3", Site: "north", Status: failed},
		{Name: "n5", Site: "west", Status: alive},
	}
	f.state.groups = []*havenv1.Group{{Spec: &havenv1.GroupSpec{Name: "a"}}, {Spec: &havenv1.GroupSpec{Name: "b"}}}
	f.leader.kept = &placement.Reserve{K: 1, OK: true, Method: placement.MethodEnumerated, FailureSets: 4, WorstFailure: []string{"n2"}}
	f.leader.keptK = 1

	resp, err := f.svc.GetStatus(context.Background(), &havenv1.GetStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetNode() != "n1" || resp.GetLeader() != "n2" || resp.GetLeaderAddr() != "10.0.0.2:7443" {
		t.Errorf("node %q, leader %q at %q: want n1, n2 at 10.0.0.2:7443", resp.GetNode(), resp.GetLeader(), resp.GetLeaderAddr())
	}
	if resp.GetRaftState() != "Follower" || resp.GetTerm() != 7 || resp.GetCommitIndex() != 120 || resp.GetAppliedIndex() != 118 {
		t.Errorf("raft %q term %d commit %d applied %d: want Follower 7 120 118",
			resp.GetRaftState(), resp.GetTerm(), resp.GetCommitIndex(), resp.GetAppliedIndex())
	}
	// Four voters need three votes, and only two of them are alive: the
	// operator must be able to read that the cluster has lost quorum.
	if resp.GetVoters() != 4 || resp.GetAliveVoters() != 2 || resp.GetNonvoters() != 2 || resp.GetQuorumSize() != 3 {
		t.Errorf("voters %d (alive %d), non-voters %d, quorum %d: want 4 (2), 2, 3",
			resp.GetVoters(), resp.GetAliveVoters(), resp.GetNonvoters(), resp.GetQuorumSize())
	}
	if resp.GetNodeCount() != 4 || resp.GetAliveNodes() != 3 || resp.GetGroupCount() != 2 {
		t.Errorf("nodes %d (alive %d), groups %d: want 4 (3), 2", resp.GetNodeCount(), resp.GetAliveNodes(), resp.GetGroupCount())
	}
	if !slices.Equal(resp.GetSites(), []string{"east", "north", "west"}) {
		t.Errorf("sites %q: want each once, sorted: [east north west]", resp.GetSites())
	}
	if resp.GetReserveK() != 1 || !resp.GetReserveOk() || resp.GetReserveSummary() != f.leader.kept.Summary() {
		t.Errorf("reserve k %d ok %v %q: want 1, true, %q", resp.GetReserveK(), resp.GetReserveOk(), resp.GetReserveSummary(), f.leader.kept.Summary())
	}
}

// GetStatus is what an operator runs when the cluster is in trouble: it
// must answer without a leader and without a kept reserve.
func TestGetStatusWithoutLeader(t *testing.T) {
	f := newFixture()
	f.locateErr = errors.New("no leader known")
	f.raft.status = consensus.Status{State: "Candidate", Term: 9}
	resp, err := f.svc.GetStatus(context.Background(), &havenv1.GetStatusRequest{})
	if err != nil {
		t.Fatalf("GetStatus without a leader: %v", err)
	}
	if resp.GetLeader() != "" || resp.GetLeaderAddr() != "" || resp.GetRaftState() != "Candidate" {
		t.Errorf("leader %q at %q, state %q: want none, Candidate", resp.GetLeader(), resp.GetLeaderAddr(), resp.GetRaftState())
	}
	if resp.GetReserveK() != 0 || resp.GetReserveOk() || resp.GetReserveSummary() != "" {
		t.Errorf("no reserve kept, but reported k %d ok %v %q", resp.GetReserveK(), resp.GetReserveOk(), resp.GetReserveSummary())
	}
}
