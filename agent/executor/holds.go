package executor

import (
	"context"
	"slices"
	"sync"

	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// Holds, for fault-injection tests: a test arms a hold at a phase of a
// move (HoldMoves), learns which moves have reached it (MoveHolds), strikes
// (kills a node, cuts a link) knowing where the move stands, and lets the
// moves go on (ReleaseMoves). The node service offers them only with
// sim.fault_injection set; unarmed, a phase costs a map lookup.
//
// The source's phases (setup, precopy, frozen) are reached by the
// goroutine of the leader's MoveOut call, which waits there until the hold
// is released or the call's context ends: the leader's stream is gone,
// and the move fails as it would have failed at that point. The target's
// phases (committed, resumed) are reached by the executor's loop, which
// must not wait there, since it runs every group of the node: it passes
// the held move by, and tries again at its next look, until the hold is
// released.

// holds are the armed holds of a node, by phase.
type holds struct {
	mu    sync.Mutex
	armed map[havenv1.MoveHoldPhase]*hold
}

// hold is one armed phase: released is closed by its release, ops lists
// the moves that reached it, first first.
type hold struct {
	released chan struct{}
	ops      []string
}

// reach records that op reached phase and returns the hold's release,
// nil if the phase is not armed, and whether op is new to the hold.
func (h *holds) reach(phase havenv1.MoveHoldPhase, op string) (<-chan struct{}, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	hd := h.armed[phase]
	if hd == nil {
		return nil, false
	}
	if slices.Contains(hd.ops, op) {
		return hd.released, false
	}
	hd.ops = append(hd.ops, op)
	return hd.released, true
}

// HoldMoves arms a hold at phase: every move that reaches it on this
// node stops there until ReleaseMoves. Arming an armed phase changes
// nothing. It returns every armed hold.
func (e *Executor) HoldMoves(phase havenv1.MoveHoldPhase) []*havenv1.MoveHold {
	h := &e.holds
	h.mu.Lock()
	if h.armed == nil {
		h.armed = map[havenv1.MoveHoldPhase]*hold{}
	}
	if h.armed[phase] == nil {
		h.armed[phase] = &hold{released: make(chan struct{})}
		e.log.Info("move hold armed (fault injection)", "phase", phase)
	}
	h.mu.Unlock()
	return e.MoveHolds()
}

// MoveHolds lists the armed holds, by phase, with the moves that reached
// each.
func (e *Executor) MoveHolds() []*havenv1.MoveHold {
	h := &e.holds
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]*havenv1.MoveHold, 0, len(h.armed))
	for phase, hd := range h.armed {
		out = append(out, &havenv1.MoveHold{Phase: phase, Operations: slices.Clone(hd.ops)})
	}
	slices.SortFunc(out, func(a, b *havenv1.MoveHold) int { return int(a.GetPhase()) - int(b.GetPhase()) })
	return out
}

// ReleaseMoves disarms the hold at phase, or every hold for
// MOVE_HOLD_PHASE_UNSPECIFIED, and lets the moves it holds go on. It
// returns the holds released.
func (e *Executor) ReleaseMoves(phase havenv1.MoveHoldPhase) []*havenv1.MoveHold {
	h := &e.holds
	h.mu.Lock()
	var out []*havenv1.MoveHold
	for p, hd := range h.armed {
		if phase != havenv1.MoveHoldPhase_MOVE_HOLD_PHASE_UNSPECIFIED && p != phase {
			continue
		}
		close(hd.released)
		delete(h.armed, p)
		out = append(out, &havenv1.MoveHold{Phase: p, Operations: hd.ops})
		e.log.Info("move hold released (fault injection)", "phase", p, "operations", hd.ops)
	}
	h.mu.Unlock()
	slices.SortFunc(out, func(a, b *havenv1.MoveHold) int { return int(a.GetPhase()) - int(b.GetPhase()) })
	e.poke() // a target's held move goes on at once
	return out
}

// waitHold holds move op at a source's phase, if armed, until the hold is
// released or ctx ends; it returns ctx's error in the second case.
func (e *Executor) waitHold(ctx context.Context, phase havenv1.MoveHoldPhase, op string) error {
	released, _ := e.holds.reach(phase, op)
	if released == nil {
		return nil
	}
	e.log.Info("move held (fault injection)", "phase", phase, "operation", op)
	select {
	case <-released:
		return nil
	case <-ctx.Done():
		e.log.Info("held move cancelled (fault injection)", "phase", phase, "operation", op)
		return context.Cause(ctx)
	}
}

// held reports whether move op is held at a target's phase: armed and not
// released. The executor's loop passes the move by while it is.
func (e *Executor) held(phase havenv1.MoveHoldPhase, op string) bool {
	released, first := e.holds.reach(phase, op)
	if released == nil {
		return false
	}
	if first {
		e.log.Info("move held (fault injection)", "phase", phase, "operation", op)
	}
	select {
	case <-released:
		return false
	default:
		return true
	}
}
