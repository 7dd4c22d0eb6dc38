package events

import (
	"bytes"
	"errors"
	"io"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/haven-ha/haven/fsm"
	"github.com/haven-ha/haven/heartbeat"
	"github.com/haven-ha/haven/internal/fsmtest"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// Every command the FSM applies reaches a subscriber as an event, in log
// order, refusals included.
func TestAppliesBecomeEvents(t *testing.T) {
	b := NewBroker()
	_, sub, _ := b.Watch(0, 16, nil)
	defer sub.Close()
	l := fsmtest.New(t)
	obs := Observe(l.FSM, b, nil)
	// The test's log applies through the observed FSM, as Raft would.
	apply := func(c *havenv1.Command) {
		t.Helper()
		c.Time = nil
		data, err := encode(c)
		if err != nil {
			t.Fatal(err)
		}
		obs.Apply(raftLog(l.FSM.Index()+1, data))
	}
	apply(&havenv1.Command{Cmd: &havenv1.Command_CreateGroup{CreateGroup: &havenv1.CreateGroupCommand{Spec: fsmtest.VMGroup("web")}}})
	g := l.FSM.Group("web")
	apply(&havenv1.Command{Cmd: &havenv1.Command_AssignGroup{AssignGroup: &havenv1.AssignGroupCommand{
		Name: "web", ExpectEpoch: g.GetEpoch(), ExpectDesiredIndex: g.GetDesiredIndex(), Owner: "n1",
		State: havenv1.GroupState_GROUP_STATE_STARTING, Desired: havenv1.DesiredState_DESIRED_STATE_RUN}}})
	apply(&havenv1.Command{Cmd: &havenv1.Command_DeleteGroup{DeleteGroup: &havenv1.DeleteGroupCommand{Name: "web"}}})
	// A batch: one event per assignment, the stale one refused.
	g = l.FSM.Group("web")
	apply(&havenv1.Command{Cmd: &havenv1.Command_AssignGroups{AssignGroups: &havenv1.AssignGroupsCommand{Assignments: []*havenv1.AssignGroupCommand{
		{Name: "web", ExpectEpoch: g.GetEpoch(), ExpectDesiredIndex: g.GetDesiredIndex(), Owner: "n2", State: havenv1.GroupState_GROUP_STATE_STARTING},
		{Name: "web", ExpectEpoch: g.GetEpoch(), ExpectDesiredIndex: g.GetDesiredIndex(), Owner: "n3", State: havenv1.GroupState_GROUP_STATE_STARTING},
	}}}})

	want := []struct {
		kind    Kind
		refused bool
	}{{"create-group", false}, {"assign-group", false}, {"delete-group", true}, {"assign-group", false}, {"assign-group", true}}
	for i, w := range want {
		select {
		case e := <-sub.C():
			if e.Kind != w.kind || e.Group != "web" || e.Index != uint64(min(i, 3)+1) || (e.Refused != "") != w.refused {
				t.Errorf("event %d: %+v, want %s refused=%v", i, e, w.kind, w.refused)
			}
			if e.Kind == "assign-group" && i == 3 && (e.Node != "n2" || e.Epoch != g.GetEpoch()+1) {
				t.Errorf("assignment event %+v, want n2 at epoch %d", e, g.GetEpoch()+1)
			}
		case <-time.After(time.Second):
			t.Fatalf("event %d (%s) not delivered", i, w.kind)
		}
	}
}

// A subscriber that does not read loses events, counted, and never blocks
// the apply path; the others still get every event.
func TestSlowSubscriberNeverBlocks(t *testing.T) {
	b := NewBroker()
	_, slow, _ := b.Watch(0, 2, nil)
	_, fast, _ := b.Watch(0, 100, nil)
	_, nodes, _ := b.Watch(0, 100, func(e Event) bool { return e.Node == "n2" })
	done := make(chan struct{})
	go func() {
		for i := 0; i < 50; i++ {
			name := "n1"
			if i%10 == 0 {
				name = "n2"
			}
			b.Publish(FromMembership(heartbeat.Event{Type: heartbeat.EventJoin, Member: heartbeat.Member{Name: name}}))
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		t.Fatal("Publish blocked on a subscriber that does not read")
	}
	if len(fast.C()) != 50 || len(nodes.C()) != 5 {
		t.Errorf("fast got %d of 50, the n2 filter %d of 5", len(fast.C()), len(nodes.C()))
	}
	if slow.Dropped() != 48 || b.Dropped() != 48 {
		t.Errorf("dropped %d (broker %d), want 48", slow.Dropped(), b.Dropped())
	}
	if e := <-fast.C(); e.Kind != "member-join" || e.Node != "n2" {
		t.Errorf("first event %+v", e)
	}
	slow.Close()
	slow.Close()
	// What was buffered can still be read; then the channel is closed.
	n := 0
	for range slow.C() {
		n++
	}
	if n != 2 {
		t.Errorf("read %d buffered events after Close, want 2", n)
	}
	b.Publish(Event{Kind: "after-close"})
	if b.Dropped() != 48 {
		t.Error("a closed subscription still counts drops")
	}
}

// A watcher from an index gets the kept events after it, then the new
// ones, with nothing missed or repeated between the two; one asking for
// events no longer kept is told so.
func TestWatchResumesFromAnIndex(t *testing.T) {
	b := NewBroker()
	for i := uint64(10); i < 10+Keep+5; i++ {
		b.Publish(Event{Kind: "assign-group", Index: i, Group: "web"})
	}
	b.Publish(Event{Kind: MemberFailed, Node: "n2"}) // not kept: no index
	first := uint64(10 + 5)                          // the five oldest were let go
	replay, sub, err := b.Watch(first+Keep-3, 8, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if len(replay) != 2 || replay[0].Index != first+Keep-2 || replay[1].Index != first+Keep-1 {
		t.Fatalf("replay %+v, want the last two kept", replay)
	}
	b.Publish(Event{Kind: "stop-group", Index: first + Keep, Group: "web"})
	if e := <-sub.C(); e.Index != first+Keep {
		t.Fatalf("after the replay: %+v", e)
	}
	// That let the oldest kept event go: first+1 is the oldest now.
	if _, s, err := b.Watch(first, 8, nil); err != nil {
		t.Fatalf("from the index just before the oldest kept: %v", err)
	} else {
		s.Close()
	}
	var ce *CompactedError
	if _, _, err := b.Watch(first-1, 8, nil); !errors.As(err, &ce) || ce.KeptFrom != first+1 {
		t.Fatalf("from an index no longer kept: %v", err)
	}
	all, s2, err := b.Watch(0, 8, func(e Event) bool { return e.Index%1000 == 0 })
	if err != nil {
		t.Fatal(err)
	}
	s2.Close()
	if len(all) != 4 {
		t.Fatalf("every kept event with a filter: %d, want 4 (1000, 2000, 3000, 4000)", len(all))
	}
}

// A retried request the FSM already applied changes nothing, so it makes
// no event: a watcher sees each change once.
func TestDuplicateRequestMakesNoEvent(t *testing.T) {
	b := NewBroker()
	l := fsmtest.New(t)
	obs := Observe(l.FSM, b, nil)
	for i := 0; i < 2; i++ {
		data, err := encode(&havenv1.Command{RequestId: "r1", Cmd: &havenv1.Command_CreateGroup{CreateGroup: &havenv1.CreateGroupCommand{Spec: fsmtest.VMGroup("web")}}})
		if err != nil {
			t.Fatal(err)
		}
		obs.Apply(raftLog(l.FSM.Index()+1, data))
	}
	kept, sub, err := b.Watch(0, 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	sub.Close()
	if len(kept) != 1 || kept[0].Index != 1 || kept[0].Kind != "create-group" {
		t.Fatalf("events %+v, want one create-group at index 1", kept)
	}
}

// A move's commands become events of its group: begun on the source, its
// phases, committed to the target at the target epoch, ended with the
// outcome.
func TestMoveEvents(t *testing.T) {
	b := NewBroker()
	_, sub, _ := b.Watch(0, 16, func(e Event) bool { return e.Group == "web" })
	defer sub.Close()
	l := fsmtest.New(t)
	l.AddNode(fsmtest.Node("n1", "a", 8000, 16<<30, nil))
	l.AddNode(fsmtest.Node("n2", "a", 8000, 16<<30, nil))
	l.StartOn("web", "n1")
	obs := Observe(l.FSM, b, nil)
	apply := func(c *havenv1.Command) {
		t.Helper()
		data, err := encode(c)
		if err != nil {
			t.Fatal(err)
		}
		obs.Apply(raftLog(l.FSM.Index()+1, data))
	}
	g := l.FSM.Group("web")
	apply(&havenv1.Command{Cmd: &havenv1.Command_BeginMove{BeginMove: &havenv1.BeginMoveCommand{
		Operation:   &havenv1.Operation{Id: "mv-1", Group: "web", Kind: havenv1.MoveKind_MOVE_KIND_LIVE, Source: "n1", Target: "n2", Cause: "operator"},
		ExpectEpoch: g.GetEpoch(), ExpectDesiredIndex: g.GetDesiredIndex()}}})
	apply(&havenv1.Command{Cmd: &havenv1.Command_MoveProgress{MoveProgress: &havenv1.MoveProgressCommand{Id: "mv-1", Phase: havenv1.OperationPhase_OPERATION_PHASE_PRECOPY}}})
	apply(&havenv1.Command{Cmd: &havenv1.Command_CommitMove{CommitMove: &havenv1.CommitMoveCommand{Id: "mv-1", Checksum: 1}}})
	apply(&havenv1.Command{Cmd: &havenv1.Command_EndMove{EndMove: &havenv1.EndMoveCommand{Id: "mv-1", Outcome: havenv1.OperationOutcome_OPERATION_OUTCOME_COMPLETED, Reason: "done"}}})
	want := []Event{
		{Kind: "begin-move", Node: "n1", Epoch: g.GetEpoch(), State: "SETUP"},
		{Kind: "move-progress", Node: "n1", Epoch: g.GetEpoch(), State: "PRECOPY"},
		{Kind: "commit-move", Node: "n2", Epoch: g.GetEpoch() + 1, State: "COMMITTED"},
		{Kind: "end-move", Node: "n2", Epoch: g.GetEpoch() + 1, State: "COMPLETED"},
	}
	for i, w := range want {
		select {
		case e := <-sub.C():
			if e.Kind != w.Kind || e.Node != w.Node || e.Epoch != w.Epoch || e.State != w.State || e.Refused != "" {
				t.Errorf("event %d: %+v, want %+v", i, e, w)
			}
		case <-time.After(time.Second):
			t.Fatalf("event %d (%s) not delivered", i, w.Kind)
		}
	}
}

// A disk change shows as attach-disk (or detach-disk) and the owner's
// end-disk-change, with its outcome.
func TestDiskChangeEvents(t *testing.T) {
	b := NewBroker()
	_, sub, _ := b.Watch(0, 16, func(e Event) bool { return e.Group == "web" })
	defer sub.Close()
	l := fsmtest.New(t)
	g := l.StartOn("web", "n1")
	obs := Observe(l.FSM, b, nil)
	apply := func(c *havenv1.Command) {
		t.Helper()
		data, err := encode(c)
		if err != nil {
			t.Fatal(err)
		}
		obs.Apply(raftLog(l.FSM.Index()+1, data))
	}
	apply(&havenv1.Command{Cmd: &havenv1.Command_AttachDisk{AttachDisk: &havenv1.AttachDiskCommand{Group: "web", ExpectEpoch: g.GetEpoch(),
		Disk: &havenv1.Resource{Name: "data", Kind: havenv1.ResourceKind_RESOURCE_KIND_DISK, Disk: &havenv1.DiskSpec{Path: "web/data.img", SizeBytes: 1}}}}})
	index := l.FSM.Index()
	apply(&havenv1.Command{Cmd: &havenv1.Command_EndDiskChange{EndDiskChange: &havenv1.EndDiskChangeCommand{Group: "web", Index: index, Node: "n1", Epoch: g.GetEpoch(),
		Outcome: havenv1.DiskChangeOutcome_DISK_CHANGE_OUTCOME_APPLIED, Reason: "attached"}}})
	apply(&havenv1.Command{Cmd: &havenv1.Command_DetachDisk{DetachDisk: &havenv1.DetachDiskCommand{Group: "web", Disk: "vm", ExpectEpoch: g.GetEpoch()}}})
	want := []Event{
		{Kind: "attach-disk", Epoch: g.GetEpoch(), Reason: "attach disk data (web/data.img)"},
		{Kind: "end-disk-change", Node: "n1", Epoch: g.GetEpoch(), State: "APPLIED", Reason: "attached"},
		{Kind: "detach-disk", Epoch: g.GetEpoch(), Reason: "detach disk vm", Refused: `resource "vm" of group "web" is no disk (vm)`},
	}
	for i, w := range want {
		select {
		case e := <-sub.C():
			if e.Kind != w.Kind || e.Node != w.Node || e.Epoch != w.Epoch || e.State != w.State || e.Reason != w.Reason || e.Refused != w.Refused {
				t.Errorf("event %d: %+v, want %+v", i, e, w)
			}
		case <-time.After(time.Second):
			t.Fatalf("event %d (%s) not delivered", i, w.Kind)
		}
	}
}

// A failover's batch shows the fence of the failed node first, then each
// group taken off it as a failover, all at the batch's index; a batch
// without fences stays a set of assignments.
func TestFailoverEvents(t *testing.T) {
	b := NewBroker()
	_, sub, _ := b.Watch(0, 16, nil)
	defer sub.Close()
	l := fsmtest.New(t)
	obs := Observe(l.FSM, b, nil)
	apply := func(c *havenv1.Command) {
		t.Helper()
		c.Time = timestamppb.New(time.Unix(100, 0))
		data, err := encode(c)
		if err != nil {
			t.Fatal(err)
		}
		obs.Apply(raftLog(l.FSM.Index()+1, data))
	}
	for _, name := range []string{"a", "b"} {
		apply(&havenv1.Command{Cmd: &havenv1.Command_CreateGroup{CreateGroup: &havenv1.CreateGroupCommand{Spec: fsmtest.VMGroup(name)}}})
		g := l.FSM.Group(name)
		apply(&havenv1.Command{Cmd: &havenv1.Command_AssignGroup{AssignGroup: &havenv1.AssignGroupCommand{
			Name: name, ExpectEpoch: g.GetEpoch(), ExpectDesiredIndex: g.GetDesiredIndex(), Owner: "n3",
			State: havenv1.GroupState_GROUP_STATE_STARTING, Desired: havenv1.DesiredState_DESIRED_STATE_RUN}}})
	}
	for range 4 {
		<-sub.C()
	}
	ga, gb := l.FSM.Group("a"), l.FSM.Group("b")
	apply(&havenv1.Command{Cmd: &havenv1.Command_AssignGroups{AssignGroups: &havenv1.AssignGroupsCommand{
		Assignments: []*havenv1.AssignGroupCommand{
			{Name: "a", ExpectEpoch: ga.GetEpoch(), ExpectDesiredIndex: ga.GetDesiredIndex(), Owner: "n1", State: havenv1.GroupState_GROUP_STATE_STARTING, Reason: "failed over from n3"},
			{Name: "b", ExpectEpoch: gb.GetEpoch(), ExpectDesiredIndex: gb.GetDesiredIndex(), State: havenv1.GroupState_GROUP_STATE_FAILED, Reason: "owner n3 failed and no node can host it"},
		},
		Fences: []*havenv1.NodeFence{{Node: "n3", LastGrant: timestamppb.New(time.Unix(96, 0)), FencedAt: timestamppb.New(time.Unix(97, 800e6)), Groups: []string{"a", "b"}}},
	}}})
	want := []struct {
		kind        Kind
		group, node string
	}{{NodeFenced, "", "n3"}, {Failover, "a", "n1"}, {Failover, "b", ""}}
	for i, w := range want {
		select {
		case e := <-sub.C():
			if e.Kind != w.kind || e.Group != w.group || e.Node != w.node || e.Index != 5 || e.Refused != "" {
				t.Errorf("event %d: %+v, want %s of group %q node %q at index 5", i, e, w.kind, w.group, w.node)
			}
			if e.Kind == NodeFenced && e.Reason != "no lease since 00:01:36.000, fenced from 00:01:37.800: 2 group(s) taken off (a, b)" {
				t.Errorf("fence reason %q", e.Reason)
			}
		case <-time.After(time.Second):
			t.Fatalf("event %d (%s) not delivered", i, w.kind)
		}
	}
}

// A snapshot restored calls OnApply's f, as a command applied does: what
// the node runs may have changed.
func TestRestoreCallsOnApply(t *testing.T) {
	l := fsmtest.New(t)
	l.Run(&havenv1.Command{Cmd: &havenv1.Command_CreateGroup{CreateGroup: &havenv1.CreateGroupCommand{Spec: fsmtest.VMGroup("web")}}})
	snap, err := l.FSM.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var sink memSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	obs := Observe(fsm.New(), NewBroker(), nil)
	var calls atomic.Int32
	f := func() { calls.Add(1) }
	obs.OnApply(f)
	if err := obs.Restore(io.NopCloser(&sink.Buffer)); err != nil {
		t.Fatal(err)
	}
	if calls.Load() != 1 || obs.Group("web") == nil {
		t.Fatalf("after the restore: %d calls, group %v", calls.Load(), obs.Group("web"))
	}
}

type memSink struct{ bytes.Buffer }

func (*memSink) ID() string    { return "mem" }
func (*memSink) Cancel() error { return nil }
func (*memSink) Close() error  { return nil }
