// Package fsmtest builds FSM states for tests of the packages that read
// the FSM and commit to it (leader, lease, executor, services): a Log
// applies commands to a real FSM in log order, as a one-node Raft would,
// with no Raft and no network.
package fsmtest

import (
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/haven-ha/haven/fsm"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// Log is an FSM and the log that feeds it.
type Log struct {
	T   testing.TB
	FSM *fsm.FSM
	// Now stamps the commands; the FSM never reads a clock.
	Now func() time.Time
	// mu makes each commit's index and apply one step, as Raft's single
	// log does, for callers that commit from several goroutines.
	mu sync.Mutex
}

// New returns a Log over an empty FSM, stamping commands with time.Now.
func New(t testing.TB) *Log {
	return &Log{T: t, FSM: fsm.New(), Now: time.Now}
}

// Commit applies c at the next index, as Raft would commit it.
func (l *Log) Commit(c *havenv1.Command) (*fsm.Result, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	c.Time = timestamppb.New(l.Now())
	data, err := fsm.Encode(c)
	if err != nil {
		return nil, err
	}
	return l.FSM.Apply(&raft.Log{Index: l.FSM.Index() + 1, Type: raft.LogCommand, Data: data}).(*fsm.Result), nil
}

// Run commits c and fails the test if it is refused.
func (l *Log) Run(c *havenv1.Command) {
	l.T.Helper()
	res, err := l.Commit(c)
	if err != nil {
		l.T.Fatal(err)
	}
	if res.Err != nil {
		l.T.Fatalf("%T refused: %v", c.GetCmd(), res.Err)
	}
}

// Node is an alive node record.
func Node(name, site string, cpuMillis, memoryBytes int64, labels map[string]string) *havenv1.Node {
	return &havenv1.Node{Name: name, Site: site, Status: havenv1.NodeStatus_NODE_STATUS_ALIVE,
		Capacity: &havenv1.Capacity{CpuMillis: cpuMillis, MemoryBytes: memoryBytes}, Labels: labels}
}

// AddNode records n.
func (l *Log) AddNode(n *havenv1.Node) {
	l.T.Helper()
	l.Run(&havenv1.Command{Cmd: &havenv1.Command_UpsertNode{UpsertNode: &havenv1.UpsertNodeCommand{Node: n}}})
}

// VMGroup is a group of one config resource and one 1 GiB VM that
// depends on it.
func VMGroup(name string) *havenv1.GroupSpec {
	spec := &havenv1.GroupSpec{Name: name, Resources: []*havenv1.Resource{
		{Name: "config", Kind: havenv1.ResourceKind_RESOURCE_KIND_CONFIG},
		{Name: "vm", Kind: havenv1.ResourceKind_RESOURCE_KIND_VM, DependsOn: []string{"config"}, Vm: &havenv1.VmSpec{Vcpus: 1, MemoryBytes: 1 << 30}},
	}}
	fsm.NormalizeGroupSpec(spec)
	return spec
}

// Create creates a group of spec.
func (l *Log) Create(spec *havenv1.GroupSpec) *havenv1.Group {
	l.T.Helper()
	l.Run(&havenv1.Command{Cmd: &havenv1.Command_CreateGroup{CreateGroup: &havenv1.CreateGroupCommand{Spec: spec}}})
	return l.FSM.Group(spec.GetName())
}

// Assign is an operator's start of the group as it is now, on owner.
func (l *Log) Assign(name, owner string) *havenv1.Group {
	l.T.Helper()
	g := l.FSM.Group(name)
	l.Run(&havenv1.Command{Cmd: &havenv1.Command_AssignGroup{AssignGroup: &havenv1.AssignGroupCommand{
		Name: name, ExpectEpoch: g.GetEpoch(), ExpectDesiredIndex: g.GetDesiredIndex(), Owner: owner,
		State: havenv1.GroupState_GROUP_STATE_STARTING, Desired: havenv1.DesiredState_DESIRED_STATE_RUN}}})
	return l.FSM.Group(name)
}

// Report is the owner's report of the group at its current epoch.
func (l *Log) Report(name string, st havenv1.GroupState) *havenv1.Group {
	l.T.Helper()
	g := l.FSM.Group(name)
	l.Run(&havenv1.Command{Cmd: &havenv1.Command_ReportGroup{ReportGroup: &havenv1.ReportGroupCommand{
		Name: name, Node: g.GetOwner(), Epoch: g.GetEpoch(), DesiredIndex: g.GetDesiredIndex(), State: st}}})
	return l.FSM.Group(name)
}

// StartOn creates a VMGroup and has it online on owner.
func (l *Log) StartOn(name, owner string) *havenv1.Group {
	l.T.Helper()
	l.Create(VMGroup(name))
	l.Assign(name, owner)
	return l.Report(name, havenv1.GroupState_GROUP_STATE_ONLINE)
}

// Stop is an operator's stop.
func (l *Log) Stop(name string) *havenv1.Group {
	l.T.Helper()
	l.Run(&havenv1.Command{Cmd: &havenv1.Command_StopGroup{StopGroup: &havenv1.StopGroupCommand{Name: name, Reason: "stop requested"}}})
	return l.FSM.Group(name)
}
