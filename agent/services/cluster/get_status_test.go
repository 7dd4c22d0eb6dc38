package cluster

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/hashicorp/raft"

	"github.com/haven-ha/haven/agent/consensus"
	"github.com/haven-ha/haven/agent/leader"
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
	f.leader.kept = leader.ReserveReport{Reserve: &placement.Reserve{K: 1, OK: true, Method: placement.MethodEnumerated, FailureSets: 4, WorstFailure: []string{"n2"}}, Kept: 1, Configured: 1}

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

// The per-site summary: who lives where, who votes and leads there, what
// runs there, and whether the site-loss reserve holds for each site.
func TestGetStatusSites(t *testing.T) {
	f := newFixture()
	f.raft.status = consensus.Status{
		State: "Follower", Leader: "n2",
		Servers: []raft.Server{
			{ID: "a1", Suffrage: raft.Voter}, {ID: "a2", Suffrage: raft.Voter},
			{ID: "b1", Suffrage: raft.Voter}, {ID: "b2", Suffrage: raft.Nonvoter},
			{ID: "w1", Suffrage: raft.Voter},
		},
	}
	f.located = [2]string{"b1", "10.0.1.1:7443"}
	alive, failed := havenv1.NodeStatus_NODE_STATUS_ALIVE, havenv1.NodeStatus_NODE_STATUS_FAILED
	f.state.nodes = []*havenv1.Node{
		{Name: "a1", Site: "A", Status: alive}, {Name: "a2", Site: "A", Status: failed},
		{Name: "b1", Site: "B", Status: alive}, {Name: "b2", Site: "B", Status: alive},
		{Name: "w1", Site: "W", Status: alive, Witness: true},
	}
	online, offline := havenv1.GroupState_GROUP_STATE_ONLINE, havenv1.GroupState_GROUP_STATE_OFFLINE
	f.state.groups = []*havenv1.Group{
		{Spec: &havenv1.GroupSpec{Name: "x"}, Owner: "a1", State: online},
		{Spec: &havenv1.GroupSpec{Name: "y"}, Owner: "b1", State: online},
		{Spec: &havenv1.GroupSpec{Name: "z"}, Owner: "b2", State: havenv1.GroupState_GROUP_STATE_STARTING},
		{Spec: &havenv1.GroupSpec{Name: "off"}, Owner: "b2", State: offline},
		{Spec: &havenv1.GroupSpec{Name: "new"}},
	}
	breach := &placement.Breach{Failed: []string{"b1", "b2"}, Site: "B", Group: "y", Reason: "memory: needs 8.0 GiB"}
	f.leader.kept = leader.ReserveReport{
		Reserve: &placement.Reserve{K: 1, SiteLoss: true, OK: false, Breach: breach, Sites: []placement.SiteReserve{
			{Site: "A", Failed: []string{"a1"}, OK: true},
			{Site: "B", Failed: []string{"b1", "b2"}, Breach: breach},
		}},
		Kept: 1, Configured: 1, KeptSites: 1, ConfiguredSites: 1,
	}
	resp, err := f.svc.GetStatus(context.Background(), &havenv1.GetStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetReserveSites() != 1 || resp.GetConfiguredReserveSites() != 1 || resp.GetReserveOk() {
		t.Errorf("reserve sites %d (configured %d), ok %v: want 1 (1), false", resp.GetReserveSites(), resp.GetConfiguredReserveSites(), resp.GetReserveOk())
	}
	type site struct {
		name                 string
		nodes, alive, voters uint32
		leader, witness      bool
		running              uint32
		reserve              havenv1.SiteReserveState
		breach               string
	}
	var got []site
	for _, s := range resp.GetSiteSummaries() {
		got = append(got, site{s.GetName(), s.GetNodeCount(), s.GetAliveNodes(), s.GetVoters(), s.GetLeader(), s.GetWitnessOnly(), s.GetGroupsRunning(), s.GetReserve(), s.GetReserveBreach()})
	}
	holds, broken, off := havenv1.SiteReserveState_SITE_RESERVE_STATE_HOLDS, havenv1.SiteReserveState_SITE_RESERVE_STATE_BROKEN, havenv1.SiteReserveState_SITE_RESERVE_STATE_OFF
	want := []site{
		{"A", 2, 1, 2, false, false, 1, holds, ""},
		{"B", 2, 2, 1, true, false, 2, broken, breach.String()},
		{"W", 1, 1, 1, false, true, 0, off, ""},
	}
	if !slices.Equal(got, want) {
		t.Errorf("sites\n got %+v\nwant %+v", got, want)
	}
	if !slices.Equal(resp.GetSites(), []string{"A", "B", "W"}) {
		t.Errorf("sites %q: want [A B W]", resp.GetSites())
	}

	// Without the site-loss reserve every site reads off.
	f.leader.kept = leader.ReserveReport{Reserve: &placement.Reserve{K: 1, OK: true}, Kept: 1, Configured: 1, ConfiguredSites: 1}
	resp, err = f.svc.GetStatus(context.Background(), &havenv1.GetStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range resp.GetSiteSummaries() {
		if s.GetReserve() != off {
			t.Errorf("site %s: reserve %v with the site-loss reserve not kept", s.GetName(), s.GetReserve())
		}
	}
	if resp.GetReserveSites() != 0 || resp.GetConfiguredReserveSites() != 1 {
		t.Errorf("reserve sites %d (configured %d): want 0 (1): configured but not kept", resp.GetReserveSites(), resp.GetConfiguredReserveSites())
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
