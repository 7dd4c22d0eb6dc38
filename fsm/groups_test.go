package fsm

import (
	"strings"
	"testing"

	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// groupOps drives one group through the commands the leader and the owner
// send, as the agent sends them.
type groupOps struct {
	*applier
	name string
}

func newGroupOps(t *testing.T) *groupOps {
	a := &applier{t: t, f: New()}
	if r := a.apply(t0, createCmd("c", "web")); r.Err != nil {
		t.Fatal(r.Err)
	}
	return &groupOps{applier: a, name: "web"}
}

func (o *groupOps) g() *havenv1.Group { return o.f.Group(o.name) }

// start is an operator's start placed on owner, decided on the group as
// it is now.
func (o *groupOps) start(owner string) *Result {
	g := o.g()
	return o.apply(t0, &havenv1.Command{Cmd: &havenv1.Command_AssignGroup{AssignGroup: &havenv1.AssignGroupCommand{
		Name: o.name, ExpectEpoch: g.GetEpoch(), ExpectDesiredIndex: g.GetDesiredIndex(), Owner: owner,
		State: havenv1.GroupState_GROUP_STATE_STARTING, Desired: havenv1.DesiredState_DESIRED_STATE_RUN, ClearFailures: true}}})
}

func (o *groupOps) assign(epoch, desiredIndex uint64, owner string, st havenv1.GroupState) *Result {
	return o.apply(t0, &havenv1.Command{Cmd: &havenv1.Command_AssignGroup{AssignGroup: &havenv1.AssignGroupCommand{
		Name: o.name, ExpectEpoch: epoch, ExpectDesiredIndex: desiredIndex, Owner: owner, State: st}}})
}

func (o *groupOps) stop() *Result {
	return o.apply(t0, &havenv1.Command{Cmd: &havenv1.Command_StopGroup{StopGroup: &havenv1.StopGroupCommand{Name: o.name}}})
}

func (o *groupOps) report(node string, epoch, desiredIndex uint64, st havenv1.GroupState) *Result {
	return o.apply(t0, &havenv1.Command{Cmd: &havenv1.Command_ReportGroup{ReportGroup: &havenv1.ReportGroupCommand{
		Name: o.name, Node: node, Epoch: epoch, DesiredIndex: desiredIndex, State: st}}})
}

func (o *groupOps) move(epoch, desiredIndex uint64, to string) *Result {
	return o.apply(t0, &havenv1.Command{Cmd: &havenv1.Command_SetGroupState{SetGroupState: &havenv1.SetGroupStateCommand{
		Name: o.name, Epoch: epoch, ExpectDesiredIndex: desiredIndex, State: havenv1.GroupState_GROUP_STATE_STOPPING, MoveTo: to}}})
}

func refused(t *testing.T, what string, r *Result) {
	t.Helper()
	if r.Err == nil || r.Err.Code != CodeFailedPrecondition {
		t.Fatalf("%s applied: %+v", what, r)
	}
}

func ok(t *testing.T, what string, r *Result) {
	t.Helper()
	if r.Err != nil {
		t.Fatalf("%s: %v", what, r.Err)
	}
}

func TestCreatedGroupIsStopped(t *testing.T) {
	o := newGroupOps(t)
	g := o.g()
	if g.GetDesired() != havenv1.DesiredState_DESIRED_STATE_STOPPED || g.GetDesiredIndex() != 1 || g.GetState() != havenv1.GroupState_GROUP_STATE_OFFLINE {
		t.Fatalf("new group: %v", g)
	}
}

// A group deleted and created again under its name continues above every
// epoch the old one had: its disks remember the highest epoch that
// claimed them and would fence a new group starting again at 1.
func TestEpochsContinueAcrossRecreate(t *testing.T) {
	o := newGroupOps(t)
	for i := 0; i < 3; i++ {
		ok(t, "start", o.start("n1"))
		ok(t, "stop", o.stop())
		g := o.g()
		ok(t, "offline", o.report("n1", g.GetEpoch(), g.GetDesiredIndex(), havenv1.GroupState_GROUP_STATE_OFFLINE))
	}
	last := o.g().GetEpoch()
	ok(t, "delete", o.apply(t0, deleteCmd("d", "web")))
	ok(t, "create again", o.apply(t0, createCmd("c2", "web")))
	ok(t, "start again", o.start("n1"))
	if g := o.g(); g.GetEpoch() <= last {
		t.Fatalf("recreated group runs at epoch %d, not above the old one's %d", g.GetEpoch(), last)
	}
}

// The lost stop seen with many clients: a stop acknowledged while the
// group was starting, then the owner's report that it is online, made
// from what it read before the stop. The report must change nothing.
func TestReportCannotUndoStop(t *testing.T) {
	o := newGroupOps(t)
	ok(t, "start", o.start("n1"))
	epoch, runIndex := o.g().GetEpoch(), o.g().GetDesiredIndex()
	ok(t, "stop", o.stop())
	refused(t, "online report from before the stop", o.report("n1", epoch, runIndex, havenv1.GroupState_GROUP_STATE_ONLINE))
	g := o.g()
	if g.GetState() != havenv1.GroupState_GROUP_STATE_STOPPING || WantsRun(g) {
		t.Fatalf("after stale report: %v", g)
	}
	// Even a report naming the stop's index cannot say online.
	refused(t, "online report after the stop", o.report("n1", epoch, g.GetDesiredIndex(), havenv1.GroupState_GROUP_STATE_ONLINE))
	ok(t, "offline report", o.report("n1", epoch, g.GetDesiredIndex(), havenv1.GroupState_GROUP_STATE_OFFLINE))
	if g := o.g(); g.GetState() != havenv1.GroupState_GROUP_STATE_OFFLINE {
		t.Fatalf("after offline report: %v", g)
	}
}

// A failover decided before an operator's stop must not start the group
// elsewhere: it names the desired index it read.
func TestAssignIsCompareAndSet(t *testing.T) {
	o := newGroupOps(t)
	ok(t, "start", o.start("n1"))
	g := o.g()
	// Two leaders' decisions on the same view: only the first applies.
	ok(t, "failover", o.assign(g.GetEpoch(), g.GetDesiredIndex(), "n2", havenv1.GroupState_GROUP_STATE_STARTING))
	refused(t, "second failover on the same view", o.assign(g.GetEpoch(), g.GetDesiredIndex(), "n3", havenv1.GroupState_GROUP_STATE_STARTING))
	if g := o.g(); g.GetOwner() != "n2" || g.GetEpoch() != 3 {
		t.Fatalf("after stale assign: %v", g)
	}
	g = o.g()
	ok(t, "stop", o.stop())
	refused(t, "failover decided before the stop", o.assign(g.GetEpoch(), g.GetDesiredIndex(), "n3", havenv1.GroupState_GROUP_STATE_STARTING))
	g = o.g()
	// Even on the current view, a stopped group is never assigned to run.
	refused(t, "run a stopped group", o.assign(g.GetEpoch(), g.GetDesiredIndex(), "n3", havenv1.GroupState_GROUP_STATE_STARTING))
	// Taking it off a failed owner is fine.
	ok(t, "unassign", o.assign(g.GetEpoch(), g.GetDesiredIndex(), "", havenv1.GroupState_GROUP_STATE_OFFLINE))
}

func TestReportNeedsOwnerAndCurrentEpoch(t *testing.T) {
	o := newGroupOps(t)
	ok(t, "start", o.start("n1"))
	g := o.g()
	ok(t, "failover", o.assign(g.GetEpoch(), g.GetDesiredIndex(), "n2", havenv1.GroupState_GROUP_STATE_STARTING))
	di := o.g().GetDesiredIndex()
	// The old owner's late report must not mark the new run online.
	refused(t, "old owner's report", o.report("n1", 2, di, havenv1.GroupState_GROUP_STATE_ONLINE))
	refused(t, "old epoch", o.report("n2", 2, di, havenv1.GroupState_GROUP_STATE_ONLINE))
	refused(t, "starting is not reported", o.report("n2", 3, di, havenv1.GroupState_GROUP_STATE_STARTING))
	refused(t, "offline without a stop", o.report("n2", 3, di, havenv1.GroupState_GROUP_STATE_OFFLINE))
	if g := o.g(); g.GetState() != havenv1.GroupState_GROUP_STATE_STARTING {
		t.Fatalf("state after refused reports: %v", g.GetState())
	}
	ok(t, "online", o.report("n2", 3, di, havenv1.GroupState_GROUP_STATE_ONLINE))
	ok(t, "online again", o.report("n2", 3, di, havenv1.GroupState_GROUP_STATE_ONLINE))
	if g := o.g(); g.GetState() != havenv1.GroupState_GROUP_STATE_ONLINE {
		t.Fatalf("state: %v", g.GetState())
	}
}

// A planned move keeps its target through the stop and loses it when the
// group is assigned; an operator's stop cancels it, and a move decided
// before that stop is refused.
func TestPlannedMove(t *testing.T) {
	o := newGroupOps(t)
	refused(t, "move a stopped group", o.move(0, 1, "n1"))
	ok(t, "start", o.start("n2"))
	g := o.g()
	refused(t, "move a starting group", o.move(g.GetEpoch(), g.GetDesiredIndex(), "n1"))
	ok(t, "online", o.report("n2", g.GetEpoch(), g.GetDesiredIndex(), havenv1.GroupState_GROUP_STATE_ONLINE))
	ok(t, "move", o.move(g.GetEpoch(), g.GetDesiredIndex(), "n1"))
	if g := o.g(); g.GetMoveTo() != "n1" || g.GetState() != havenv1.GroupState_GROUP_STATE_STOPPING || !WantsRun(g) {
		t.Fatalf("after move: %v", g)
	}
	ok(t, "offline", o.report("n2", g.GetEpoch(), g.GetDesiredIndex(), havenv1.GroupState_GROUP_STATE_OFFLINE))
	if g := o.g(); g.GetMoveTo() != "n1" {
		t.Fatalf("move_to lost on offline: %v", g)
	}
	ok(t, "assign to target", o.assign(g.GetEpoch(), g.GetDesiredIndex(), "n1", havenv1.GroupState_GROUP_STATE_STARTING))
	if g := o.g(); g.GetMoveTo() != "" || g.GetOwner() != "n1" || g.GetEpoch() != 3 {
		t.Fatalf("after assign: %v", g)
	}

	g = o.g()
	ok(t, "online", o.report("n1", g.GetEpoch(), g.GetDesiredIndex(), havenv1.GroupState_GROUP_STATE_ONLINE))
	ok(t, "move back", o.move(g.GetEpoch(), g.GetDesiredIndex(), "n2"))
	ok(t, "operator stop", o.stop())
	g2 := o.g()
	if g2.GetMoveTo() != "" || g2.GetState() != havenv1.GroupState_GROUP_STATE_STOPPING || WantsRun(g2) || !strings.Contains(g2.GetStateReason(), "cancelled") {
		t.Fatalf("stop during a move: %v", g2)
	}
	refused(t, "move decided before the stop", o.move(g.GetEpoch(), g.GetDesiredIndex(), "n2"))
	refused(t, "assign decided before the stop", o.assign(g.GetEpoch(), g.GetDesiredIndex(), "n2", havenv1.GroupState_GROUP_STATE_STARTING))
}

func TestStopAndDelete(t *testing.T) {
	o := newGroupOps(t)
	ok(t, "stop a stopped group", o.stop())
	if o.g().GetDesiredIndex() != 1 {
		t.Fatalf("a no-op stop moved the desired index: %v", o.g())
	}
	ok(t, "start", o.start("n1"))
	refused(t, "delete while starting", o.apply(t0, deleteCmd("d1", "web")))
	g := o.g()
	// Failed and waiting for a node: the stop just ends the wait.
	ok(t, "no room", o.assign(g.GetEpoch(), g.GetDesiredIndex(), "", havenv1.GroupState_GROUP_STATE_FAILED))
	refused(t, "delete while waiting for a node", o.apply(t0, deleteCmd("d2", "web")))
	ok(t, "stop", o.stop())
	if g := o.g(); g.GetState() != havenv1.GroupState_GROUP_STATE_OFFLINE || WantsRun(g) {
		t.Fatalf("stopped failed group: %v", g)
	}
	ok(t, "delete", o.apply(t0, deleteCmd("d3", "web")))
}

func TestFailuresRecordedAndCleared(t *testing.T) {
	o := newGroupOps(t)
	ok(t, "start", o.start("n1"))
	g := o.g()
	r := o.apply(t0, &havenv1.Command{Cmd: &havenv1.Command_AssignGroup{AssignGroup: &havenv1.AssignGroupCommand{
		Name: "web", ExpectEpoch: g.GetEpoch(), ExpectDesiredIndex: g.GetDesiredIndex(), Owner: "n2", State: havenv1.GroupState_GROUP_STATE_STARTING,
		Failure: &havenv1.GroupFailure{Node: "n1", Reason: "start failed"}}}})
	ok(t, "failover after a failure", r)
	if fs := o.g().GetFailures(); len(fs) != 1 || fs[0].GetNode() != "n1" {
		t.Fatalf("failures: %v", fs)
	}
	ok(t, "stop", o.stop())
	ok(t, "offline", o.report("n2", 3, o.g().GetDesiredIndex(), havenv1.GroupState_GROUP_STATE_OFFLINE))
	ok(t, "start", o.start("n1"))
	if fs := o.g().GetFailures(); len(fs) != 0 {
		t.Fatalf("an operator's start keeps failures: %v", fs)
	}
}

func TestDiskBelongsToOneGroup(t *testing.T) {
	a := &applier{t: t, f: New()}
	ok(t, "create web", a.apply(t0, createCmd("c1", "web")))
	other := testSpec("db")
	other.Resources[1].Disk.Path = "web/disk0.img"
	r := a.apply(t0, &havenv1.Command{Cmd: &havenv1.Command_CreateGroup{CreateGroup: &havenv1.CreateGroupCommand{Spec: other}}})
	if r.Err == nil || r.Err.Code != CodeAlreadyExists || !strings.Contains(r.Err.Msg, `belongs to group "web"`) {
		t.Fatalf("second group on web's disk: %+v", r)
	}
	if a.f.Group("db") != nil {
		t.Fatal("refused group was created")
	}
	// The holder is remembered across a snapshot.
	f2 := roundTrip(t, a.f)
	a2 := &applier{t: t, f: f2, index: a.index}
	r = a2.apply(t0, &havenv1.Command{Cmd: &havenv1.Command_CreateGroup{CreateGroup: &havenv1.CreateGroupCommand{Spec: other}}})
	if r.Err == nil || r.Err.Code != CodeAlreadyExists {
		t.Fatalf("after restore, second group on web's disk: %+v", r)
	}
	// Deleting the holder frees the disk.
	ok(t, "delete web", a2.apply(t0, deleteCmd("d", "web")))
	ok(t, "create db on the freed disk", a2.apply(t0, &havenv1.Command{Cmd: &havenv1.Command_CreateGroup{CreateGroup: &havenv1.CreateGroupCommand{Spec: other}}}))
}
