package fsm

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/google/go-cmp/cmp"

	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

var t0 = time.Date(2026, 11, 25, 8, 0, 0, 0, time.UTC)

type applier struct {
	t     *testing.T
	f     *FSM
	index uint64
}

func (a *applier) apply(at time.Time, c *havenv1.Command) *Result {
	a.t.Helper()
	c.Time = timestamppb.New(at)
	data, err := Encode(c)
	if err != nil {
		a.t.Fatal(err)
	}
	a.index++
	return a.f.Apply(&raft.Log{Index: a.index, Type: raft.LogCommand, Data: data}).(*Result)
}

func createCmd(id, name string) *havenv1.Command {
	return &havenv1.Command{RequestId: id, Cmd: &havenv1.Command_CreateGroup{CreateGroup: &havenv1.CreateGroupCommand{Spec: testSpec(name)}}}
}

func deleteCmd(id, name string) *havenv1.Command {
	return &havenv1.Command{RequestId: id, Cmd: &havenv1.Command_DeleteGroup{DeleteGroup: &havenv1.DeleteGroupCommand{Name: name}}}
}

func testSpec(name string) *havenv1.GroupSpec {
	return &havenv1.GroupSpec{
		Name: name,
		Resources: []*havenv1.Resource{
			{Name: "config", Kind: havenv1.ResourceKind_RESOURCE_KIND_CONFIG},
			{Name: "disk0", Kind: havenv1.ResourceKind_RESOURCE_KIND_DISK, Disk: &havenv1.DiskSpec{Path: name + "/disk0.img", SizeBytes: 1 << 30}},
			{Name: "vm", Kind: havenv1.ResourceKind_RESOURCE_KIND_VM, DependsOn: []string{"config", "disk0"}, Vm: &havenv1.VmSpec{Vcpus: 2, MemoryBytes: 1 << 30}},
		},
	}
}

func TestApplyGroups(t *testing.T) {
	a := &applier{t: t, f: New()}
	if r := a.apply(t0, createCmd("r1", "web")); r.Err != nil || r.Index != 1 {
		t.Fatalf("create: %+v", r)
	}
	g := a.f.Group("web")
	if g == nil || g.GetState() != havenv1.GroupState_GROUP_STATE_OFFLINE || g.GetCreateIndex() != 1 || !g.GetCreateTime().AsTime().Equal(t0) {
		t.Fatalf("stored group: %v", g)
	}
	if r := a.apply(t0, createCmd("r2", "web")); r.Err == nil || r.Err.Code != CodeAlreadyExists {
		t.Fatalf("duplicate name: %+v", r)
	}
	if r := a.apply(t0, deleteCmd("r3", "db")); r.Err == nil || r.Err.Code != CodeNotFound {
		t.Fatalf("delete missing: %+v", r)
	}
	if r := a.apply(t0, deleteCmd("r4", "web")); r.Err != nil {
		t.Fatalf("delete: %+v", r)
	}
	if got := len(a.f.Groups()); got != 0 {
		t.Fatalf("groups after delete: %d", got)
	}
}

func TestRequestIDAppliedOnce(t *testing.T) {
	a := &applier{t: t, f: New()}
	first := a.apply(t0, createCmd("same", "web"))
	a.apply(t0, deleteCmd("del", "web"))
	// A retry of the create after the delete must not resurrect the group.
	retry := a.apply(t0.Add(time.Second), createCmd("same", "web"))
	if !retry.Duplicate || retry.Index != first.Index || retry.Err != nil {
		t.Fatalf("retry: %+v, first %+v", retry, first)
	}
	if a.f.Group("web") != nil {
		t.Fatal("retried create was applied twice")
	}
	// A refused request is remembered with its refusal.
	a.apply(t0, createCmd("x1", "db"))
	dup := a.apply(t0, createCmd("x2", "db"))
	again := a.apply(t0, createCmd("x2", "db"))
	if again.Err == nil || again.Err.Code != CodeAlreadyExists || again.Index != dup.Index {
		t.Fatalf("refusal not remembered: %+v", again)
	}
}

func TestRequestIDsPruned(t *testing.T) {
	a := &applier{t: t, f: New()}
	a.apply(t0, createCmd("old", "web"))
	a.apply(t0.Add(RequestRetention+time.Second), deleteCmd("new", "web"))
	if _, ok := a.f.st.requests["old"]; ok {
		t.Fatal("request id older than the retention was kept")
	}
	if _, ok := a.f.st.requests["new"]; !ok {
		t.Fatal("fresh request id was dropped")
	}
}

func TestNodes(t *testing.T) {
	a := &applier{t: t, f: New()}
	up := func(status havenv1.NodeStatus) *havenv1.Command {
		return &havenv1.Command{Cmd: &havenv1.Command_UpsertNode{UpsertNode: &havenv1.UpsertNodeCommand{Node: &havenv1.Node{Name: "n1", Site: "a", Status: status}}}}
	}
	a.apply(t0, up(havenv1.NodeStatus_NODE_STATUS_ALIVE))
	a.apply(t0.Add(time.Minute), up(havenv1.NodeStatus_NODE_STATUS_ALIVE))
	n := a.f.Node("n1")
	if n.GetCreateIndex() != 1 || n.GetModifyIndex() != 2 || !n.GetStatusTime().AsTime().Equal(t0) {
		t.Fatalf("status time must only move when the status changes: %v", n)
	}
	st := &havenv1.Command{Cmd: &havenv1.Command_SetNodeStatus{SetNodeStatus: &havenv1.SetNodeStatusCommand{Name: "n1", Status: havenv1.NodeStatus_NODE_STATUS_FAILED}}}
	a.apply(t0.Add(2*time.Minute), st)
	if n := a.f.Node("n1"); n.GetStatus() != havenv1.NodeStatus_NODE_STATUS_FAILED || !n.GetStatusTime().AsTime().Equal(t0.Add(2*time.Minute)) {
		t.Fatalf("set status: %v", n)
	}
	if r := a.apply(t0, &havenv1.Command{Cmd: &havenv1.Command_SetNodeStatus{SetNodeStatus: &havenv1.SetNodeStatusCommand{Name: "zz"}}}); r.Err == nil || r.Err.Code != CodeNotFound {
		t.Fatalf("status of unknown node: %+v", r)
	}
}

// A node's checks replace the ones before; an older report changes
// nothing; the leader's gossip bookkeeping keeps them.
func TestNodeChecks(t *testing.T) {
	a := &applier{t: t, f: New()}
	checks := func(node string, index uint64, refused ...string) *havenv1.Command {
		c := &havenv1.SetNodeChecksCommand{Name: node, CheckedIndex: index}
		for _, g := range refused {
			c.CannotRun = append(c.CannotRun, &havenv1.GroupRefusal{Group: g, CreateIndex: 1, Reason: "boot.kernel: no such file"})
		}
		return &havenv1.Command{Cmd: &havenv1.Command_SetNodeChecks{SetNodeChecks: c}}
	}
	if r := a.apply(t0, checks("n1", 1, "web")); r.Err == nil || r.Err.Code != CodeNotFound {
		t.Fatalf("checks of an unknown node: %+v", r)
	}
	up := &havenv1.Command{Cmd: &havenv1.Command_UpsertNode{UpsertNode: &havenv1.UpsertNodeCommand{Node: &havenv1.Node{Name: "n1", Status: havenv1.NodeStatus_NODE_STATUS_ALIVE}}}}
	a.apply(t0, up)
	if r := a.apply(t0, checks("n1", 5, "web", "db")); r.Err != nil {
		t.Fatal(r.Err)
	}
	if r := a.apply(t0, checks("n1", 4)); r.Err == nil || r.Err.Code != CodeFailedPrecondition {
		t.Fatalf("older checks: %+v", r)
	}
	a.apply(t0, up)
	if n := a.f.Node("n1"); n.GetCheckedIndex() != 5 || len(n.GetCannotRun()) != 2 || n.GetCannotRun()[1].GetGroup() != "db" {
		t.Fatalf("after an upsert: %v", n)
	}
	a.apply(t0, checks("n1", 6, "db"))
	if n := a.f.Node("n1"); n.GetCheckedIndex() != 6 || len(n.GetCannotRun()) != 1 || n.GetCannotRun()[0].GetGroup() != "db" {
		t.Fatalf("replaced: %v", n)
	}
}

// A corrupt log entry must stop the FSM where it is, not be skipped, and
// say so without a panic.
func TestUndecodableCommandHalts(t *testing.T) {
	a := &applier{t: t, f: New()}
	a.apply(t0, createCmd("r1", "web"))
	r := a.f.Apply(&raft.Log{Index: 2, Type: raft.LogCommand, Data: []byte{0xff, 0xff, 0xff}}).(*Result)
	if r.Err == nil || r.Err.Code != CodeFailedPrecondition {
		t.Fatalf("undecodable entry: %+v", r)
	}
	select {
	case <-a.f.Halted():
	default:
		t.Fatal("Halted not closed")
	}
	var he *HaltError
	if err := a.f.Err(); !errors.As(err, &he) || he.Index != 2 || !strings.Contains(err.Error(), "damaged") {
		t.Fatalf("Err = %v", err)
	}
	a.index = 2
	if r := a.apply(t0, createCmd("r2", "db")); r.Err == nil || a.f.Group("db") != nil {
		t.Fatalf("applied after the halt: %+v", r)
	}
	if a.f.Index() != 1 || a.f.Group("web") == nil {
		t.Fatalf("state moved: index %d", a.f.Index())
	}
}

func TestUnknownCommandRefusedEverywhere(t *testing.T) {
	a := &applier{t: t, f: New()}
	if r := a.apply(t0, &havenv1.Command{RequestId: "r"}); r.Err == nil || r.Err.Code != CodeFailedPrecondition {
		t.Fatalf("empty command: %+v", r)
	}
}

type bufSink struct {
	bytes.Buffer
	cancelled bool
}

func (s *bufSink) ID() string    { return "test" }
func (s *bufSink) Cancel() error { s.cancelled = true; return nil }
func (s *bufSink) Close() error  { return nil }

func roundTrip(t *testing.T, f *FSM) *FSM {
	t.Helper()
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var sink bufSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	g := New()
	if err := g.Restore(io.NopCloser(&sink)); err != nil {
		t.Fatal(err)
	}
	return g
}

// TestSnapshotRoundTrip covers every record type: nodes, groups and
// remembered requests.
func TestSnapshotRoundTrip(t *testing.T) {
	a := &applier{t: t, f: New()}
	a.apply(t0, &havenv1.Command{Cmd: &havenv1.Command_UpsertNode{UpsertNode: &havenv1.UpsertNodeCommand{Node: &havenv1.Node{
		Name: "n1", Site: "a", Witness: true, GossipAddr: "127.0.0.1:1", RaftAddr: "127.0.0.1:2", GrpcAddr: "127.0.0.1:3",
		Capacity: &havenv1.Capacity{CpuMillis: 4000, MemoryBytes: 8 << 30}, Version: "v", Status: havenv1.NodeStatus_NODE_STATUS_ALIVE,
	}}}})
	spec := testSpec("web")
	spec.Labels = map[string]string{"tier": "front"}
	spec.AntiAffinity = []*havenv1.AntiAffinity{{Class: "sql", Hard: true, AcrossSites: true}, {Class: "web"}}
	spec.PreferredSite = "a"
	spec.Failback = &havenv1.FailbackPolicy{Mode: havenv1.FailbackMode_FAILBACK_MODE_WINDOW, WindowStartHour: 1, WindowEndHour: 5}
	a.apply(t0, &havenv1.Command{RequestId: "c1", Cmd: &havenv1.Command_CreateGroup{CreateGroup: &havenv1.CreateGroupCommand{Spec: spec}}})
	a.apply(t0, createCmd("c2", "web")) // refused, remembered with its error
	a.apply(t0, &havenv1.Command{Cmd: &havenv1.Command_AssignGroup{AssignGroup: &havenv1.AssignGroupCommand{
		Name: "web", ExpectEpoch: 2, ExpectDesiredIndex: 2, Owner: "n1", State: havenv1.GroupState_GROUP_STATE_STARTING, Desired: havenv1.DesiredState_DESIRED_STATE_RUN,
		Failure: &havenv1.GroupFailure{Node: "n2", Time: timestamppb.New(t0), Reason: "start failed"}}}})
	if g := a.f.Group("web"); g.GetOwner() != "n1" || len(g.GetFailures()) != 1 {
		t.Fatalf("assign not applied: %v", g)
	}
	a.apply(t0, &havenv1.Command{Cmd: &havenv1.Command_SetNodeChecks{SetNodeChecks: &havenv1.SetNodeChecksCommand{
		Name: "n1", CheckedIndex: 3, CannotRun: []*havenv1.GroupRefusal{{Group: "db", CreateIndex: 1, Reason: "boot.kernel: no such file"}},
	}}})
	if len(a.f.Node("n1").GetCannotRun()) != 1 {
		t.Fatal("checks not applied")
	}

	b := roundTrip(t, a.f)
	if diff := cmp.Diff(a.f.st.disks, b.st.disks); diff != "" || len(b.st.disks) == 0 {
		t.Errorf("disk owners differ (-before +after):\n%s", diff)
	}
	if diff := cmp.Diff(a.f.Nodes(), b.Nodes(), protocmp.Transform()); diff != "" {
		t.Errorf("nodes differ (-before +after):\n%s", diff)
	}
	if diff := cmp.Diff(a.f.Groups(), b.Groups(), protocmp.Transform()); diff != "" {
		t.Errorf("groups differ (-before +after):\n%s", diff)
	}
	if diff := cmp.Diff(a.f.st.requests, b.st.requests, protocmp.Transform()); diff != "" {
		t.Errorf("requests differ (-before +after):\n%s", diff)
	}
	if diff := cmp.Diff(a.f.st.order, b.st.order); diff != "" {
		t.Errorf("request order differs:\n%s", diff)
	}
	if b.Index() != a.f.Index() {
		t.Errorf("index %d, want %d", b.Index(), a.f.Index())
	}
	// The restored machine dedupes the same way.
	ba := &applier{t: t, f: b, index: a.index}
	if r := ba.apply(t0, createCmd("c1", "web")); !r.Duplicate {
		t.Errorf("request id lost in snapshot: %+v", r)
	}
}

// TestSnapshotIsolatedFromLaterApplies checks that Persist encodes the state
// at Snapshot time even when Apply changes the state before Persist runs.
func TestSnapshotIsolatedFromLaterApplies(t *testing.T) {
	a := &applier{t: t, f: New()}
	a.apply(t0, createCmd("c1", "web"))
	snap, _ := a.f.Snapshot()
	a.apply(t0, deleteCmd("d1", "web"))
	a.apply(t0, createCmd("c2", "db"))
	var sink bufSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	b := New()
	if err := b.Restore(io.NopCloser(&sink)); err != nil {
		t.Fatal(err)
	}
	if b.Group("web") == nil || b.Group("db") != nil {
		t.Fatalf("snapshot saw later applies: %v", b.Groups())
	}
}

func TestRestoreRefusesGarbage(t *testing.T) {
	for name, data := range map[string][]byte{
		"empty":       nil,
		"bad version": mustDelim(t, &havenv1.SnapshotHeader{Version: 99}),
		"huge record": append(mustDelim(t, &havenv1.SnapshotHeader{Version: snapshotVersion}), 0xff, 0xff, 0xff, 0xff, 0x0f),
	} {
		t.Run(name, func(t *testing.T) {
			if err := New().Restore(io.NopCloser(bytes.NewReader(data))); err == nil {
				t.Fatal("restore accepted a bad snapshot")
			}
		})
	}
}

func mustDelim(t *testing.T, m proto.Message) []byte {
	t.Helper()
	var b bytes.Buffer
	data, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	b.WriteByte(byte(len(data)))
	b.Write(data)
	return b.Bytes()
}

// An agent that followed the log by stream and then joins the Raft
// configuration is fed what it has again: entries at or below its index
// change nothing, and neither does a snapshot it is ahead of. A snapshot
// ahead of it replaces its state.
func TestAppliedEntriesAndOlderSnapshotsSkipped(t *testing.T) {
	a := &applier{t: t, f: New()}
	a.apply(t0, createCmd("r1", "web"))
	var old bytes.Buffer
	if _, err := a.f.WriteSnapshot(&old); err != nil {
		t.Fatal(err)
	}
	a.apply(t0, createCmd("r2", "db"))
	at := a.f.Index()

	// Index 2 again, carrying another command: Raft's replay of an entry
	// the stream applied is the same entry, so this one must be ignored.
	data, err := Encode(createCmd("r3", "other"))
	if err != nil {
		t.Fatal(err)
	}
	if r := a.f.Apply(&raft.Log{Index: at, Type: raft.LogCommand, Data: data}).(*Result); r.Err != nil || r.Command != nil {
		t.Errorf("re-applied entry %d: %+v", at, r)
	}
	if a.f.Group("other") != nil || a.f.Index() != at {
		t.Fatalf("an entry at an applied index changed the state (index %d)", a.f.Index())
	}
	if err := a.f.Restore(io.NopCloser(bytes.NewReader(old.Bytes()))); err != nil {
		t.Fatal(err)
	}
	if a.f.Group("db") == nil || a.f.Index() != at {
		t.Fatalf("an older snapshot took the state back to index %d", a.f.Index())
	}

	ahead := New()
	if err := ahead.Restore(io.NopCloser(bytes.NewReader(old.Bytes()))); err != nil {
		t.Fatal(err)
	}
	if ahead.Group("web") == nil || ahead.Index() != 1 {
		t.Fatalf("a fresh FSM did not take the snapshot: index %d", ahead.Index())
	}
}
