package leader

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/haven-ha/haven/fsm"
	"github.com/haven-ha/haven/placement"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// Planned moves: a drain, a failback and the automatic balancer move a
// running group as an operator's MoveGroup does, without the guest
// noticing more than a switchover. A drain or a failback tries live where
// both nodes can (else quick), then quick once more, and only when both
// rolled back, or the nodes cannot migrate at all, restarts the group on
// its target (stop, then start: the guest reboots). The balancer moves
// only live and leaves a group that failed to move where it is: a reboot
// is never worth a better balance.
//
// Moves share the links: a node sends or receives at most MaxParallelMoves
// at once (placement.max_parallel_moves), so each move keeps enough of the
// link to converge. Hyper-V 2008 R2 allowed one per node; two keep a link
// busy between one move's rounds. The cap binds the moves the leader
// starts on its own; an operator's MoveGroup is not held back, but counts.

// DefaultMaxParallelMoves is placement.max_parallel_moves by default.
const DefaultMaxParallelMoves = 2

// The causes of planned moves, recorded in their operations.
const (
	causeDrain    = "drain"
	causeFailback = "failback"
	causeBalancer = "balancer"
)

// tries counts the planned moves a term started for a group at one epoch:
// a completed move or a restart changes the epoch and starts afresh. A new
// leader starts at zero, which only repeats a try.
type tries struct {
	mu sync.Mutex
	n  map[string]int
}

func triesKey(g *havenv1.Group) string {
	return fmt.Sprintf("%s@%d", g.GetSpec().GetName(), g.GetEpoch())
}

func (t *tries) get(key string) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.n[key]
}

func (t *tries) inc(key string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.n == nil {
		t.n = map[string]int{}
	}
	t.n[key]++
}

// refusals remembers the last refusal of each group's planned move, so a
// pass every 100 ms on an unchanged cluster logs it once.
type refusals struct {
	mu   sync.Mutex
	last map[string]string
}

func (r *refusals) note(log *slog.Logger, group, cause, to string, kind havenv1.MoveKind, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.last == nil {
		r.last = map[string]string{}
	}
	if r.last[group] == err.Error() {
		return
	}
	r.last[group] = err.Error()
	log.Warn("planned move refused", "cause", cause, "group", group, "to", to, "kind", kind, "error", err)
}

// movesBusy counts the moves in flight per node, as source or target.
func (l *Leader) movesBusy() map[string]int {
	busy := map[string]int{}
	for _, g := range l.state.Groups() {
		if id := g.GetOperation(); id != "" {
			if op := l.state.Operation(id); fsm.InFlight(op) {
				busy[op.GetSource()]++
				busy[op.GetTarget()]++
			}
		}
	}
	return busy
}

func (l *Leader) maxParallelMoves() int {
	if l.cfg.MaxParallelMoves > 0 {
		return l.cfg.MaxParallelMoves
	}
	return DefaultMaxParallelMoves
}

// planned is what plannedMove did.
type planned int

const (
	// started a move or a restart.
	started planned = iota
	// busy: the links are; the group waits for a move to end.
	busyLinks
	// notStarted: not committed, or an earlier term's try; the next pass
	// tries again.
	notStarted
	// refused: the move is not possible on this state (no room, the
	// reserve); tried again when the state changes.
	refused
)

// plannedMove moves g to `to` for cause, as the file's comment says.
// Called with placeMu held; busy is updated with what it starts.
func (l *Leader) plannedMove(t *term, g *havenv1.Group, to, cause string, busy map[string]int) planned {
	name, from := g.GetSpec().GetName(), g.GetOwner()
	key := triesKey(g)
	try := t.tries.get(key)
	kind := havenv1.MoveKind_MOVE_KIND_AUTO
	switch {
	case cause == causeBalancer && try > 0:
		return notStarted
	case cause == causeBalancer:
		kind = havenv1.MoveKind_MOVE_KIND_LIVE
	case try == 1:
		kind = havenv1.MoveKind_MOVE_KIND_QUICK
	}
	_, kindErr := moveKind(kind, l.state.Node(from), l.state.Node(to))
	mv := l.termMoves(t)
	if try >= 2 || kindErr != nil || mv == nil {
		if cause == causeBalancer {
			return notStarted
		}
		why := "the nodes cannot migrate a running group"
		if try >= 2 {
			why = "its moves rolled back"
		}
		if !l.plannedRestart(g, to, fmt.Sprintf("%s: restarting on %s (%s)", cause, to, why)) {
			return notStarted
		}
		return started
	}
	if max := l.maxParallelMoves(); busy[from] >= max || busy[to] >= max {
		return busyLinks
	}
	req := MoveRequest{Group: name, Target: to, Kind: kind, Cause: cause, RequestID: fmt.Sprintf("%s/%s/%d", cause, key, try)}
	if cause == causeDrain {
		// Wherever the reserve holds best, else where the drain placed it.
		req.Target, req.Fallback = "", to
	}
	op, err := l.beginMove(mv, req)
	var rf *refusal
	switch {
	case errors.As(err, &rf) || errors.Is(err, placement.ErrResourceExhausted):
		// A refusal is no try: it says nothing of the move, and the
		// restart that follows two tries must not get around it.
		t.refusals.note(l.log, name, cause, to, kind, err)
		return refused
	case err != nil:
		t.tries.inc(key)
		l.log.Warn("planned move not begun", "cause", cause, "group", name, "to", to, "error", err)
		return notStarted
	case !fsm.InFlight(op):
		// An earlier term's move of the same try, finished: the next
		// pass makes the next try.
		t.tries.inc(key)
		return notStarted
	}
	t.tries.inc(key)
	busy[from]++
	busy[op.GetTarget()]++
	if cause == causeBalancer {
		t.moves.record(name, from, to, time.Now())
	}
	return started
}

// plannedRestart stops g on its owner with move_to naming the target; once
// the owner reports it offline, finishMoves assigns it there at a new
// epoch. Two committed steps, so a leader change between them loses
// nothing.
func (l *Leader) plannedRestart(g *havenv1.Group, to, reason string) bool {
	name := g.GetSpec().GetName()
	if err := l.apply(&havenv1.Command{Cmd: &havenv1.Command_SetGroupState{SetGroupState: &havenv1.SetGroupStateCommand{
		Name: name, Epoch: g.GetEpoch(), ExpectDesiredIndex: g.GetDesiredIndex(), State: havenv1.GroupState_GROUP_STATE_STOPPING,
		Reason: reason, MoveTo: to,
	}}}); err != nil {
		l.log.Warn("planned restart not committed", "group", name, "to", to, "error", err)
		return false
	}
	l.log.Info("planned restart", "group", name, "from", g.GetOwner(), "to", to, "reason", reason)
	return true
}

// movedRecently adds to h the moves the FSM recorded as completed within
// holdOff of now, so a new leader's balancer holds them off too.
func movedRecently(h placement.History, ops []*havenv1.Operation, holdOff time.Duration, now time.Time) placement.History {
	for _, op := range ops {
		if op.GetOutcome() != havenv1.OperationOutcome_OPERATION_OUTCOME_COMPLETED || op.GetFinishTime() == nil {
			continue
		}
		at := op.GetFinishTime().AsTime()
		if now.Sub(at) >= holdOff {
			continue
		}
		if prev, ok := h[op.GetGroup()]; !ok || prev.At.Before(at) {
			h[op.GetGroup()] = placement.LastMove{At: at, From: op.GetSource(), To: op.GetTarget()}
		}
	}
	return h
}
