package fsm

import (
	"fmt"
	"testing"

	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// movable is a group online on a and nodes a and b to move it between.
func movable(t *testing.T) *groupOps {
	o := newGroupOps(t)
	for _, n := range []string{"a", "b"} {
		ok(t, "node "+n, o.apply(t0, &havenv1.Command{Cmd: &havenv1.Command_UpsertNode{UpsertNode: &havenv1.UpsertNodeCommand{Node: &havenv1.Node{Name: n}}}}))
	}
	ok(t, "start", o.start("a"))
	g := o.g()
	ok(t, "online", o.report("a", g.GetEpoch(), g.GetDesiredIndex(), havenv1.GroupState_GROUP_STATE_ONLINE))
	return o
}

func (o *groupOps) begin(id, to string) *Result {
	g := o.g()
	return o.apply(t0, &havenv1.Command{Cmd: &havenv1.Command_BeginMove{BeginMove: &havenv1.BeginMoveCommand{
		Operation:   &havenv1.Operation{Id: id, Group: o.name, Kind: havenv1.MoveKind_MOVE_KIND_LIVE, Source: g.GetOwner(), Target: to},
		ExpectEpoch: g.GetEpoch(), ExpectDesiredIndex: g.GetDesiredIndex()}}})
}

func (o *groupOps) progress(id string, ph havenv1.OperationPhase) *Result {
	return o.apply(t0, &havenv1.Command{Cmd: &havenv1.Command_MoveProgress{MoveProgress: &havenv1.MoveProgressCommand{
		Id: id, Phase: ph, Progress: &havenv1.MoveProgress{Round: 2}}}})
}

func (o *groupOps) commit(id string) *Result {
	return o.apply(t0, &havenv1.Command{Cmd: &havenv1.Command_CommitMove{CommitMove: &havenv1.CommitMoveCommand{Id: id, Checksum: 42}}})
}

func (o *groupOps) end(id string, out havenv1.OperationOutcome) *Result {
	return o.apply(t0, &havenv1.Command{Cmd: &havenv1.Command_EndMove{EndMove: &havenv1.EndMoveCommand{Id: id, Outcome: out, Reason: "test"}}})
}

// The switchover is one compare-and-set: the target owns the group at the
// source epoch plus one from the commit on, and the target's report of it
// online completes the move.
func TestMoveCommitsThenCompletes(t *testing.T) {
	o := movable(t)
	e := o.g().GetEpoch()
	ok(t, "begin", o.begin("op1", "b"))
	if g := o.g(); g.GetOperation() != "op1" || g.GetOwner() != "a" || g.GetEpoch() != e {
		t.Fatalf("begun: %v", g)
	}
	ok(t, "precopy", o.progress("op1", phasePrecopy))
	ok(t, "switchover", o.progress("op1", phaseSwitchover))
	refused(t, "phase back", o.progress("op1", phasePrecopy))
	ok(t, "commit", o.commit("op1"))
	g := o.g()
	if g.GetOwner() != "b" || g.GetEpoch() != e+1 || g.GetState() != havenv1.GroupState_GROUP_STATE_STARTING {
		t.Fatalf("committed: %v", g)
	}
	ok(t, "commit again", o.commit("op1"))
	// The leader commits progress beside the move's stream: a report
	// that reaches the log after the commit is refused.
	refused(t, "progress after commit", o.progress("op1", phaseSwitchover))
	refused(t, "rollback after commit", o.end("op1", outcomeRolledBack))
	refused(t, "cancel after commit", o.end("op1", outcomeCancelled))
	refused(t, "source report", o.report("a", e, g.GetDesiredIndex(), havenv1.GroupState_GROUP_STATE_ONLINE))
	ok(t, "target online", o.report("b", e+1, g.GetDesiredIndex(), havenv1.GroupState_GROUP_STATE_ONLINE))
	op := o.f.Operation("op1")
	if op.GetPhase() != phaseFinished || op.GetOutcome() != outcomeCompleted || op.GetChecksum() != 42 || o.g().GetOperation() != "" {
		t.Fatalf("after target online: op %v, group %v", op, o.g())
	}
}

// Whichever of a cancel and a commit reaches the log first wins; the
// other changes nothing.
func TestMoveCancelAndCommitExclude(t *testing.T) {
	o := movable(t)
	e := o.g().GetEpoch()
	ok(t, "begin", o.begin("op1", "b"))
	ok(t, "cancel", o.end("op1", outcomeCancelled))
	refused(t, "commit after cancel", o.commit("op1"))
	if g := o.g(); g.GetOwner() != "a" || g.GetEpoch() != e || g.GetOperation() != "" || g.GetState() != havenv1.GroupState_GROUP_STATE_ONLINE {
		t.Fatalf("after cancel: %v", g)
	}
	refused(t, "complete a rolled back move", o.end("op1", outcomeCompleted))
	ok(t, "begin again", o.begin("op2", "b"))
}

func TestMoveRefusals(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(o *groupOps)
		id    string
		to    string
		code  Code
	}{
		{"empty id", nil, "", "b", CodeInvalidArgument},
		{"to itself", nil, "op", "a", CodeInvalidArgument},
		{"unknown target", nil, "op", "zz", CodeFailedPrecondition},
		{"second move", func(o *groupOps) { ok(o.t, "first", o.begin("op0", "b")) }, "op", "b", CodeFailedPrecondition},
		{"stopped group", func(o *groupOps) { ok(o.t, "stop", o.stop()) }, "op", "b", CodeFailedPrecondition},
		{"planned restart", func(o *groupOps) { g := o.g(); ok(o.t, "restart", o.move(g.GetEpoch(), g.GetDesiredIndex(), "b")) }, "op", "b", CodeFailedPrecondition},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := movable(t)
			if tc.setup != nil {
				tc.setup(o)
			}
			before := o.g()
			r := o.begin(tc.id, tc.to)
			if r.Err == nil || r.Err.Code != tc.code {
				t.Fatalf("begin: %+v, want code %s", r.Err, tc.code)
			}
			if o.f.Operation(tc.id) != nil && tc.id != "op0" {
				t.Fatalf("refused move recorded")
			}
			if after := o.g(); after.GetModifyIndex() != before.GetModifyIndex() {
				t.Fatalf("refused move changed the group: %v", after)
			}
		})
	}
}

// Another change of owner or an operator's stop ends a move in flight: a
// failover before the commit voids it, a stop cancels it, and after the
// commit either leaves it completed.
func TestMoveEndedByOtherCommands(t *testing.T) {
	t.Run("failover before commit", func(t *testing.T) {
		o := movable(t)
		ok(t, "begin", o.begin("op1", "b"))
		g := o.g()
		ok(t, "failover", o.assign(g.GetEpoch(), g.GetDesiredIndex(), "b", havenv1.GroupState_GROUP_STATE_STARTING))
		if op := o.f.Operation("op1"); op.GetOutcome() != outcomeRolledBack || o.g().GetOperation() != "" {
			t.Fatalf("op %v group %v", op, o.g())
		}
		refused(t, "commit", o.commit("op1"))
	})
	t.Run("stop before commit", func(t *testing.T) {
		o := movable(t)
		ok(t, "begin", o.begin("op1", "b"))
		ok(t, "stop", o.stop())
		if op := o.f.Operation("op1"); op.GetOutcome() != outcomeCancelled || o.g().GetOwner() != "a" || o.g().GetState() != havenv1.GroupState_GROUP_STATE_STOPPING {
			t.Fatalf("op %v group %v", op, o.g())
		}
	})
	t.Run("stop after commit", func(t *testing.T) {
		o := movable(t)
		ok(t, "begin", o.begin("op1", "b"))
		ok(t, "commit", o.commit("op1"))
		ok(t, "stop", o.stop())
		if op := o.f.Operation("op1"); op.GetOutcome() != outcomeCompleted || o.g().GetOwner() != "b" {
			t.Fatalf("op %v group %v", op, o.g())
		}
	})
}

// Finished moves are kept up to KeptOperations, oldest forgotten first,
// also across a snapshot.
func TestFinishedMovesBounded(t *testing.T) {
	o := movable(t)
	for i := range KeptOperations + 3 {
		id := fmt.Sprintf("op%04d", i)
		ok(t, "begin", o.begin(id, "b"))
		ok(t, "cancel", o.end(id, outcomeCancelled))
	}
	ok(t, "begin in flight", o.begin("live", "b"))
	ops := o.f.Operations()
	if len(ops) != KeptOperations+1 || ops[0].GetId() != "op0003" || ops[len(ops)-1].GetId() != "live" {
		t.Fatalf("%d kept, first %s, last %s", len(ops), ops[0].GetId(), ops[len(ops)-1].GetId())
	}
	f := roundTrip(t, o.f)
	if got := f.Operations(); len(got) != len(ops) || !InFlight(f.Operation("live")) {
		t.Fatalf("after restore: %d ops", len(got))
	}
	o.f = f
	ok(t, "cancel after restore", o.end("live", outcomeCancelled))
	if f.Operation("op0003") != nil {
		t.Fatal("oldest finished move kept after restore")
	}
}
