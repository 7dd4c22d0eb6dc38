package executor

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/haven-ha/haven/driver"
	"github.com/haven-ha/haven/internal/fsmtest"
	"github.com/haven-ha/haven/internal/logging/logtest"
	"github.com/haven-ha/haven/internal/waitfor"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

const (
	holdSetup     = havenv1.MoveHoldPhase_MOVE_HOLD_PHASE_SETUP
	holdFrozen    = havenv1.MoveHoldPhase_MOVE_HOLD_PHASE_FROZEN
	holdCommitted = havenv1.MoveHoldPhase_MOVE_HOLD_PHASE_COMMITTED
	holdResumed   = havenv1.MoveHoldPhase_MOVE_HOLD_PHASE_RESUMED
)

// switchDriver is a fakeDriver with Switcher's Activate.
type switchDriver struct {
	*fakeDriver
	activated int
}

func (d *switchDriver) Activate(id driver.VMID, epoch uint64, end time.Time) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	st := d.vms[id]
	if st.State != driver.StateIncoming || st.Epoch != epoch {
		return driver.ErrInvalidState
	}
	st.State, st.LeaseEnd = driver.StateRunning, end
	d.vms[id] = st
	d.activated++
	return nil
}

func (d *switchDriver) Resume(driver.VMID, uint64, time.Time) error { return driver.ErrInvalidState }

// A source's hold waits until released, or until the move's context
// ends, which it returns; an unarmed phase does not wait.
func TestHoldAtTheSource(t *testing.T) {
	e := New(Config{Node: "n1", Logger: logtest.New(t)})
	ctx := context.Background()
	if err := e.waitHold(ctx, holdSetup, "mv-1"); err != nil {
		t.Fatalf("unarmed hold: %v", err)
	}
	e.HoldMoves(holdSetup)
	e.HoldMoves(holdFrozen)
	done := make(chan error, 1)
	go func() { done <- e.waitHold(ctx, holdSetup, "mv-1") }()
	waitHeld(t, e, holdSetup, "mv-1")
	select {
	case err := <-done:
		t.Fatalf("hold ended before its release: %v", err)
	default:
	}
	if rel := e.ReleaseMoves(holdSetup); len(rel) != 1 || rel[0].GetOperations()[0] != "mv-1" {
		t.Fatalf("released %v, want setup holding mv-1", rel)
	}
	if err := <-done; err != nil {
		t.Fatalf("released hold: %v", err)
	}
	// The leader's stream ends: the hold ends with the move's context.
	cctx, cancel := context.WithCancelCause(ctx)
	go func() { done <- e.waitHold(cctx, holdFrozen, "mv-2") }()
	waitHeld(t, e, holdFrozen, "mv-2")
	stream := errors.New("the leader's stream ended")
	cancel(stream)
	if err := <-done; !errors.Is(err, stream) {
		t.Fatalf("hold of a cancelled move: %v, want its cause", err)
	}
	if h := e.MoveHolds(); len(h) != 1 || h[0].GetPhase() != holdFrozen {
		t.Fatalf("holds %v: the frozen hold stays armed until released", h)
	}
	e.ReleaseMoves(havenv1.MoveHoldPhase_MOVE_HOLD_PHASE_UNSPECIFIED)
	if h := e.MoveHolds(); len(h) != 0 {
		t.Fatalf("holds %v after releasing all", h)
	}
}

func waitHeld(t *testing.T, e *Executor, phase havenv1.MoveHoldPhase, op string) {
	t.Helper()
	waitfor.Cond(t, 10*time.Second, op+" held at "+phase.String(), func() bool {
		for _, h := range e.MoveHolds() {
			if h.GetPhase() == phase && slices.Contains(h.GetOperations(), op) {
				return true
			}
		}
		return false
	})
}

// A target's holds: a committed move's VM is not activated while held at
// committed, and its group not reported online while held at resumed;
// each goes on at the next pass after the release.
func TestHoldAtTheTarget(t *testing.T) {
	l := fsmtest.New(t)
	for _, n := range []string{"n1", "n2"} {
		l.AddNode(fsmtest.Node(n, "a", 8000, 64<<30, nil))
	}
	g := l.StartOn("web", "n2")
	l.Run(&havenv1.Command{Cmd: &havenv1.Command_BeginMove{BeginMove: &havenv1.BeginMoveCommand{
		Operation:   &havenv1.Operation{Id: "mv-1", Group: "web", Kind: havenv1.MoveKind_MOVE_KIND_LIVE, Source: "n2", Target: "n1"},
		ExpectEpoch: g.GetEpoch(), ExpectDesiredIndex: g.GetDesiredIndex()}}})
	l.Run(&havenv1.Command{Cmd: &havenv1.Command_CommitMove{CommitMove: &havenv1.CommitMoveCommand{Id: "mv-1", Checksum: 7}}})
	g = l.FSM.Group("web")
	id := driver.VMID{Group: "web", Resource: "vm"}
	d := &switchDriver{fakeDriver: &fakeDriver{vms: map[driver.VMID]driver.Status{
		id: {ID: id, Epoch: g.GetEpoch(), State: driver.StateIncoming},
	}}}
	var reports []*havenv1.ReportGroupRequest
	e := New(Config{Node: "n1", State: l.FSM, Driver: d, Logger: logtest.New(t), Report: func(_ context.Context, r *havenv1.ReportGroupRequest) error {
		reports = append(reports, r)
		return nil
	}})
	e.Granted(time.Now().Add(time.Minute), []*havenv1.GroupEpoch{{Name: "web", Epoch: g.GetEpoch()}})
	ctx := context.Background()

	e.HoldMoves(holdCommitted)
	e.HoldMoves(holdResumed)
	for range 3 {
		e.reconcile(ctx)
	}
	if d.activated != 0 {
		t.Fatal("activated while held at committed")
	}
	waitHeld(t, e, holdCommitted, "mv-1")
	e.ReleaseMoves(holdCommitted)
	e.reconcile(ctx)
	if d.activated != 1 {
		t.Fatal("not activated after the release")
	}
	for range 3 {
		e.reconcile(ctx)
	}
	if len(reports) != 0 {
		t.Fatalf("reported %v while held at resumed", reports)
	}
	waitHeld(t, e, holdResumed, "mv-1")
	e.ReleaseMoves(holdResumed)
	e.reconcile(ctx)
	if len(reports) != 1 || reports[0].GetState() != havenv1.GroupState_GROUP_STATE_ONLINE || reports[0].GetEpoch() != g.GetEpoch() {
		t.Fatalf("reports %v after the release, want online at epoch %d", reports, g.GetEpoch())
	}
}
