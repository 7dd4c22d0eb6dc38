package agent

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/haven-ha/haven/driver"
	"github.com/haven-ha/haven/fsm"
	"github.com/haven-ha/haven/heartbeat"
	"github.com/haven-ha/haven/placement"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// fakeMembers is gossip's view in tests.
type fakeMembers struct{ m []heartbeat.Member }

func (f *fakeMembers) Members() []heartbeat.Member { return f.m }

// fsmProposer applies commands to the test agent's FSM at once, as a
// one-node Raft would, and records whether placeMu was held: every
// decision that places a group must commit under it.
type fsmProposer struct {
	t        *testing.T
	a        *Agent
	mu       sync.Mutex
	unlocked []string // commands committed without placeMu
}

func (p *fsmProposer) propose(data []byte) (*fsm.Result, error) {
	if p.a.placeMu.TryLock() {
		p.a.placeMu.Unlock()
		var c havenv1.Command
		if err := proto.Unmarshal(data, &c); err == nil {
			p.mu.Lock()
			p.unlocked = append(p.unlocked, fmt.Sprintf("%T", c.Cmd))
			p.mu.Unlock()
		}
	}
	return p.a.fsm.Apply(&raft.Log{Index: p.a.fsm.Index() + 1, Type: raft.LogCommand, Data: data}).(*fsm.Result), nil
}

// cluster3 is a test agent (n1) with nodes n1..n3 alive in the FSM and
// in gossip, each with the given labels.
func cluster3(t *testing.T, labels map[string]map[string]string) *Agent {
	var cmds []*havenv1.Command
	var ms []heartbeat.Member
	for _, n := range []string{"n1", "n2", "n3"} {
		node := &havenv1.Node{Name: n, Site: "a", Status: havenv1.NodeStatus_NODE_STATUS_ALIVE,
			Capacity: &havenv1.Capacity{CpuMillis: 8000, MemoryBytes: 16 << 30}, Labels: labels[n]}
		cmds = append(cmds, &havenv1.Command{Cmd: &havenv1.Command_UpsertNode{UpsertNode: &havenv1.UpsertNodeCommand{Node: node}}})
		ms = append(ms, heartbeat.Member{Name: n, State: heartbeat.StateAlive, Meta: heartbeat.Meta{Site: "a", CPUMillis: 8000, MemoryBytes: 16 << 30, Labels: formatLabels(labels[n])}})
	}
	a := testAgent(t, cmds...)
	a.members = &fakeMembers{m: ms}
	a.cfg.Placement.Reserve = 0
	return a
}

func vmSpecGroup(name string) *havenv1.GroupSpec {
	spec := &havenv1.GroupSpec{Name: name, Resources: []*havenv1.Resource{
		{Name: "config", Kind: havenv1.ResourceKind_RESOURCE_KIND_CONFIG},
		{Name: "vm", Kind: havenv1.ResourceKind_RESOURCE_KIND_VM, DependsOn: []string{"config"}, Vm: &havenv1.VmSpec{Vcpus: 1, MemoryBytes: 1 << 30}},
	}}
	fsm.NormalizeGroupSpec(spec)
	return spec
}

// run commits c through the agent, failing the test on any error.
func run(t *testing.T, a *Agent, c *havenv1.Command) {
	t.Helper()
	if err := a.applyInternal(c); err != nil {
		t.Fatal(err)
	}
}

// startOn creates a group and has it online on owner.
func startOn(t *testing.T, a *Agent, name, owner string) *havenv1.Group {
	t.Helper()
	run(t, a, &havenv1.Command{Cmd: &havenv1.Command_CreateGroup{CreateGroup: &havenv1.CreateGroupCommand{Spec: vmSpecGroup(name)}}})
	g := a.fsm.Group(name)
	run(t, a, &havenv1.Command{Cmd: &havenv1.Command_AssignGroup{AssignGroup: &havenv1.AssignGroupCommand{
		Name: name, ExpectEpoch: g.GetEpoch(), ExpectDesiredIndex: g.GetDesiredIndex(), Owner: owner,
		State: havenv1.GroupState_GROUP_STATE_STARTING, Desired: havenv1.DesiredState_DESIRED_STATE_RUN}}})
	g = a.fsm.Group(name)
	run(t, a, &havenv1.Command{Cmd: &havenv1.Command_ReportGroup{ReportGroup: &havenv1.ReportGroupCommand{
		Name: name, Node: owner, Epoch: g.GetEpoch(), DesiredIndex: g.GetDesiredIndex(), State: havenv1.GroupState_GROUP_STATE_ONLINE}}})
	return a.fsm.Group(name)
}

// A kept reserve and the wait and drain memos are reused while stateKey
// is unchanged: a change of node labels or of a group's node selector
// changes where groups may go, so it must change the key.
func TestStateKeySeesLabels(t *testing.T) {
	nodes := []*havenv1.Node{
		{Name: "n1", Status: havenv1.NodeStatus_NODE_STATUS_ALIVE, Capacity: &havenv1.Capacity{CpuMillis: 4000, MemoryBytes: 8 << 30}},
		{Name: "n2", Status: havenv1.NodeStatus_NODE_STATUS_ALIVE, Capacity: &havenv1.Capacity{CpuMillis: 4000, MemoryBytes: 8 << 30}},
	}
	alive := map[string]bool{"n1": true, "n2": true}
	group := &havenv1.Group{Spec: vmSpecGroup("web")}
	now := time.Now()
	key := func() uint64 { return stateKey(buildState(nodes, []*havenv1.Group{group}, alive, 4, 0, now), 1) }
	base := key()
	nodes[1].Labels = map[string]string{"gpu": "a100"}
	withLabel := key()
	if withLabel == base {
		t.Error("a node label does not change the state key")
	}
	group.Spec.NodeSelector = map[string]string{"gpu": "a100"}
	if key() == withLabel {
		t.Error("a group's node selector does not change the state key")
	}
	group.Failures = []*havenv1.GroupFailure{{Node: "n2", Time: timestamppb.New(now)}}
	withSelector := key()
	group.Failures = nil
	if withSelector == key() {
		t.Error("a recent failure (a node to avoid) does not change the state key")
	}
}

// RankNodes rates a group with every constraint it was asked about,
// node_selector included.
func TestRankSpecKeepsNodeSelector(t *testing.T) {
	req := &havenv1.RankNodesRequest{CpuMillis: 1000, MemoryBytes: 1 << 30, NodeSelector: map[string]string{"gpu": "a100"}}
	g := placementGroup(rankSpec(req), 0)
	if g.RequireLabels["gpu"] != "a100" {
		t.Fatalf("ranked group requires labels %v, want gpu=a100", g.RequireLabels)
	}
	a := cluster3(t, map[string]map[string]string{"n3": {"gpu": "a100"}})
	st := a.placementState()
	for _, r := range placement.Rank(st, g) {
		if r.Feasible != (r.Node == "n3") {
			t.Errorf("%s feasible=%v for a group selecting gpu=a100 (only n3 has it): %v", r.Node, r.Feasible, r.Why)
		}
	}
}

// Planned moves and the placements they finish are decided and committed
// under placeMu, as starts are: a start placed between the decision and
// its commit would see the room the move is about to take as free.
func TestPlannedMovesCommitUnderPlacementLock(t *testing.T) {
	a := cluster3(t, nil)
	p := a.proposer.(*fsmProposer)
	g := startOn(t, a, "web", "n1")
	run(t, a, &havenv1.Command{Cmd: &havenv1.Command_SetGroupState{SetGroupState: &havenv1.SetGroupStateCommand{
		Name: "web", Epoch: g.GetEpoch(), ExpectDesiredIndex: g.GetDesiredIndex(), State: havenv1.GroupState_GROUP_STATE_STOPPING, MoveTo: "n2"}}})
	run(t, a, &havenv1.Command{Cmd: &havenv1.Command_ReportGroup{ReportGroup: &havenv1.ReportGroupCommand{
		Name: "web", Node: "n1", Epoch: g.GetEpoch(), DesiredIndex: g.GetDesiredIndex(), State: havenv1.GroupState_GROUP_STATE_OFFLINE}}})
	p.unlocked = nil
	a.finishMoves()
	if g := a.fsm.Group("web"); g.GetOwner() != "n2" || g.GetState() != havenv1.GroupState_GROUP_STATE_STARTING {
		t.Fatalf("after finishMoves: %v", g)
	}
	if len(p.unlocked) > 0 {
		t.Errorf("finishMoves committed %v without placeMu", p.unlocked)
	}

	startOn(t, a, "db", "n3")
	run(t, a, &havenv1.Command{Cmd: &havenv1.Command_SetNodeDrain{SetNodeDrain: &havenv1.SetNodeDrainCommand{Name: "n3", Draining: true}}})
	p.unlocked = nil
	a.drain(time.Now(), map[string]uint64{})
	if g := a.fsm.Group("db"); g.GetMoveTo() == "" {
		t.Fatalf("drain did not move db: %v", g)
	}
	if len(p.unlocked) > 0 {
		t.Errorf("drain committed %v without placeMu", p.unlocked)
	}
}

// A report of a failed start moves the group to a node it has not failed
// on, and records the failure; when it has failed everywhere it can run,
// it is marked failed with the reason, and a waiting group is not placed
// back where it failed.
func TestFailedStartMovesAwayFromFailedNodes(t *testing.T) {
	a := cluster3(t, nil)
	startOn(t, a, "web", "n1")
	fail := func(node string) {
		t.Helper()
		g := a.fsm.Group("web")
		if err := a.handleReport(&havenv1.ReportGroupRequest{Node: node, Name: "web", Epoch: g.GetEpoch(), DesiredIndex: g.GetDesiredIndex(),
			State: havenv1.GroupState_GROUP_STATE_FAILED, Reason: "vm vm could not start on " + node + ": boom"}); err != nil {
			t.Fatal(err)
		}
	}
	fail("n1")
	g := a.fsm.Group("web")
	if g.GetOwner() == "n1" || g.GetOwner() == "" || len(g.GetFailures()) != 1 {
		t.Fatalf("after failing on n1: %v", g)
	}
	fail(g.GetOwner())
	g = a.fsm.Group("web")
	if g.GetOwner() != "n3" && g.GetOwner() != "n2" || len(g.GetFailures()) != 2 {
		t.Fatalf("after failing on two nodes: %v", g)
	}
	fail(g.GetOwner())
	g = a.fsm.Group("web")
	if g.GetState() != havenv1.GroupState_GROUP_STATE_FAILED || g.GetOwner() != "" || !strings.Contains(g.GetStateReason(), "boom") ||
		!strings.Contains(g.GetStateReason(), "failed there lately") {
		t.Fatalf("after failing everywhere: %v", g)
	}
	var memo waitMemo
	a.placeWaiting(&memo)
	if g := a.fsm.Group("web"); g.GetOwner() != "" {
		t.Fatalf("a waiting group was placed back where it failed: %v", g)
	}
}

// Lease renewals and reports are refused for names that are not members.
func TestStrangersRefused(t *testing.T) {
	a := cluster3(t, nil)
	a.members.(*fakeMembers).m = append(a.members.(*fakeMembers).m, heartbeat.Member{Name: "gone", State: heartbeat.StateLeft})
	for _, n := range []string{"n1", "n3"} {
		if err := a.checkMember(n, "lease renewal"); err != nil {
			t.Errorf("%s: %v", n, err)
		}
	}
	for _, n := range []string{"bogus", "gone"} {
		err := a.checkMember(n, "lease renewal")
		if status.Code(err) != codes.PermissionDenied || !strings.Contains(status.Convert(err).Message(), "not a member") {
			t.Errorf("%s: %v, want PermissionDenied", n, err)
		}
	}
	ns := &nodeService{a: a}
	if _, err := ns.RenewLease(context.Background(), &havenv1.RenewLeaseRequest{Node: "bogus"}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("RenewLease from a stranger: %v", err)
	}
}

// fakeDriver records what the executor asks of it.
type fakeDriver struct {
	mu       sync.Mutex
	vms      map[driver.VMID]driver.Status
	startErr error
	starts   int
	stopped  []string
}

func (d *fakeDriver) Capabilities() driver.Capabilities { return driver.Capabilities{} }
func (d *fakeDriver) Start(_ context.Context, spec driver.VMSpec, end time.Time) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.starts++
	if d.startErr != nil {
		return d.startErr
	}
	d.vms[spec.ID] = driver.Status{ID: spec.ID, Epoch: spec.Epoch, State: driver.StateRunning, LeaseEnd: end}
	return nil
}
func (d *fakeDriver) Stop(_ context.Context, id driver.VMID, epoch uint64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.stopped = append(d.stopped, id.Resource)
	st := d.vms[id]
	st.State = driver.StateStopped
	d.vms[id] = st
	return nil
}
func (d *fakeDriver) Kill(id driver.VMID, epoch uint64) error {
	return d.Stop(context.Background(), id, epoch)
}
func (d *fakeDriver) ExtendLease(driver.VMID, uint64, time.Time) error { return nil }
func (d *fakeDriver) Status(id driver.VMID) (driver.Status, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	st, ok := d.vms[id]
	if !ok {
		return st, driver.ErrNotFound
	}
	return st, nil
}
func (d *fakeDriver) List() []driver.Status {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []driver.Status
	for _, st := range d.vms {
		out = append(out, st)
	}
	slices.SortFunc(out, func(x, y driver.Status) int { return strings.Compare(x.ID.String(), y.ID.String()) })
	return out
}
func (d *fakeDriver) Forget(id driver.VMID) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.vms, id)
	return nil
}
func (d *fakeDriver) Close() error { return nil }

// testExecutor is n1's executor over a fake driver; reports go to reports.
func testExecutor(a *Agent, d *fakeDriver) (*executor, *[]*havenv1.ReportGroupRequest) {
	e := newExecutor(a, d)
	var reports []*havenv1.ReportGroupRequest
	e.send = func(_ context.Context, r *havenv1.ReportGroupRequest) error {
		reports = append(reports, r)
		return nil
	}
	return e, &reports
}

// A group is stopped in reverse dependency order: here the app VM
// ("a-app", first by name) depends on the database VM ("b-db"), so the app
// stops first.
func TestExecutorStopsInReverseDependencyOrder(t *testing.T) {
	a := cluster3(t, nil)
	spec := &havenv1.GroupSpec{Name: "shop", Resources: []*havenv1.Resource{
		{Name: "b-db", Kind: havenv1.ResourceKind_RESOURCE_KIND_VM, Vm: &havenv1.VmSpec{Vcpus: 1, MemoryBytes: 1 << 20}},
		{Name: "a-app", Kind: havenv1.ResourceKind_RESOURCE_KIND_VM, DependsOn: []string{"b-db"}, Vm: &havenv1.VmSpec{Vcpus: 1, MemoryBytes: 1 << 20}},
	}}
	run(t, a, &havenv1.Command{Cmd: &havenv1.Command_CreateGroup{CreateGroup: &havenv1.CreateGroupCommand{Spec: spec}}})
	g := a.fsm.Group("shop")
	run(t, a, &havenv1.Command{Cmd: &havenv1.Command_AssignGroup{AssignGroup: &havenv1.AssignGroupCommand{
		Name: "shop", ExpectEpoch: g.GetEpoch(), ExpectDesiredIndex: g.GetDesiredIndex(), Owner: "n1", State: havenv1.GroupState_GROUP_STATE_STARTING, Desired: havenv1.DesiredState_DESIRED_STATE_RUN}}})
	run(t, a, &havenv1.Command{Cmd: &havenv1.Command_StopGroup{StopGroup: &havenv1.StopGroupCommand{Name: "shop"}}})
	d := &fakeDriver{vms: map[driver.VMID]driver.Status{}}
	for _, r := range []string{"a-app", "b-db"} {
		id := driver.VMID{Group: "shop", Resource: r}
		d.vms[id] = driver.Status{ID: id, Epoch: a.fsm.Group("shop").GetEpoch(), State: driver.StateRunning}
	}
	e, reports := testExecutor(a, d)
	e.reconcile(context.Background())
	if !slices.Equal(d.stopped, []string{"a-app", "b-db"}) {
		t.Fatalf("stopped %v, want a-app (which depends on b-db) first", d.stopped)
	}
	if len(*reports) != 1 || (*reports)[0].GetState() != havenv1.GroupState_GROUP_STATE_OFFLINE {
		t.Fatalf("reports %v, want one offline", *reports)
	}
}

// A VM that cannot start is retried a bounded number of times with
// backoff, then reported failed with the driver's reason; a start refused
// for a stale epoch (a disk claimed by a newer one) is reported at once.
func TestExecutorReportsFailedStarts(t *testing.T) {
	for _, tc := range []struct {
		name     string
		err      error
		attempts int
		reason   string
	}{
		{"keeps failing", errors.New("no such bridge br7"), startAttempts, "could not start on n1: no such bridge br7"},
		{"fenced by its disk", fmt.Errorf("claiming disk disk0: %w", driver.ErrStaleEpoch), 1, "fenced on n1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := cluster3(t, nil)
			run(t, a, &havenv1.Command{Cmd: &havenv1.Command_CreateGroup{CreateGroup: &havenv1.CreateGroupCommand{Spec: vmSpecGroup("web")}}})
			g := a.fsm.Group("web")
			run(t, a, &havenv1.Command{Cmd: &havenv1.Command_AssignGroup{AssignGroup: &havenv1.AssignGroupCommand{
				Name: "web", ExpectEpoch: g.GetEpoch(), ExpectDesiredIndex: g.GetDesiredIndex(), Owner: "n1", State: havenv1.GroupState_GROUP_STATE_STARTING, Desired: havenv1.DesiredState_DESIRED_STATE_RUN}}})
			d := &fakeDriver{vms: map[driver.VMID]driver.Status{}, startErr: tc.err}
			e, reports := testExecutor(a, d)
			deadline := time.Now().Add(10 * time.Second)
			for len(*reports) == 0 && time.Now().Before(deadline) {
				e.granted(time.Now().Add(time.Minute), []*havenv1.GroupEpoch{{Name: "web", Epoch: a.fsm.Group("web").GetEpoch()}})
				e.reconcile(context.Background())
				time.Sleep(20 * time.Millisecond)
			}
			if len(*reports) != 1 {
				t.Fatalf("reports %v, want one", *reports)
			}
			r := (*reports)[0]
			if r.GetState() != havenv1.GroupState_GROUP_STATE_FAILED || !strings.Contains(r.GetReason(), tc.reason) || r.GetDesiredIndex() != a.fsm.Group("web").GetDesiredIndex() {
				t.Fatalf("report %v, want failed with %q", r, tc.reason)
			}
			if d.starts != tc.attempts {
				t.Fatalf("%d start attempts, want %d", d.starts, tc.attempts)
			}
		})
	}
}

// The executor re-reads the desired state right before it starts a VM: a
// stop applied after its pass read the state wins.
func TestExecutorRereadsDesiredBeforeStart(t *testing.T) {
	a := cluster3(t, nil)
	run(t, a, &havenv1.Command{Cmd: &havenv1.Command_CreateGroup{CreateGroup: &havenv1.CreateGroupCommand{Spec: vmSpecGroup("web")}}})
	g := a.fsm.Group("web")
	run(t, a, &havenv1.Command{Cmd: &havenv1.Command_AssignGroup{AssignGroup: &havenv1.AssignGroupCommand{
		Name: "web", ExpectEpoch: g.GetEpoch(), ExpectDesiredIndex: g.GetDesiredIndex(), Owner: "n1", State: havenv1.GroupState_GROUP_STATE_STARTING, Desired: havenv1.DesiredState_DESIRED_STATE_RUN}}})
	g = a.fsm.Group("web") // what a pass read
	run(t, a, &havenv1.Command{Cmd: &havenv1.Command_StopGroup{StopGroup: &havenv1.StopGroupCommand{Name: "web"}}})
	d := &fakeDriver{vms: map[driver.VMID]driver.Status{}}
	e, _ := testExecutor(a, d)
	e.granted(time.Now().Add(time.Minute), []*havenv1.GroupEpoch{{Name: "web", Epoch: a.fsm.Group("web").GetEpoch()}})
	e.ensureRunning(context.Background(), g, nil)
	if d.starts != 0 {
		t.Fatalf("started a group stopped after the pass read it")
	}
}
