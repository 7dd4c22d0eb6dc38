package executor

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/haven-ha/haven/driver"
	"github.com/haven-ha/haven/fsm"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// Disks hot-plugged into running VMs. A group's spec names the disks
// every VM of it has (vmSpecs), less the one a pending detach takes away.
// A running VM whose disks differ is brought in line through the driver's
// DiskHotPlugger at the VM's own epoch: what it lacks is attached, what
// the spec no longer names is detached. The one comparison serves a
// group's pending disk change (Group.disk_change) and any other
// difference, such as this agent dying between a change's commit and its
// hot-plug (a VM it adopts, or one that booted from an older spec).
//
// Once every VM of the group runs with the spec's disks, the pending
// change is reported applied. One the driver refuses for good (a file it
// cannot use, a disk a newer epoch claimed), or that fails diskAttempts
// times, is reported failed with the driver's reason, and the FSM undoes
// it; an attach that failed is first taken back out of any VM that got
// it, so that its path, free again, is held by no VM.

// A failed hot-plug is tried diskAttempts times in all, diskBackoff apart
// and then twice that, and so on (up to maxDiskBackoff while no change is
// pending).
const (
	diskAttempts   = 3
	diskBackoff    = 500 * time.Millisecond
	maxDiskBackoff = 30 * time.Second
)

// diskFail is the retry state of a group's hot-plugs at one epoch and
// pending change.
type diskFail struct {
	key      string // group@epoch/change index (0: none pending)
	attempts int
	next     time.Time
	// final is the error that ended the tries: the change is reported
	// failed, and nothing more is tried for it.
	final error
}

// errNoHotPlug is a pending change on a node whose driver cannot apply it.
var errNoHotPlug = errors.New("the driver of this node cannot hot-plug disks")

// diskKey names the hot-plugs of g as they stand: its epoch and pending
// change.
func diskKey(g *havenv1.Group) string {
	return fmt.Sprintf("%s@%d/%d", g.GetSpec().GetName(), g.GetEpoch(), mineToApply(g, "").GetIndex())
}

// mineToApply is g's pending disk change when node (any node, if empty)
// is to apply it at g's epoch, else nil.
func mineToApply(g *havenv1.Group, node string) *havenv1.DiskChange {
	dc := fsm.PendingDiskChange(g)
	if dc == nil || dc.GetEpoch() != g.GetEpoch() || node != "" && dc.GetNode() != node {
		return nil
	}
	return dc
}

// detaching is the name of the disk g's pending detach takes away, empty
// when there is none.
func detaching(g *havenv1.Group) string {
	if dc := fsm.PendingDiskChange(g); dc.GetKind() == havenv1.DiskChangeKind_DISK_CHANGE_KIND_DETACH {
		return dc.GetDisk().GetName()
	}
	return ""
}

// syncDisks brings the disks of spec's running VM in line with spec. It
// reports whether they match now, and the error that ends the tries of
// g's pending change, if one does.
func (e *Executor) syncDisks(ctx context.Context, g *havenv1.Group, spec driver.VMSpec) (bool, error) {
	if e.hotPlug == nil {
		// The VM has what it started with, which this driver cannot
		// tell or change: only a change pending here says otherwise.
		if mineToApply(g, e.node) != nil {
			return false, errNoHotPlug
		}
		return true, nil
	}
	have, err := e.hotPlug.Disks(spec.ID)
	if err != nil {
		return false, nil // gone since the pass listed it: the next sees
	}
	var detach, attach []driver.DiskSpec
	for _, dk := range have {
		if !slices.ContainsFunc(spec.Disks, func(w driver.DiskSpec) bool { return w.Name == dk.Name && w.SameFile(dk) }) {
			detach = append(detach, dk)
		}
	}
	for _, dk := range spec.Disks {
		if !slices.ContainsFunc(have, func(h driver.DiskSpec) bool { return h.Name == dk.Name && h.SameFile(dk) }) {
			attach = append(attach, dk)
		}
	}
	if len(detach) == 0 && len(attach) == 0 {
		return true, nil
	}
	f := e.diskFails[g.GetSpec().GetName()]
	if f != nil && f.key == diskKey(g) && f.final != nil {
		return false, f.final
	}
	if !e.mayHotPlug(g) || f != nil && f.key == diskKey(g) && time.Now().Before(f.next) {
		return false, nil
	}
	for _, dk := range detach {
		if err := e.hotPlug.DetachDisk(ctx, spec.ID, spec.Epoch, dk.Name); err != nil {
			return false, e.diskFailed(ctx, g, fmt.Errorf("detach disk %s from vm %s on %s: %w", dk.Name, spec.ID.Resource, e.node, err))
		}
		e.log.Info("disk detached", "vm", spec.ID.String(), "epoch", spec.Epoch, "disk", dk.Name, "path", dk.Path)
	}
	for _, dk := range attach {
		if err := e.hotPlug.AttachDisk(ctx, spec.ID, spec.Epoch, dk); err != nil {
			return false, e.diskFailed(ctx, g, fmt.Errorf("attach disk %s (%s) to vm %s on %s: %w", dk.Name, dk.Path, spec.ID.Resource, e.node, err))
		}
		e.log.Info("disk attached", "vm", spec.ID.String(), "epoch", spec.Epoch, "disk", dk.Name, "path", dk.Path)
	}
	return true, nil
}

// mayHotPlug re-reads g right before a hot-plug: it must still be this
// node's, running at the epoch and spec the pass read, under a grant that
// confirms the epoch. A VM the node may not run must not change either.
func (e *Executor) mayHotPlug(g *havenv1.Group) bool {
	name := g.GetSpec().GetName()
	cur := e.state.Group(name)
	if cur == nil || cur.GetOwner() != e.node || cur.GetEpoch() != g.GetEpoch() || cur.GetModifyIndex() != g.GetModifyIndex() {
		return false
	}
	_, ok := e.mayRun(name, g.GetEpoch(), time.Now(), false)
	return ok
}

// diskFailed counts a failed hot-plug of g and returns the error if it
// ends the tries of g's pending change: a refusal no retry mends, or the
// last attempt. A VM that froze or went meanwhile is no failure of the
// hot-plug: the next pass sees it.
func (e *Executor) diskFailed(ctx context.Context, g *havenv1.Group, err error) error {
	e.log.Warn("hot-plug failed", "group", g.GetSpec().GetName(), "epoch", g.GetEpoch(), "error", err)
	if ctx.Err() != nil || errors.Is(err, driver.ErrInvalidState) || errors.Is(err, driver.ErrNotFound) {
		return nil
	}
	name, key := g.GetSpec().GetName(), diskKey(g)
	f := e.diskFails[name]
	if f == nil || f.key != key {
		f = &diskFail{key: key}
		e.diskFails[name] = f
	}
	f.attempts++
	f.next = time.Now().Add(min(diskBackoff<<min(f.attempts-1, 10), maxDiskBackoff))
	final := errors.Is(err, driver.ErrInvalidSpec) || errors.Is(err, driver.ErrStaleEpoch) || f.attempts >= diskAttempts
	if final && mineToApply(g, e.node) != nil {
		f.final = err
		return err
	}
	return nil
}

// endDiskChange reports g's pending change, if this node is to apply it:
// applied once every VM runs with the spec's disks (allMatch), failed
// when failure ended its tries.
func (e *Executor) endDiskChange(ctx context.Context, g *havenv1.Group, specs []driver.VMSpec, allMatch bool, failure error) {
	dc := mineToApply(g, e.node)
	if dc == nil || e.diskReported[g.GetSpec().GetName()] == dc.GetIndex() || e.reportDisk == nil {
		return
	}
	req := &havenv1.ReportDiskChangeRequest{Node: e.node, Group: g.GetSpec().GetName(), Epoch: g.GetEpoch(), Index: dc.GetIndex()}
	switch {
	case failure != nil:
		req.Outcome, req.Reason = havenv1.DiskChangeOutcome_DISK_CHANGE_OUTCOME_FAILED, failure.Error()
		if dc.GetKind() == havenv1.DiskChangeKind_DISK_CHANGE_KIND_ATTACH {
			e.takeBack(ctx, g, specs, dc.GetDisk().GetName())
		}
	case allMatch:
		req.Outcome = havenv1.DiskChangeOutcome_DISK_CHANGE_OUTCOME_APPLIED
		req.Reason = fmt.Sprintf("hot-plugged into %d vm(s)", len(specs))
		if dc.GetKind() == havenv1.DiskChangeKind_DISK_CHANGE_KIND_DETACH {
			req.Reason = fmt.Sprintf("released by %d vm(s)", len(specs))
		}
	default:
		return
	}
	if err := e.reportDisk(ctx, req); err != nil {
		e.log.Debug("disk change report failed; will retry", "group", req.GetGroup(), "index", req.GetIndex(), "error", err)
		return
	}
	e.diskReported[req.GetGroup()] = dc.GetIndex()
	e.log.Info("disk change reported", "group", req.GetGroup(), "index", req.GetIndex(), "outcome", req.GetOutcome(), "reason", req.GetReason())
}

// takeBack detaches a disk whose attach failed from every VM of g that
// got it, before the report frees its path.
func (e *Executor) takeBack(ctx context.Context, g *havenv1.Group, specs []driver.VMSpec, name string) {
	if e.hotPlug == nil {
		return
	}
	for _, spec := range specs {
		if err := e.hotPlug.DetachDisk(ctx, spec.ID, spec.Epoch, name); err != nil && !errors.Is(err, driver.ErrNotFound) {
			e.log.Warn("could not take back a disk whose attach failed", "vm", spec.ID.String(), "disk", name, "error", err)
		}
	}
}
