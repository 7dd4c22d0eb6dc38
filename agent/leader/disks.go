package leader

import (
	"context"
	"time"

	"github.com/haven-ha/haven/fsm"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// Disks attached to and detached from a group. The leader checks what
// only it can (the owner's driver can hot-plug, the group's spec with the
// disk is within the limits), commits the change as a compare-and-set on
// the epoch it checked, and then waits for the change to end: at once for
// a group that does not run (recorded), else when the owner's executor
// reports it applied or failed, or when ctx ends (pending: the group's
// disk_change shows how it ends). A failure undoes the change in the FSM
// and is returned as an ErrConflict carrying the owner's reason.

// diskPoll is how often a waiting AttachDisk or DetachDisk reads the
// change again.
const diskPoll = 20 * time.Millisecond

// DiskChangeFailedError is a disk change its owner could not apply: the
// FSM undid it. It wraps ErrConflict.
type DiskChangeFailedError struct {
	Group  string
	Change *havenv1.DiskChange
}

func (e *DiskChangeFailedError) Error() string {
	return "group " + quote(e.Group) + ": the " + fsm.DescribeDiskChange(e.Change) + " failed on " + e.Change.GetNode() +
		", and was undone: " + e.Change.GetReason()
}

func (e *DiskChangeFailedError) Unwrap() error { return ErrConflict }

func quote(s string) string { return `"` + s + `"` }

// AttachDisk adds the disk resource to group and waits, within ctx, for
// the change to end (see above).
func (l *Leader) AttachDisk(ctx context.Context, group string, disk *havenv1.Resource, requestID string) (*havenv1.Group, *havenv1.DiskChange, error) {
	if l.current() == nil {
		return nil, nil, ErrNotLeader
	}
	if retried, g, dc, err := l.retriedDiskChange(ctx, group, requestID); retried {
		return g, dc, err
	}
	g := l.state.Group(group)
	if g == nil {
		return nil, nil, refuse(ErrNotFound, "group %q not found", group)
	}
	if !hasResource(g, disk.GetName()) {
		// A name in use is the FSM's AlreadyExists; here, the limits of
		// a spec and its own disks' paths.
		if err := fsm.ValidateGroupSpec(fsm.WithDisk(g.GetSpec(), disk)); err != nil {
			return nil, nil, refuse(ErrInvalid, "attach disk %q: %v", disk.GetName(), err)
		}
	}
	if err := l.hotPluggable(g, havenv1.DiskChangeKind_DISK_CHANGE_KIND_ATTACH); err != nil {
		return nil, nil, err
	}
	return l.changeDisks(ctx, group, &havenv1.Command{RequestId: requestID, Cmd: &havenv1.Command_AttachDisk{AttachDisk: &havenv1.AttachDiskCommand{
		Group: group, Disk: disk, ExpectEpoch: g.GetEpoch()}}})
}

// DetachDisk takes the disk resource named disk out of group and waits,
// within ctx, for the change to end (see above).
func (l *Leader) DetachDisk(ctx context.Context, group, disk, requestID string) (*havenv1.Group, *havenv1.DiskChange, error) {
	if l.current() == nil {
		return nil, nil, ErrNotLeader
	}
	if retried, g, dc, err := l.retriedDiskChange(ctx, group, requestID); retried {
		return g, dc, err
	}
	g := l.state.Group(group)
	if g == nil {
		return nil, nil, refuse(ErrNotFound, "group %q not found", group)
	}
	if err := l.hotPluggable(g, havenv1.DiskChangeKind_DISK_CHANGE_KIND_DETACH); err != nil {
		return nil, nil, err
	}
	return l.changeDisks(ctx, group, &havenv1.Command{RequestId: requestID, Cmd: &havenv1.Command_DetachDisk{DetachDisk: &havenv1.DetachDiskCommand{
		Group: group, Disk: disk, ExpectEpoch: g.GetEpoch()}}})
}

// hotPluggable refuses a change that g's owner would have to hot-plug when
// its driver cannot: the leader never asks a node for what its driver
// does not report.
func (l *Leader) hotPluggable(g *havenv1.Group, kind havenv1.DiskChangeKind) error {
	if !fsm.NeedsOwner(kind, g) {
		return nil
	}
	if n := l.state.Node(g.GetOwner()); !n.GetHotPlugDisks() {
		return refuse(ErrConflict, "group %q runs on %s, whose driver cannot hot-plug disks: stop the group, change its disks, and start it again",
			g.GetSpec().GetName(), g.GetOwner())
	}
	return nil
}

func hasResource(g *havenv1.Group, name string) bool {
	for _, r := range g.GetSpec().GetResources() {
		if r.GetName() == name {
			return true
		}
	}
	return false
}

// retriedDiskChange answers a request whose id the FSM has applied
// already (a client's retry after a leader change): with its refusal, or
// by waiting for the change it made.
func (l *Leader) retriedDiskChange(ctx context.Context, group, requestID string) (bool, *havenv1.Group, *havenv1.DiskChange, error) {
	ar := l.state.Request(requestID)
	if ar == nil {
		return false, nil, nil, nil
	}
	if ar.GetErrorCode() != fsm.CodeOK {
		return true, nil, nil, &fsm.Error{Code: ar.GetErrorCode(), Msg: ar.GetErrorMessage()}
	}
	g, dc, err := l.awaitDiskChange(ctx, group, ar.GetIndex())
	return true, g, dc, err
}

// changeDisks commits a disk change and waits for it to end.
func (l *Leader) changeDisks(ctx context.Context, group string, c *havenv1.Command) (*havenv1.Group, *havenv1.DiskChange, error) {
	res, err := l.cfg.Raft.Commit(c)
	if err != nil {
		return nil, nil, err
	}
	if res.Err != nil {
		return nil, nil, res.Err
	}
	if dc := l.state.Group(group).GetDiskChange(); dc.GetIndex() == res.Index {
		l.log.Info("disk change recorded", "group", group, "change", fsm.DescribeDiskChange(dc), "owner", dc.GetNode(), "epoch", dc.GetEpoch(), "pending", fsm.PendingDiskChange(l.state.Group(group)) != nil)
	}
	return l.awaitDiskChange(ctx, group, res.Index)
}

// awaitDiskChange waits until the disk change made at index ends, or ctx
// does; it returns the group and the change as they are then. A change
// that failed is returned with a *DiskChangeFailedError.
func (l *Leader) awaitDiskChange(ctx context.Context, group string, index uint64) (*havenv1.Group, *havenv1.DiskChange, error) {
	tick := time.NewTicker(diskPoll)
	defer tick.Stop()
	for {
		g := l.state.Group(group)
		if g == nil {
			return nil, nil, refuse(ErrNotFound, "group %q was deleted since its disk change at index %d", group, index)
		}
		dc := g.GetDiskChange()
		switch {
		case dc.GetIndex() != index:
			// A later change replaced it: this one ended long ago, and
			// only the spec tells how.
			return g, nil, nil
		case dc.GetOutcome() == havenv1.DiskChangeOutcome_DISK_CHANGE_OUTCOME_FAILED:
			return g, dc, &DiskChangeFailedError{Group: group, Change: dc}
		case dc.GetOutcome() != havenv1.DiskChangeOutcome_DISK_CHANGE_OUTCOME_UNSPECIFIED:
			return g, dc, nil
		}
		select {
		case <-ctx.Done():
			return g, dc, nil // pending: the caller says so
		case <-tick.C:
		}
	}
}

// ReportDiskChange applies an owner's report on a pending disk change at
// the epoch it acted at; the FSM refuses one that no longer follows (the
// group moved on, the change ended).
func (l *Leader) ReportDiskChange(req *havenv1.ReportDiskChangeRequest) error {
	if l.current() == nil {
		return ErrNotLeader
	}
	g := l.state.Group(req.GetGroup())
	if g == nil {
		return refuse(ErrNotFound, "group %q not found", req.GetGroup())
	}
	if err := l.apply(&havenv1.Command{Cmd: &havenv1.Command_EndDiskChange{EndDiskChange: &havenv1.EndDiskChangeCommand{
		Group: req.GetGroup(), Index: req.GetIndex(), Node: req.GetNode(), Epoch: req.GetEpoch(), Outcome: req.GetOutcome(), Reason: req.GetReason(),
	}}}); err != nil {
		return err
	}
	if req.GetOutcome() == havenv1.DiskChangeOutcome_DISK_CHANGE_OUTCOME_FAILED {
		l.log.Warn("disk change failed on its owner", "group", req.GetGroup(), "node", req.GetNode(), "index", req.GetIndex(), "reason", req.GetReason())
	} else {
		l.log.Info("disk change applied", "group", req.GetGroup(), "node", req.GetNode(), "index", req.GetIndex())
	}
	return nil
}
