package executor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/haven-ha/haven/driver"
	"github.com/haven-ha/haven/fsm"
	"github.com/haven-ha/haven/migrate"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// This node's two parts in a move. As the source it sends every VM of the
// group (live: each over its own stream to the target; quick: each to a
// state file on shared storage) and says "ready" only once every VM is
// paused and the target holds a verified copy of each. From "ready" on the
// paused VMs resume only by the move's end in the FSM (the executor's
// switchover), never here: the leader may commit as soon as it hears it.
// Before "ready", any failure resumes what paused, since no commit can
// happen without it. As the target it fills incoming VMs, confirms to the
// leader before the commit that it still holds them (ConfirmMoveIn), and
// runs them only once the commit is applied and a grant confirms the new
// epoch.

// awaitMove waits, briefly, until this node's FSM has applied the log index
// that began the move, and returns the move and its group.
func (e *Executor) awaitMove(ctx context.Context, id string, index uint64) (*havenv1.Operation, *havenv1.Group, error) {
	deadline := time.Now().Add(5 * time.Second)
	for e.state.Index() < index {
		if time.Now().After(deadline) {
			return nil, nil, fmt.Errorf("%w: this node has not applied index %d yet", migrate.ErrRefused, index)
		}
		select {
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
	op := e.state.Operation(id)
	if !fsm.InFlight(op) || fsm.Committed(op) {
		return nil, nil, fmt.Errorf("%w: operation %s is not a move in flight before its commit", migrate.ErrRefused, id)
	}
	g := e.state.Group(op.GetGroup())
	if g == nil || g.GetOperation() != id {
		return nil, nil, fmt.Errorf("%w: group %q has no move %s", migrate.ErrRefused, op.GetGroup(), id)
	}
	return op, g, nil
}

func moveOptions(op *havenv1.Operation) driver.MigrateOptions {
	o := driver.MigrateOptions{
		BandwidthLimit: op.GetOptions().GetBandwidthLimit(),
		Channels:       int(op.GetOptions().GetChannels()),
		Postcopy:       op.GetOptions().GetPostcopy(),
	}
	if d := op.GetOptions().GetDowntimeTarget(); d != nil {
		o.DowntimeTarget = d.AsDuration()
	}
	return o
}

// MoveOut runs this node's part as the source of move id, calling report
// with the progress and, last, with Ready. dial is used for a live move.
func (e *Executor) MoveOut(ctx context.Context, id string, index uint64, dial migrate.Dial, report func(migrate.Progress) error) error {
	op, g, err := e.awaitMove(ctx, id, index)
	if err != nil {
		return err
	}
	if op.GetSource() != e.node || g.GetOwner() != e.node || g.GetEpoch() != op.GetSourceEpoch() {
		return fmt.Errorf("%w: move %s is from %s at epoch %d; this is %s, group at epoch %d", migrate.ErrRefused, id, op.GetSource(), op.GetSourceEpoch(), e.node, g.GetEpoch())
	}
	specs := vmSpecs(g, e.node)
	quick := op.GetKind() == havenv1.MoveKind_MOVE_KIND_QUICK
	live, _ := e.drv.(driver.LiveMigrator)
	saver, _ := e.drv.(driver.QuickMigrator)
	if (quick && saver == nil) || (!quick && live == nil) {
		return fmt.Errorf("%w: this node's driver cannot do a %s move", migrate.ErrRefused, op.GetKind())
	}
	for _, s := range specs {
		if st, err := e.drv.Status(s.ID); err != nil || st.Epoch != s.Epoch || st.State != driver.StateRunning {
			return fmt.Errorf("%w: vm %s is not running here at epoch %d", migrate.ErrRefused, s.ID, s.Epoch)
		}
	}
	agg := newAggregate(len(specs), report)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	results := make([]driver.MigrateResult, len(specs))
	errs := make([]error, len(specs))
	var wg sync.WaitGroup
	for i, s := range specs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			progress := func(p driver.Progress) {
				// A hold that ends with ctx returns no error: the
				// driver, which checks ctx next, fails the move.
				switch {
				case p.Phase == "setup":
					_ = e.waitHold(ctx, havenv1.MoveHoldPhase_MOVE_HOLD_PHASE_SETUP, id)
				case p.Phase == "precopy" && p.Round == 1:
					agg.update(i, p)
					_ = e.waitHold(ctx, havenv1.MoveHoldPhase_MOVE_HOLD_PHASE_PRECOPY, id)
				default:
					agg.update(i, p)
				}
			}
			if quick {
				results[i], errs[i] = saver.SaveState(ctx, s.ID, s.Epoch, migrate.StateFile(id, s.ID.Resource), progress)
			} else {
				results[i], errs[i] = e.migrateOut(ctx, live, dial, s, op, progress)
			}
			if errs[i] != nil {
				cancel() // the others cannot complete the move alone
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		e.resumeAll(specs, errs)
		return err
	}
	if err := e.waitHold(ctx, havenv1.MoveHoldPhase_MOVE_HOLD_PHASE_FROZEN, id); err != nil {
		// Not ready yet, so the move cannot commit: resume, as after a
		// failure.
		e.resumeAll(specs, errs)
		return err
	}
	// Every VM is paused with a verified copy: from here the move's end
	// decides, so the VMs stay paused even if this report is lost.
	var sum uint64
	for _, r := range results {
		sum = sum*1099511628211 ^ r.Checksum
	}
	return agg.ready(sum)
}

func (e *Executor) migrateOut(ctx context.Context, live driver.LiveMigrator, dial migrate.Dial, s driver.VMSpec, op *havenv1.Operation, progress func(driver.Progress)) (driver.MigrateResult, error) {
	conn, err := dial(ctx, s.ID.Resource)
	if err != nil {
		return driver.MigrateResult{}, fmt.Errorf("stream to %s for vm %s: %w", op.GetTarget(), s.ID.Resource, err)
	}
	defer conn.Close()
	return live.MigrateOut(ctx, s.ID, s.Epoch, conn, moveOptions(op), progress)
}

// resumeAll resumes the VMs that paused when another VM of the group
// failed: none said ready, so the move cannot commit.
func (e *Executor) resumeAll(specs []driver.VMSpec, errs []error) {
	sw, _ := e.drv.(driver.Switcher)
	for i, s := range specs {
		st, err := e.drv.Status(s.ID)
		if errs[i] != nil || err != nil || st.State != driver.StatePaused || sw == nil {
			continue
		}
		end, ok := e.mayRun(s.ID.Group, s.Epoch, time.Now(), false)
		if !ok {
			continue // frozen at its lease end; a grant thaws it via the switchover
		}
		if err := sw.Resume(s.ID, s.Epoch, end); err != nil {
			e.log.Warn("resume after a failed move refused", "vm", s.ID.String(), "error", err)
		}
	}
}

// MoveIn runs this node's part as the target of one VM of live move id:
// an incoming VM at the move's target epoch, filled from conn.
func (e *Executor) MoveIn(ctx context.Context, id string, index uint64, vm string, conn io.ReadWriter) error {
	op, g, err := e.awaitMove(ctx, id, index)
	if err != nil {
		return err
	}
	live, ok := e.drv.(driver.LiveMigrator)
	if !ok || op.GetTarget() != e.node || op.GetKind() != havenv1.MoveKind_MOVE_KIND_LIVE {
		return fmt.Errorf("%w: live move %s is to %s; this is %s", migrate.ErrRefused, id, op.GetTarget(), e.node)
	}
	spec, err := e.incomingSpec(g, op, vm)
	if err != nil {
		return err
	}
	return live.MigrateIn(ctx, spec, conn)
}

// ConfirmMoveIn answers the leader, right before the commit of live move
// id, that every VM of the group arrived whole here and still waits,
// incoming at the move's target epoch; an error says which does not.
func (e *Executor) ConfirmMoveIn(ctx context.Context, id string, index uint64) error {
	op, g, err := e.awaitMove(ctx, id, index)
	if err != nil {
		return err
	}
	if op.GetTarget() != e.node || op.GetKind() != havenv1.MoveKind_MOVE_KIND_LIVE {
		return fmt.Errorf("%w: live move %s is to %s; this is %s", migrate.ErrRefused, id, op.GetTarget(), e.node)
	}
	for _, s := range vmSpecs(g, e.node) {
		st, err := e.drv.Status(s.ID)
		switch {
		case err != nil:
			return fmt.Errorf("%w: move %s: vm %s is not on %s: %v", migrate.ErrRefused, id, s.ID.Resource, e.node, err)
		case st.State != driver.StateIncoming || st.Epoch != op.GetTargetEpoch():
			return fmt.Errorf("%w: move %s: vm %s on %s is %s at epoch %d, not incoming at %d", migrate.ErrRefused, id, s.ID.Resource, e.node, st.State, st.Epoch, op.GetTargetEpoch())
		case !st.Complete:
			return fmt.Errorf("%w: move %s: vm %s has not all arrived on %s", migrate.ErrRefused, id, s.ID.Resource, e.node)
		}
	}
	return nil
}

// RestoreMove runs the target's part of quick move id: every VM of the
// group restored from its state file into an incoming VM.
func (e *Executor) RestoreMove(ctx context.Context, id string, index uint64) error {
	op, g, err := e.awaitMove(ctx, id, index)
	if err != nil {
		return err
	}
	q, ok := e.drv.(driver.QuickMigrator)
	if !ok || op.GetTarget() != e.node || op.GetKind() != havenv1.MoveKind_MOVE_KIND_QUICK {
		return fmt.Errorf("%w: quick move %s is to %s; this is %s", migrate.ErrRefused, id, op.GetTarget(), e.node)
	}
	for _, r := range orderedResources(g.GetSpec()) {
		if r.GetVm() == nil {
			continue
		}
		spec, err := e.incomingSpec(g, op, r.GetName())
		if err != nil {
			return err
		}
		if err := q.RestoreState(ctx, spec, migrate.StateFile(id, r.GetName())); err != nil {
			return err
		}
	}
	return nil
}

// incomingSpec is vm's spec on this node at the move's target epoch.
func (e *Executor) incomingSpec(g *havenv1.Group, op *havenv1.Operation, vm string) (driver.VMSpec, error) {
	for _, s := range vmSpecs(g, e.node) {
		if s.ID.Resource == vm {
			s.Epoch = op.GetTargetEpoch()
			return s, nil
		}
	}
	return driver.VMSpec{}, fmt.Errorf("%w: group %q has no vm %q", migrate.ErrRefused, g.GetSpec().GetName(), vm)
}

// removeStateFiles deletes a quick move's state files once they are of
// no more use: the target runs, or the move was rolled back.
func (e *Executor) removeStateFiles(id string) {
	if e.sharedDir == "" || id == "" {
		return
	}
	if err := os.RemoveAll(filepath.Join(e.sharedDir, migrate.StateDir(id))); err != nil {
		e.log.Warn("removing a quick move's state files", "operation", id, "error", err)
	}
}

// aggregate sums the progress of a group's VMs and reports it at most
// every reportEvery, and at once when the phase changes.
type aggregate struct {
	mu     sync.Mutex
	last   []driver.Progress
	phase  havenv1.OperationPhase
	sent   time.Time
	report func(migrate.Progress) error
}

const reportEvery = 250 * time.Millisecond

func newAggregate(n int, report func(migrate.Progress) error) *aggregate {
	return &aggregate{last: make([]driver.Progress, n), phase: havenv1.OperationPhase_OPERATION_PHASE_PRECOPY, report: report}
}

func (a *aggregate) update(i int, p driver.Progress) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.last[i] = p
	phase := havenv1.OperationPhase_OPERATION_PHASE_PRECOPY
	for _, l := range a.last {
		if l.Phase == "switchover" || l.Phase == "save" {
			phase = havenv1.OperationPhase_OPERATION_PHASE_SWITCHOVER
		}
	}
	if phase == a.phase && time.Since(a.sent) < reportEvery {
		return
	}
	a.phase, a.sent = phase, time.Now()
	_ = a.report(migrate.Progress{Phase: phase, Progress: a.sum()})
}

func (a *aggregate) sum() *havenv1.MoveProgress {
	out := &havenv1.MoveProgress{}
	var downtime time.Duration
	for _, l := range a.last {
		out.Round = max(out.Round, uint32(l.Round))
		out.MemoryBytes += l.MemoryBytes
		out.BytesSent += l.BytesSent
		out.RemainingBytes += l.RemainingBytes
		out.RateBytesPerSec += l.RateBytesPerSec
		out.ThrottlePercent = max(out.ThrottlePercent, uint32(l.ThrottlePercent))
		downtime = max(downtime, l.ExpectedDowntime)
	}
	out.ExpectedDowntime = durationpb.New(downtime)
	return out
}

func (a *aggregate) ready(checksum uint64) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.report(migrate.Progress{Phase: havenv1.OperationPhase_OPERATION_PHASE_SWITCHOVER, Progress: a.sum(), Ready: true, Checksum: checksum})
}
