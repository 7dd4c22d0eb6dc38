package fsm

import (
	"sort"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// A move of a running group is an Operation, kept here so that whichever
// leader is in office can finish or roll it back. Its switchover is one
// compare-and-set (CommitMove): before it the group is the source's at the
// source epoch, after it the target's at the target epoch, and an end
// (EndMove) is refused on the wrong side of it. So a cancel and a commit
// racing through the log cannot both apply: whichever comes first wins.

// KeptOperations bounds the finished operations kept for operators to
// read; the oldest finished is forgotten first.
const KeptOperations = 256

const (
	phaseSetup      = havenv1.OperationPhase_OPERATION_PHASE_SETUP
	phasePrecopy    = havenv1.OperationPhase_OPERATION_PHASE_PRECOPY
	phaseSwitchover = havenv1.OperationPhase_OPERATION_PHASE_SWITCHOVER
	phaseCommitted  = havenv1.OperationPhase_OPERATION_PHASE_COMMITTED
	phaseFinished   = havenv1.OperationPhase_OPERATION_PHASE_FINISHED

	outcomeCompleted  = havenv1.OperationOutcome_OPERATION_OUTCOME_COMPLETED
	outcomeRolledBack = havenv1.OperationOutcome_OPERATION_OUTCOME_ROLLED_BACK
	outcomeCancelled  = havenv1.OperationOutcome_OPERATION_OUTCOME_CANCELLED
)

// InFlight reports whether op has not finished.
func InFlight(op *havenv1.Operation) bool {
	return op != nil && op.GetPhase() != phaseFinished
}

// MovingFrom reports whether op is a move off node that has not
// committed: the node still owns the group, but its state may already be
// on the target, so it must not start the group afresh.
func MovingFrom(op *havenv1.Operation, node string) bool {
	return InFlight(op) && !Committed(op) && op.GetSource() == node
}

// Committed reports whether op's switchover committed (it may have
// finished since).
func Committed(op *havenv1.Operation) bool {
	return op.GetPhase() == phaseCommitted ||
		(op.GetPhase() == phaseFinished && op.GetOutcome() == outcomeCompleted)
}

func (s *state) beginMove(index uint64, c *havenv1.BeginMoveCommand, now time.Time) *Error {
	op := c.GetOperation()
	name := op.GetGroup()
	switch {
	case op.GetId() == "":
		return errorf(CodeInvalidArgument, "operation: id is empty")
	case op.GetKind() != havenv1.MoveKind_MOVE_KIND_LIVE && op.GetKind() != havenv1.MoveKind_MOVE_KIND_QUICK:
		return errorf(CodeInvalidArgument, "operation %s: kind %s: a move is LIVE or QUICK", op.GetId(), op.GetKind())
	case op.GetSource() == "" || op.GetTarget() == "" || op.GetSource() == op.GetTarget():
		return errorf(CodeInvalidArgument, "operation %s: source %q and target %q must be two nodes", op.GetId(), op.GetSource(), op.GetTarget())
	}
	if _, ok := s.ops[op.GetId()]; ok {
		return errorf(CodeAlreadyExists, "operation %s already exists", op.GetId())
	}
	old, ok := s.groups[name]
	if !ok {
		return errorf(CodeNotFound, "group %q not found", name)
	}
	if err := stale(old, c.GetExpectEpoch(), c.GetExpectDesiredIndex()); err != nil {
		return err
	}
	if t, ok := s.nodes[op.GetTarget()]; !ok || t.GetWitness() {
		return errorf(CodeFailedPrecondition, "group %q: target %q is not a node that can host groups", name, op.GetTarget())
	}
	switch {
	case old.GetOperation() != "":
		return errorf(CodeFailedPrecondition, "group %q: move %s is in flight", name, old.GetOperation())
	case PendingDiskChange(old) != nil:
		return errorf(CodeFailedPrecondition, "group %q: the %s is pending on its owner: move it once that has ended", name, DescribeDiskChange(old.GetDiskChange()))
	case old.GetMoveTo() != "":
		return errorf(CodeFailedPrecondition, "group %q: a planned restart on %s is in flight", name, old.GetMoveTo())
	case !WantsRun(old) || old.GetState() != havenv1.GroupState_GROUP_STATE_ONLINE:
		return errorf(CodeFailedPrecondition, "group %q is %s (desired %s): only an online group moves", name, old.GetState(), Desired(old))
	case old.GetOwner() != op.GetSource():
		return errorf(CodeFailedPrecondition, "group %q runs on %q, not %q", name, old.GetOwner(), op.GetSource())
	}
	op = proto.Clone(op).(*havenv1.Operation)
	ts := timestamppb.New(now)
	op.Phase, op.Outcome = phaseSetup, havenv1.OperationOutcome_OPERATION_OUTCOME_UNSPECIFIED
	op.SourceEpoch, op.TargetEpoch = old.GetEpoch(), old.GetEpoch()+1
	op.CreateIndex, op.ModifyIndex = index, index
	op.CreateTime, op.PhaseTime, op.FinishTime = ts, ts, nil
	op.Progress, op.Checksum = nil, 0
	s.ops[op.GetId()] = op
	g := proto.Clone(old).(*havenv1.Group)
	g.Operation = op.GetId()
	s.store(index, old, g, now)
	return nil
}

// inFlightOp finds a move that has not finished.
func (s *state) inFlightOp(id string) (*havenv1.Operation, *Error) {
	op, ok := s.ops[id]
	switch {
	case !ok:
		return nil, errorf(CodeNotFound, "operation %s not found", id)
	case !InFlight(op):
		return nil, errorf(CodeFailedPrecondition, "operation %s finished (%s): %s", id, op.GetOutcome(), op.GetReason())
	}
	return op, nil
}

func (s *state) moveProgress(index uint64, c *havenv1.MoveProgressCommand, now time.Time) *Error {
	old, err := s.inFlightOp(c.GetId())
	if err != nil {
		return err
	}
	switch ph := c.GetPhase(); {
	case ph != phaseSetup && ph != phasePrecopy && ph != phaseSwitchover:
		return errorf(CodeInvalidArgument, "operation %s: progress cannot set phase %s", c.GetId(), ph)
	case old.GetPhase() >= phaseCommitted:
		return errorf(CodeFailedPrecondition, "operation %s is %s: its progress is over", c.GetId(), old.GetPhase())
	case ph < old.GetPhase():
		return errorf(CodeFailedPrecondition, "operation %s is %s: the phase does not go back to %s", c.GetId(), old.GetPhase(), ph)
	}
	op := proto.Clone(old).(*havenv1.Operation)
	if op.Phase != c.GetPhase() {
		op.Phase, op.PhaseTime = c.GetPhase(), timestamppb.New(now)
	}
	if c.GetProgress() != nil {
		op.Progress = proto.Clone(c.GetProgress()).(*havenv1.MoveProgress)
	}
	op.ModifyIndex = index
	s.ops[op.GetId()] = op
	return nil
}

func (s *state) commitMove(index uint64, c *havenv1.CommitMoveCommand, now time.Time) *Error {
	old, err := s.inFlightOp(c.GetId())
	if err != nil {
		return err
	}
	if old.GetPhase() == phaseCommitted {
		return nil // a retried commit whose first copy applied
	}
	g0, ok := s.groups[old.GetGroup()]
	switch {
	case !ok:
		return errorf(CodeNotFound, "group %q not found", old.GetGroup())
	case g0.GetOperation() != old.GetId() || g0.GetEpoch() != old.GetSourceEpoch() || g0.GetOwner() != old.GetSource():
		// Cannot happen while every change of owner ends the move; kept
		// as the compare-and-set the switchover's safety rests on.
		return errorf(CodeFailedPrecondition, "operation %s: group %q is on %q at epoch %d, not %q at %d", old.GetId(), old.GetGroup(), g0.GetOwner(), g0.GetEpoch(), old.GetSource(), old.GetSourceEpoch())
	}
	ts := timestamppb.New(now)
	op := proto.Clone(old).(*havenv1.Operation)
	op.Phase, op.PhaseTime, op.Checksum, op.ModifyIndex = phaseCommitted, ts, c.GetChecksum(), index
	if c.GetProgress() != nil {
		op.Progress = proto.Clone(c.GetProgress()).(*havenv1.MoveProgress)
	}
	s.ops[op.GetId()] = op
	g := proto.Clone(g0).(*havenv1.Group)
	g.Owner, g.Epoch = op.GetTarget(), op.GetTargetEpoch()
	g.State, g.StateReason = havenv1.GroupState_GROUP_STATE_STARTING, moveWord(op)+" from "+op.GetSource()
	s.store(index, g0, g, now)
	return nil
}

func moveWord(op *havenv1.Operation) string {
	if op.GetKind() == havenv1.MoveKind_MOVE_KIND_QUICK {
		return "quick-migrated"
	}
	return "live-migrated"
}

func (s *state) endMove(index uint64, c *havenv1.EndMoveCommand, now time.Time) *Error {
	op, err := s.inFlightOp(c.GetId())
	if err != nil {
		return err
	}
	switch c.GetOutcome() {
	case outcomeCompleted:
		if op.GetPhase() != phaseCommitted {
			return errorf(CodeFailedPrecondition, "operation %s is %s: only a committed move completes", c.GetId(), op.GetPhase())
		}
	case outcomeRolledBack, outcomeCancelled:
		if op.GetPhase() == phaseCommitted {
			return errorf(CodeFailedPrecondition, "operation %s is committed: the group runs on %s from now on", c.GetId(), op.GetTarget())
		}
	default:
		return errorf(CodeInvalidArgument, "operation %s: outcome %s does not end a move", c.GetId(), c.GetOutcome())
	}
	s.finishMove(index, op, c.GetOutcome(), c.GetReason(), now)
	return nil
}

// finishMove ends op with outcome and frees its group for the next move.
func (s *state) finishMove(index uint64, old *havenv1.Operation, outcome havenv1.OperationOutcome, reason string, now time.Time) {
	ts := timestamppb.New(now)
	op := proto.Clone(old).(*havenv1.Operation)
	op.Phase, op.PhaseTime, op.FinishTime = phaseFinished, ts, ts
	op.Outcome, op.Reason, op.ModifyIndex = outcome, reason, index
	s.ops[op.GetId()] = op
	if g0 := s.groups[op.GetGroup()]; g0 != nil && g0.GetOperation() == op.GetId() {
		g := proto.Clone(g0).(*havenv1.Group)
		g.Operation = ""
		s.store(index, g0, g, now)
	}
	s.finished = append(s.finished, op.GetId())
	if n := len(s.finished) - KeptOperations; n > 0 {
		for _, id := range s.finished[:n] {
			delete(s.ops, id)
		}
		s.finished = append([]string(nil), s.finished[n:]...)
	}
}

// endMoveOf ends the move in flight of a group whose owner or desired
// state changes by another command (a failover, a stop): before its
// commit the move is void and the group stays where that command puts it;
// after it the move is done, and what follows is the target's business.
// It returns the group as it is after.
func (s *state) endMoveOf(index uint64, g *havenv1.Group, why string, outcome havenv1.OperationOutcome, now time.Time) *havenv1.Group {
	op := s.ops[g.GetOperation()]
	if !InFlight(op) {
		return g
	}
	if op.GetPhase() == phaseCommitted {
		s.finishMove(index, op, outcomeCompleted, "committed; then "+why, now)
	} else {
		s.finishMove(index, op, outcome, why, now)
	}
	return s.groups[g.GetSpec().GetName()]
}

// Operation returns a move by id, in flight or among the kept finished.
func (f *FSM) Operation(id string) *havenv1.Operation {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.st.ops[id]
}

// Operations returns every kept move, oldest first (by the index that
// began it).
func (f *FSM) Operations() []*havenv1.Operation {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := make([]*havenv1.Operation, 0, len(f.st.ops))
	for _, op := range f.st.ops {
		out = append(out, op)
	}
	sortOps(out)
	return out
}

func sortOps(ops []*havenv1.Operation) {
	sort.Slice(ops, func(i, j int) bool {
		if ops[i].GetCreateIndex() != ops[j].GetCreateIndex() {
			return ops[i].GetCreateIndex() < ops[j].GetCreateIndex()
		}
		return ops[i].GetId() < ops[j].GetId()
	})
}
