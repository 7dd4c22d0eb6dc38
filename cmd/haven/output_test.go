package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

func testNodes() *havenv1.ListNodesResponse {
	node := func(name, site string, n int, status havenv1.NodeStatus, cpu, mem int64) *havenv1.Node {
		ip := "10.0." + site[len(site)-1:] + "." + string(rune('0'+n))
		return &havenv1.Node{
			Name: name, Site: site, Status: status,
			GossipAddr: ip + ":7947", RaftAddr: ip + ":7948", GrpcAddr: ip + ":7949",
			Capacity: &havenv1.Capacity{CpuMillis: cpu, MemoryBytes: mem},
		}
	}
	// Deliberately out of order: the table sorts by site, then name.
	return &havenv1.ListNodesResponse{Nodes: []*havenv1.NodeInfo{
		{Node: node("b1", "site2", 1, havenv1.NodeStatus_NODE_STATUS_FAILED, 16000, 64<<30), RaftRole: havenv1.RaftRole_RAFT_ROLE_VOTER},
		{Node: node("a2", "site1", 2, havenv1.NodeStatus_NODE_STATUS_ALIVE, 2500, 8_372_957_184), RaftRole: havenv1.RaftRole_RAFT_ROLE_NONVOTER},
		{Node: node("a1", "site1", 1, havenv1.NodeStatus_NODE_STATUS_ALIVE, 8000, 32<<30), RaftRole: havenv1.RaftRole_RAFT_ROLE_VOTER, Leader: true},
		{Node: &havenv1.Node{Name: "w1", Site: "site3", Witness: true, Status: havenv1.NodeStatus_NODE_STATUS_ALIVE}, RaftRole: havenv1.RaftRole_RAFT_ROLE_VOTER},
		{Node: &havenv1.Node{Name: "new", Site: "site3"}, RaftRole: havenv1.RaftRole_RAFT_ROLE_NONE},
		{Node: node("a3", "site1", 3, havenv1.NodeStatus_NODE_STATUS_ALIVE, 8000, 32<<30), RaftRole: havenv1.RaftRole_RAFT_ROLE_NONE},
	}}
}

func TestWriteNodesTable(t *testing.T) {
	var b bytes.Buffer
	if err := writeNodesTable(&b, testNodes()); err != nil {
		t.Fatal(err)
	}
	want := `NAME  SITE   STATUS   ROLE             GOSSIP         RAFT           GRPC           CPU    MEMORY
a1    site1  alive    voter (leader)   10.0.1.1:7947  10.0.1.1:7948  10.0.1.1:7949  8      32GiB
a2    site1  alive    nonvoter         10.0.1.2:7947  10.0.1.2:7948  10.0.1.2:7949  2500m  7.8GiB
a3    site1  alive    log follower     10.0.1.3:7947  10.0.1.3:7948  10.0.1.3:7949  8      32GiB
b1    site2  failed   voter            10.0.2.1:7947  10.0.2.1:7948  10.0.2.1:7949  16     64GiB
new   site3  unknown  none             -              -              -              0      0B
w1    site3  alive    voter (witness)  -              -              -              0      0B
`
	if got := b.String(); got != want {
		t.Errorf("members table:\n%s\nwant:\n%s", got, want)
	}
}

func TestWriteNodesJSON(t *testing.T) {
	resp := &havenv1.ListNodesResponse{Nodes: testNodes().Nodes[2:3]}
	var b bytes.Buffer
	if err := writeJSON(&b, resp); err != nil {
		t.Fatal(err)
	}
	want := `{
  "nodes": [
    {
      "node": {
        "name": "a1",
        "site": "site1",
        "gossipAddr": "10.0.1.1:7947",
        "raftAddr": "10.0.1.1:7948",
        "grpcAddr": "10.0.1.1:7949",
        "capacity": {
          "cpuMillis": "8000",
          "memoryBytes": "34359738368"
        },
        "status": "NODE_STATUS_ALIVE"
      },
      "raftRole": "RAFT_ROLE_VOTER",
      "leader": true
    }
  ]
}
`
	if got := b.String(); got != want {
		t.Errorf("members json:\n%s\nwant:\n%s", got, want)
	}
}

func testGroups() []*havenv1.Group {
	o := defaultVMOptions()
	o.vcpus, o.memoryBytes = 2, 1<<30
	web := standardGroupSpec("web", o)
	web.Priority = havenv1.Priority_PRIORITY_HIGH
	web.Labels = map[string]string{"tier": "web", "env": "prod"}
	web.PreferredOwners = []string{"a1", "a2"}
	return []*havenv1.Group{
		{Spec: web, State: havenv1.GroupState_GROUP_STATE_ONLINE, Owner: "a1", Epoch: 3,
			CreateTime: timestamppb.New(time.Date(2026, 11, 25, 8, 0, 0, 0, time.UTC))},
		// Explicit demand wins over what the VMs add up to.
		{Spec: &havenv1.GroupSpec{Name: "big", CpuMillis: 1500, MemoryBytes: 3 << 30}, State: havenv1.GroupState_GROUP_STATE_FAILED, StateReason: "no node fits"},
		{Spec: standardGroupSpec("demo", defaultVMOptions()), State: havenv1.GroupState_GROUP_STATE_OFFLINE},
	}
}

func TestWriteGroupsTable(t *testing.T) {
	var b bytes.Buffer
	if err := writeGroupsTable(&b, testGroups()); err != nil {
		t.Fatal(err)
	}
	want := `NAME  DESIRED  STATE    OWNER  EPOCH  PRIORITY  CPU    MEMORY  RESOURCES
big   run      failed   -      0      medium    1500m  3GiB    -
demo  stopped  offline  -      0      medium    1      512MiB  config,disk0,vm
web   run      online   a1     3      high      2      1GiB    config,disk0,vm
`
	if got := b.String(); got != want {
		t.Errorf("groups table:\n%s\nwant:\n%s", got, want)
	}
}

func TestWriteGroupsJSON(t *testing.T) {
	resp := &havenv1.ListGroupsResponse{Groups: []*havenv1.Group{
		{Spec: &havenv1.GroupSpec{Name: "big", CpuMillis: 1500, Labels: map[string]string{"z": "1", "a": "2"}}, State: havenv1.GroupState_GROUP_STATE_ONLINE, Owner: "a1", Epoch: 3},
	}}
	var b bytes.Buffer
	if err := writeJSON(&b, resp); err != nil {
		t.Fatal(err)
	}
	want := `{
  "groups": [
    {
      "spec": {
        "name": "big",
        "cpuMillis": "1500",
        "labels": {
          "a": "2",
          "z": "1"
        }
      },
      "state": "GROUP_STATE_ONLINE",
      "owner": "a1",
      "epoch": "3"
    }
  ]
}
`
	if got := b.String(); got != want {
		t.Errorf("groups json:\n%s\nwant:\n%s", got, want)
	}
	b.Reset()
	if err := writeJSON(&b, &havenv1.ListGroupsResponse{}); err != nil || b.String() != "{}\n" {
		t.Errorf("empty list: %q, %v; want {}", b.String(), err)
	}
}

func TestWriteGroupDetail(t *testing.T) {
	var b bytes.Buffer
	if err := writeGroupDetail(&b, testGroups()[0]); err != nil {
		t.Fatal(err)
	}
	want := `Name:              web
Desired:           run
State:             online
Owner:             a1
Epoch:             3
Priority:          high
CPU:               2
Memory:            1GiB
Preferred owners:  a1, a2
Labels:            env=prod, tier=web
Created:           2026-11-25T08:00:00Z

RESOURCE  KIND    DEPENDS ON    DETAILS
config    config  -             -
disk0     disk    -             path=web/disk0.img size=1GiB slot=0
vm        vm      config,disk0  vcpus=2 memory=1GiB
`
	if got := b.String(); got != want {
		t.Errorf("group detail:\n%s\nwant:\n%s", got, want)
	}
	b.Reset()
	if err := writeGroupDetail(&b, testGroups()[1]); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "Reason:    no node fits\n") {
		t.Errorf("failed group detail lacks its reason:\n%s", b.String())
	}
}

// stretchStatus is two sites of two and a witness, with the site-loss
// reserve kept and broken for site b.
func stretchStatus() *havenv1.GetStatusResponse {
	holds, broken, off := havenv1.SiteReserveState_SITE_RESERVE_STATE_HOLDS, havenv1.SiteReserveState_SITE_RESERVE_STATE_BROKEN, havenv1.SiteReserveState_SITE_RESERVE_STATE_OFF
	breach := `if site b fails (b1,b2), group "db" cannot restart: memory: needs 8.0 GiB, at most 2.0 GiB free (node a1) on a1,a2; failed: b1,b2`
	return &havenv1.GetStatusResponse{
		Node: "a1", Leader: "a1", LeaderAddr: "10.0.1.1:7949", RaftState: "Leader",
		Term: 2, CommitIndex: 80, AppliedIndex: 80,
		Voters: 5, QuorumSize: 3, AliveVoters: 5,
		NodeCount: 5, AliveNodes: 5, GroupCount: 6, Sites: []string{"a", "b", "w"},
		ReserveK: 1, ReserveOk: false, ReserveSites: 1, ConfiguredReserveSites: 1,
		ReserveSummary: "can sustain 1 failure(s) and the loss of any one site: no (enumerated; 1 of 6 sets broken): " + breach,
		SiteSummaries: []*havenv1.SiteSummary{
			{Name: "a", NodeCount: 2, AliveNodes: 2, Voters: 2, Leader: true, GroupsRunning: 4, Reserve: holds},
			{Name: "b", NodeCount: 2, AliveNodes: 2, Voters: 2, GroupsRunning: 2, Reserve: broken, ReserveBreach: breach},
			{Name: "w", NodeCount: 1, AliveNodes: 1, Voters: 1, WitnessOnly: true, Reserve: off},
		},
	}
}

func TestWriteStatusSites(t *testing.T) {
	var b bytes.Buffer
	if err := writeStatus(&b, stretchStatus()); err != nil {
		t.Fatal(err)
	}
	want := `Node:               a1
Leader:             a1 (10.0.1.1:7949)
Raft state:         Leader
Term:               2
Commit index:       80
Applied index:      80
Voters:             5
Nonvoters:          0
Quorum size:        3
Alive voters:       5
Nodes:              5 alive / 5 total
Groups:             6
Reserve:            can sustain 1 failure(s) and the loss of any one site: no (enumerated; 1 of 6 sets broken): if site b fails (b1,b2), group "db" cannot restart: memory: needs 8.0 GiB, at most 2.0 GiB free (node a1) on a1,a2; failed: b1,b2
Site-loss reserve:  on (placement.reserve_sites 1): every HA group must survive the loss of any one site

SITE  KIND     NODES  VOTERS  LEADER  RUNNING  SITE LOSS
a     data     2/2    2       yes     4        holds
b     data     2/2    2       -       2        broken
w     witness  1/1    1       -       0        -
if site b fails (b1,b2), group "db" cannot restart: memory: needs 8.0 GiB, at most 2.0 GiB free (node a1) on a1,a2; failed: b1,b2
`
	if got := b.String(); got != want {
		t.Errorf("status:\n%s\nwant:\n%s", got, want)
	}

	// Asked for, but one site hosts groups: the operator reads why it is
	// not kept.
	s := stretchStatus()
	s.ReserveSites, s.ReserveSummary = 0, "can sustain 1 failure(s): yes"
	for _, ss := range s.SiteSummaries {
		ss.Reserve, ss.ReserveBreach = havenv1.SiteReserveState_SITE_RESERVE_STATE_OFF, ""
	}
	b.Reset()
	if err := writeStatus(&b, s); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "Site-loss reserve:  not kept: placement.reserve_sites is 1, but fewer than two sites host groups\n") {
		t.Errorf("status with reserve_sites not kept:\n%s", b.String())
	}
}

func TestWriteStatusJSON(t *testing.T) {
	s := stretchStatus()
	s.SiteSummaries = s.SiteSummaries[1:2]
	s.ReserveSummary = "no"
	var b bytes.Buffer
	if err := writeJSON(&b, s); err != nil {
		t.Fatal(err)
	}
	want := `{
  "node": "a1",
  "leader": "a1",
  "leaderAddr": "10.0.1.1:7949",
  "raftState": "Leader",
  "term": "2",
  "commitIndex": "80",
  "appliedIndex": "80",
  "voters": 5,
  "quorumSize": 3,
  "aliveVoters": 5,
  "nodeCount": 5,
  "aliveNodes": 5,
  "groupCount": 6,
  "sites": [
    "a",
    "b",
    "w"
  ],
  "reserveK": 1,
  "reserveSummary": "no",
  "reserveSites": 1,
  "configuredReserveSites": 1,
  "siteSummaries": [
    {
      "name": "b",
      "nodeCount": 2,
      "aliveNodes": 2,
      "voters": 2,
      "groupsRunning": 2,
      "reserve": "SITE_RESERVE_STATE_BROKEN",
      "reserveBreach": "if site b fails (b1,b2), group \"db\" cannot restart: memory: needs 8.0 GiB, at most 2.0 GiB free (node a1) on a1,a2; failed: b1,b2"
    }
  ]
}
`
	if got := b.String(); got != want {
		t.Errorf("status json:\n%s\nwant:\n%s", got, want)
	}
}

// An agent from before the per-site summary sends the sites as a list.
func TestWriteStatus(t *testing.T) {
	var b bytes.Buffer
	err := writeStatus(&b, &havenv1.GetStatusResponse{
		Node: "a2", Leader: "a1", LeaderAddr: "10.0.1.1:7949", RaftState: "Follower",
		Term: 4, CommitIndex: 120, AppliedIndex: 119,
		Voters: 3, Nonvoters: 2, QuorumSize: 2, AliveVoters: 3,
		NodeCount: 5, AliveNodes: 4, GroupCount: 7, Sites: []string{"site1", "site2"},
		ReserveK: 1, ReserveOk: true, ReserveSummary: "can sustain 1 failure(s): yes",
	})
	if err != nil {
		t.Fatal(err)
	}
	want := `Node:           a2
Leader:         a1 (10.0.1.1:7949)
Raft state:     Follower
Term:           4
Commit index:   120
Applied index:  119
Voters:         3
Nonvoters:      2
Quorum size:    2
Alive voters:   3
Nodes:          4 alive / 5 total
Groups:         7
Sites:          site1, site2
Reserve:        can sustain 1 failure(s): yes
`
	if got := b.String(); got != want {
		t.Errorf("status:\n%s\nwant:\n%s", got, want)
	}
	b.Reset()
	if err := writeStatus(&b, &havenv1.GetStatusResponse{Node: "a2", RaftState: "Candidate"}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "Leader:         (none)\n") {
		t.Errorf("status without a leader:\n%s", b.String())
	}
}
