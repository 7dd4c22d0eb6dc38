package leader

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/haven-ha/haven/fsm"
	"github.com/haven-ha/haven/placement"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// Moves of running groups. The leader records a move in the FSM (BeginMove),
// orders the source to send (MoveOut, a stream of progress ending in
// "ready"), has the target confirm that it holds the copy (a live move:
// ConfirmMoveIn; a quick one: RestoreMove, which restores it), and commits
// the switchover (CommitMove, a compare-and-set). Any failure before the
// commit rolls the move back (EndMove); after it the move completes on the
// target by itself: the target's executor activates its VM once a grant
// confirms the new epoch, and its report of the group online ends the
// move in the FSM. A move this term did not start (its leader is gone, and
// with it the stream from the source) is rolled back if it has not
// committed: its source resumes, its target discards what it got.

// Movers reaches the two ends of a move.
type Movers interface {
	// MoveOut orders node, a move's source, to send, and calls progress
	// for every report until the source ends the stream.
	MoveOut(ctx context.Context, node string, req *havenv1.MoveOutRequest, progress func(*havenv1.MoveOutResponse)) error
	// RestoreMove orders node, a quick move's target, to restore.
	RestoreMove(ctx context.Context, node string, req *havenv1.RestoreMoveRequest) error
	// ConfirmMoveIn asks node, a live move's target, whether it still
	// holds a whole copy of the group, waiting for the commit.
	ConfirmMoveIn(ctx context.Context, node string, req *havenv1.ConfirmMoveInRequest) error
}

// MoveRequest is a move asked of the leader.
type MoveRequest struct {
	Group string
	// Target is empty to let placement choose.
	Target         string
	Kind           havenv1.MoveKind
	DowntimeTarget time.Duration
	BandwidthLimit int64
	// Channels and Postcopy are MoveOptions's, for a live move.
	Channels uint32
	Postcopy bool
	// Cause says who asked: "operator", "drain", "failback", "balancer".
	Cause     string
	RequestID string
	// Fallback, with Target empty, is where the group goes when no node
	// keeps the reserve with it, as long as it fits there: a drain must
	// empty its node even when the rest of the cluster cannot keep the
	// reserve (the leader says so in its log).
	Fallback string
}

// moves are the moves this term drives.
type moves struct {
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	// running maps a move's id to the cancel of its driver; an id is
	// entered before its BeginMove is committed, so the term never rolls
	// back a move it is starting.
	running map[string]context.CancelFunc
}

func newMoves(ctx context.Context) *moves {
	ctx, cancel := context.WithCancel(ctx)
	return &moves{ctx: ctx, cancel: cancel, running: map[string]context.CancelFunc{}}
}

// stop cancels every move's driver and waits for them.
func (m *moves) stop() {
	m.cancel()
	m.wg.Wait()
}

func (m *moves) has(id string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, ok := m.running[id]
	return ok
}

func (m *moves) reserve(id string) (context.Context, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.running[id]; ok {
		return nil, false
	}
	ctx, cancel := context.WithCancel(m.ctx)
	m.running[id] = cancel
	return ctx, true
}

func (m *moves) done(id string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if c, ok := m.running[id]; ok {
		c()
		delete(m.running, id)
	}
}

// operationID derives a move's id from its request id, so a retried
// request names the same move.
func operationID(requestID string) string {
	sum := sha256.Sum256([]byte(requestID))
	return "mv-" + hex.EncodeToString(sum[:5])
}

// MoveGroup starts a move and returns it as recorded.
func (l *Leader) MoveGroup(req MoveRequest) (*havenv1.Operation, error) {
	t := l.current()
	if t == nil || l.termMoves(t) == nil {
		return nil, ErrNotLeader
	}
	l.placeMu.Lock()
	defer l.placeMu.Unlock()
	return l.beginMove(l.termMoves(t), req)
}

// beginMove plans a move, commits its start and has mv drive it. Called
// with placeMu held: the target's room is taken by the commit, which the
// next decision must see.
func (l *Leader) beginMove(mv *moves, req MoveRequest) (*havenv1.Operation, error) {
	id := operationID(req.RequestID)
	if op := l.state.Operation(id); op != nil {
		return op, nil // a retried request
	}
	op, g, err := l.planMove(req, id)
	if err != nil {
		return nil, err
	}
	ctx, ok := mv.reserve(id)
	if !ok {
		return nil, refuse(ErrConflict, "move %s is already being started", id)
	}
	err = l.apply(&havenv1.Command{RequestId: req.RequestID, Cmd: &havenv1.Command_BeginMove{BeginMove: &havenv1.BeginMoveCommand{
		Operation: op, ExpectEpoch: g.GetEpoch(), ExpectDesiredIndex: g.GetDesiredIndex(),
	}}})
	if err != nil {
		mv.done(id)
		return nil, err
	}
	op = l.state.Operation(id)
	l.log.Info("move begun", "operation", id, "group", op.GetGroup(), "kind", op.GetKind(), "from", op.GetSource(), "to", op.GetTarget(), "cause", op.GetCause())
	mv.wg.Add(1)
	go func() {
		defer mv.wg.Done()
		defer mv.done(id)
		l.drive(ctx, op)
	}()
	return op, nil
}

// planMove checks a move and chooses its target and kind. Called with
// placeMu held.
func (l *Leader) planMove(req MoveRequest, id string) (*havenv1.Operation, *havenv1.Group, error) {
	g := l.state.Group(req.Group)
	switch {
	case g == nil:
		return nil, nil, refuse(ErrNotFound, "group %q not found", req.Group)
	case g.GetOperation() != "":
		return nil, nil, refuse(ErrConflict, "group %q: move %s is in flight", req.Group, g.GetOperation())
	case fsm.PendingDiskChange(g) != nil:
		return nil, nil, refuse(ErrConflict, "group %q: the %s is pending on %s: move it once that has ended", req.Group, fsm.DescribeDiskChange(g.GetDiskChange()), g.GetOwner())
	case g.GetMoveTo() != "":
		return nil, nil, refuse(ErrConflict, "group %q: a planned restart on %s is in flight", req.Group, g.GetMoveTo())
	case !fsm.WantsRun(g) || g.GetState() != havenv1.GroupState_GROUP_STATE_ONLINE || g.GetOwner() == "":
		return nil, nil, refuse(ErrConflict, "group %q is %s: only a running group moves", req.Group, g.GetState())
	case req.DowntimeTarget < 0 || req.BandwidthLimit < 0:
		return nil, nil, refuse(ErrInvalid, "downtime target and bandwidth limit must not be negative")
	case req.Channels > MaxChannels:
		return nil, nil, refuse(ErrInvalid, "channels: %d is more than %d", req.Channels, MaxChannels)
	case req.Postcopy && req.Channels > 1:
		// QEMU (7.2) refuses multifd with postcopy-ram.
		return nil, nil, refuse(ErrInvalid, "postcopy takes one channel, not %d", req.Channels)
	case req.Postcopy && req.Kind == havenv1.MoveKind_MOVE_KIND_QUICK:
		return nil, nil, refuse(ErrInvalid, "postcopy is a way to end a live move, not a quick one")
	}
	source := l.state.Node(g.GetOwner())
	st := l.placementState()
	// The group's room moves with it: placed anew with its own node left
	// out, on a state where it runs nowhere.
	pg := l.placementGroup(g.GetSpec())
	pg.AvoidNodes = nil
	st = withoutAssign(st, req.Group)
	spec := l.reserveSpec(st)
	target := req.Target
	var err error
	if target != "" {
		if err := l.movable(target, g); err != nil {
			return nil, nil, err
		}
		target, err = admitOn(st, pg, target, spec)
	} else {
		elsewhere, ok := excluding(pg, g.GetOwner(), st)
		if !ok {
			return nil, nil, refuse(ErrConflict, "group %q can run on no node but %s", req.Group, g.GetOwner())
		}
		target, _, err = l.admit(st, elsewhere, spec, l.leaseHolders(st, time.Now()))
		if err != nil && req.Fallback != "" && spec.On() {
			if fb, ferr := admitOn(st, pg, req.Fallback, placement.Spec{}); ferr == nil {
				l.log.Warn("move breaks the reserve: no node keeps it with the group", "group", req.Group, "cause", req.Cause, "to", fb, "reserve", err)
				target, err = fb, nil
			}
		}
	}
	if err != nil {
		l.refused("move", req.Group, err)
		return nil, nil, err
	}
	kind, err := moveKind(req.Kind, source, l.state.Node(target))
	if err != nil {
		return nil, nil, err
	}
	if err := postcopyAllowed(req.Postcopy, kind, source, l.state.Node(target)); err != nil {
		return nil, nil, err
	}
	op := &havenv1.Operation{
		Id: id, Group: req.Group, Kind: kind, Source: g.GetOwner(), Target: target, Cause: req.Cause,
		Options: &havenv1.MoveOptions{BandwidthLimit: req.BandwidthLimit, Channels: req.Channels, Postcopy: req.Postcopy},
		Reason:  fmt.Sprintf("%s asked to move %s from %s to %s", req.Cause, req.Group, g.GetOwner(), target),
	}
	if req.DowntimeTarget > 0 {
		op.Options.DowntimeTarget = durationpb.New(req.DowntimeTarget)
	}
	return op, g, nil
}

// movable refuses a target an operator named that cannot take the group,
// with the reason.
func (l *Leader) movable(target string, g *havenv1.Group) error {
	n := l.state.Node(target)
	switch {
	case n == nil:
		return refuse(ErrNotFound, "node %q not found", target)
	case target == g.GetOwner():
		return refuse(ErrInvalid, "group %q already runs on %s", g.GetSpec().GetName(), target)
	case n.GetWitness():
		return refuse(ErrConflict, "node %s is a witness: it hosts no groups", target)
	case n.GetStatus() != havenv1.NodeStatus_NODE_STATUS_ALIVE:
		return refuse(ErrConflict, "node %s is %s", target, n.GetStatus())
	case n.GetDraining():
		return refuse(ErrConflict, "node %s is draining", target)
	}
	return nil
}

// moveKind resolves the kind of a move between two nodes.
func moveKind(asked havenv1.MoveKind, from, to *havenv1.Node) (havenv1.MoveKind, error) {
	live := from.GetLiveMigration() && to.GetLiveMigration()
	quick := from.GetQuickMigration() && to.GetQuickMigration()
	switch asked {
	case havenv1.MoveKind_MOVE_KIND_LIVE:
		if !live {
			return 0, refuse(ErrConflict, "%s and %s cannot live-migrate (a driver without live migration); ask for a quick move", from.GetName(), to.GetName())
		}
		return asked, nil
	case havenv1.MoveKind_MOVE_KIND_QUICK:
		if !quick {
			return 0, refuse(ErrConflict, "%s and %s cannot quick-migrate (a driver without save and restore)", from.GetName(), to.GetName())
		}
		return asked, nil
	case havenv1.MoveKind_MOVE_KIND_UNSPECIFIED, havenv1.MoveKind_MOVE_KIND_AUTO:
		switch {
		case live:
			return havenv1.MoveKind_MOVE_KIND_LIVE, nil
		case quick:
			return havenv1.MoveKind_MOVE_KIND_QUICK, nil
		}
		return 0, refuse(ErrConflict, "%s and %s cannot move a running group (no migration in their drivers)", from.GetName(), to.GetName())
	}
	return 0, refuse(ErrInvalid, "kind %s is not a kind of move", asked)
}

// MaxChannels bounds MoveOptions.channels: QEMU takes up to 255, and
// more streams than cores gain nothing.
const MaxChannels = 64

// postcopyAllowed refuses a post-copy move unless it is live and both
// nodes' drivers can end one in post-copy: the leader never asks a driver
// for what it does not report.
func postcopyAllowed(postcopy bool, kind havenv1.MoveKind, from, to *havenv1.Node) error {
	switch {
	case !postcopy:
		return nil
	case kind != havenv1.MoveKind_MOVE_KIND_LIVE:
		return refuse(ErrInvalid, "postcopy is a way to end a live move; %s and %s can only move it %s", from.GetName(), to.GetName(), kind)
	case !from.GetPostcopyMigration() || !to.GetPostcopyMigration():
		return refuse(ErrConflict, "%s and %s cannot post-copy (their drivers do not report it: sim never does, qemu not yet); move without postcopy", from.GetName(), to.GetName())
	}
	return nil
}

// excluding narrows g's possible owners to the nodes of st but node.
func excluding(g placement.Group, node string, st placement.State) (placement.Group, bool) {
	var owners []string
	for _, n := range st.Nodes {
		if n.Name != node && (len(g.PossibleOwners) == 0 || slices.Contains(g.PossibleOwners, n.Name)) {
			owners = append(owners, n.Name)
		}
	}
	g.PossibleOwners = owners
	return g, len(owners) > 0
}

// withoutAssign returns st with group running nowhere.
func withoutAssign(st placement.State, group string) placement.State {
	out := st
	out.Assign = make(map[string]string, len(st.Assign))
	for g, n := range st.Assign {
		if g != group {
			out.Assign[g] = n
		}
	}
	return out
}

// drive runs a move this term began, to its commit or its rollback.
func (l *Leader) drive(ctx context.Context, op *havenv1.Operation) {
	err := l.switchover(ctx, op)
	if err == nil {
		return
	}
	if ctx.Err() != nil {
		// Cancelled (its end is committed already) or the term ended
		// (the next leader rolls it back).
		return
	}
	l.endMove(op.GetId(), havenv1.OperationOutcome_OPERATION_OUTCOME_ROLLED_BACK, err.Error())
}

// endMove commits the end of a move; a refusal means it ended or
// committed meanwhile, which the FSM has decided.
func (l *Leader) endMove(id string, outcome havenv1.OperationOutcome, reason string) {
	err := l.apply(&havenv1.Command{Cmd: &havenv1.Command_EndMove{EndMove: &havenv1.EndMoveCommand{Id: id, Outcome: outcome, Reason: reason}}})
	var fe *fsm.Error
	switch {
	case errors.As(err, &fe):
		l.log.Debug("move end refused", "operation", id, "error", err)
	case err != nil:
		l.log.Warn("move end not committed", "operation", id, "error", err)
	default:
		l.moveEnded(id, outcome)
		l.log.Info("move ended", "operation", id, "outcome", outcome, "reason", reason)
	}
}

// switchover takes a move from its start to its commit.
func (l *Leader) switchover(ctx context.Context, op *havenv1.Operation) error {
	target := l.state.Node(op.GetTarget())
	req := &havenv1.MoveOutRequest{Operation: op.GetId(), Index: op.GetCreateIndex(), TargetAddr: target.GetGrpcAddr()}
	var ready *havenv1.MoveOutResponse
	phase, committed := op.GetPhase(), time.Time{}
	progress := l.progressCommits(op.GetId())
	err := l.cfg.Movers.MoveOut(ctx, op.GetSource(), req, func(r *havenv1.MoveOutResponse) {
		if r.GetReady() {
			ready = r
			return
		}
		// Progress goes through the log at phase changes and about once a
		// second: enough for an operator and a new leader, cheap for Raft.
		if r.GetPhase() == phase && time.Since(committed) < time.Second {
			return
		}
		phase, committed = r.GetPhase(), time.Now()
		progress.offer(&havenv1.MoveProgressCommand{Id: op.GetId(), Phase: r.GetPhase(), Progress: r.GetProgress()})
	})
	progress.stop()
	switch {
	case err != nil:
		return fmt.Errorf("source %s: %w", op.GetSource(), err)
	case ready == nil:
		return fmt.Errorf("source %s ended the move without being ready", op.GetSource())
	}
	readyAt := time.Now()
	// The target must still hold its copy: "ready" says it verified one,
	// not that it has it now. A commit to a target that died or lost it
	// since would restart the group from its disks, while a rollback
	// resumes the guest the source holds paused. A quick move's target
	// restores its copy now, which is the same answer.
	if op.GetKind() == havenv1.MoveKind_MOVE_KIND_QUICK {
		if err := l.cfg.Movers.RestoreMove(ctx, op.GetTarget(), &havenv1.RestoreMoveRequest{Operation: op.GetId(), Index: op.GetCreateIndex()}); err != nil {
			return fmt.Errorf("target %s could not restore: %w", op.GetTarget(), err)
		}
	} else if err := l.confirmMoveIn(ctx, op); err != nil {
		return fmt.Errorf("target %s could not confirm its copy: %w", op.GetTarget(), err)
	}
	confirmed := time.Now()
	err = l.apply(&havenv1.Command{Cmd: &havenv1.Command_CommitMove{CommitMove: &havenv1.CommitMoveCommand{
		Id: op.GetId(), Checksum: ready.GetChecksum(), Progress: ready.GetProgress()}}})
	commitTook := time.Since(confirmed)
	var fe *fsm.Error
	switch {
	case errors.As(err, &fe):
		// Cancelled, or the group moved on, meanwhile: the FSM ended the
		// move, and the source resumes by that end.
		l.log.Info("move commit refused", "operation", op.GetId(), "reason", err)
		return nil
	case err != nil:
		// Outcome unknown or leadership lost: whoever leads next finds the
		// move committed or not, and completes or rolls it back.
		l.log.Warn("move commit not confirmed", "operation", op.GetId(), "error", err)
		return nil
	}
	l.leases.Assigned(op.GetGroup(), time.Now())
	// Followers learn that an entry committed from the next append, which
	// an idle leader sends only after raft's CommitTimeout (50 ms): the
	// barrier is that append, now, so the target sees its commit while
	// the guest is stopped. Only a nudge: an error changes nothing.
	_ = l.cfg.Raft.Barrier(l.cfg.ElectionTimeout)
	l.moveEnded(op.GetId(), havenv1.OperationOutcome_OPERATION_OUTCOME_COMPLETED)
	l.log.Info("move committed", "operation", op.GetId(), "group", op.GetGroup(), "to", op.GetTarget(), "checksum", fmt.Sprintf("%016x", ready.GetChecksum()),
		"confirm", confirmed.Sub(readyAt), "commit", commitTook)
	return nil
}

// progressCommits commits a move's progress beside its stream rather than
// in it: the report at the pause is followed by the source's "ready", and
// the guest, paused, must not wait a Raft round for its predecessor to
// commit. Only the newest report waits; one that commits after the move's
// commit or end is refused by the FSM, as progress of a move that is over.
type progressCommits struct {
	next chan *havenv1.MoveProgressCommand // holds at most the newest
	done chan struct{}
}

func (l *Leader) progressCommits(id string) *progressCommits {
	p := &progressCommits{next: make(chan *havenv1.MoveProgressCommand, 1), done: make(chan struct{})}
	go func() {
		for {
			select {
			case <-p.done:
				return
			case c := <-p.next:
				select {
				case <-p.done:
					return // stopped meanwhile: drop it
				default:
				}
				if err := l.apply(&havenv1.Command{Cmd: &havenv1.Command_MoveProgress{MoveProgress: c}}); err != nil {
					l.log.Debug("move progress not committed", "operation", id, "error", err)
				}
			}
		}
	}()
	return p
}

// offer queues c in place of any report not yet committed.
func (p *progressCommits) offer(c *havenv1.MoveProgressCommand) {
	select {
	case <-p.next:
	default:
	}
	p.next <- c
}

// stop drops the report not yet committed; one committing goes on.
func (p *progressCommits) stop() { close(p.done) }

// confirmMoveIn asks a live move's target whether it still holds its
// copy. The source is paused meanwhile, so a target that does not answer
// within an election timeout, as a healthy peer does, is taken to have
// none.
func (l *Leader) confirmMoveIn(ctx context.Context, op *havenv1.Operation) error {
	wait := l.cfg.ElectionTimeout
	if wait <= 0 {
		wait = time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	return l.cfg.Movers.ConfirmMoveIn(ctx, op.GetTarget(), &havenv1.ConfirmMoveInRequest{Operation: op.GetId(), Index: op.GetCreateIndex()})
}

// resolveMoves rolls back the moves in flight that no driver of this term
// runs and that have not committed: their leader, and with it the stream
// from their source, is gone.
func (l *Leader) resolveMoves(mv *moves) {
	for _, g := range l.state.Groups() {
		id := g.GetOperation()
		if id == "" || mv.has(id) {
			continue
		}
		if op := l.state.Operation(id); fsm.InFlight(op) && !fsm.Committed(op) {
			l.endMove(id, havenv1.OperationOutcome_OPERATION_OUTCOME_ROLLED_BACK, "the leader changed during the move")
		}
	}
}

// CancelOperation rolls back a move that has not committed.
func (l *Leader) CancelOperation(id, requestID string) (*havenv1.Operation, error) {
	t := l.current()
	if t == nil || l.termMoves(t) == nil {
		return nil, ErrNotLeader
	}
	op := l.state.Operation(id)
	switch {
	case op == nil:
		return nil, refuse(ErrNotFound, "operation %s not found", id)
	case !fsm.InFlight(op):
		return op, refuse(ErrConflict, "operation %s finished: %s (%s)", id, op.GetOutcome(), op.GetReason())
	case fsm.Committed(op):
		return op, refuse(ErrConflict, "operation %s has committed: the group runs on %s from now on", id, op.GetTarget())
	}
	if err := l.apply(&havenv1.Command{RequestId: requestID, Cmd: &havenv1.Command_EndMove{EndMove: &havenv1.EndMoveCommand{
		Id: id, Outcome: havenv1.OperationOutcome_OPERATION_OUTCOME_CANCELLED, Reason: "cancelled by an operator"}}}); err != nil {
		return nil, err
	}
	// The source's stream ends with its driver: a source not yet ready
	// resumes at once, a ready one by the end just committed.
	l.termMoves(t).done(id)
	l.moveEnded(id, havenv1.OperationOutcome_OPERATION_OUTCOME_CANCELLED)
	return l.state.Operation(id), nil
}

// moveEnded counts a move that committed or ended with outcome, timed from
// its start as the log recorded it.
func (l *Leader) moveEnded(id string, outcome havenv1.OperationOutcome) {
	op := l.state.Operation(id)
	var took time.Duration
	if t := op.GetCreateTime(); t != nil {
		took = time.Since(t.AsTime())
	}
	l.cfg.Metrics.MoveEnded(op.GetKind().String(), outcome.String(), took)
}
