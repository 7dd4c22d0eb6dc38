package sim

import (
	"fmt"
	"sync"
	"time"

	"github.com/haven-ha/haven/driver"
)

var _ driver.Switcher = (*Driver)(nil)

// Activate implements driver.Switcher. The refusals, the disk claims and
// the state change all happen under the VM's mutex, so no lease check can
// go stale before the guest runs; the guest's first step passes the gate
// like any other.
func (d *Driver) Activate(id driver.VMID, epoch uint64, leaseEnd time.Time) error {
	v := d.lookup(id)
	if v == nil {
		return fmt.Errorf("activate %s: %w", id, driver.ErrNotFound)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	now := v.now()
	switch {
	case epoch != v.spec.Epoch:
		return fmt.Errorf("activate %s at epoch %d: %w: vm is at epoch %d", id, epoch, driver.ErrStaleEpoch, v.spec.Epoch)
	case v.state != driver.StateIncoming:
		return fmt.Errorf("activate %s: %w: it is %s", id, driver.ErrInvalidState, v.state)
	case !v.complete:
		return fmt.Errorf("activate %s: %w: its state has not all arrived", id, driver.ErrInvalidState)
	case !now.Before(leaseEnd):
		return fmt.Errorf("activate %s at epoch %d: %w (%s ago)", id, epoch, driver.ErrLeaseExpired, now.Sub(leaseEnd))
	}
	// The claim at this epoch fences the source's older one: from here a
	// write of the source, were it resumed by mistake, is refused.
	if err := v.attach(d.cfg.SharedDir); err != nil {
		return fmt.Errorf("activate %s at epoch %d: %w", id, epoch, err)
	}
	v.leaseEnd = anchor(now, leaseEnd)
	v.setState(driver.StateRunning)
	v.log.Info("vm activated", "checksum", v.sum, "counter", v.counter, "lease_end", v.leaseEnd)
	d.clock.add(v, true)
	return nil
}

// Resume implements driver.Switcher.
func (d *Driver) Resume(id driver.VMID, epoch uint64, leaseEnd time.Time) error {
	v := d.lookup(id)
	if v == nil {
		return fmt.Errorf("resume %s: %w", id, driver.ErrNotFound)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	now := v.now()
	switch {
	case epoch != v.spec.Epoch:
		return fmt.Errorf("resume %s at epoch %d: %w: vm is at epoch %d", id, epoch, driver.ErrStaleEpoch, v.spec.Epoch)
	case v.state != driver.StatePaused:
		return fmt.Errorf("resume %s: %w: it is %s", id, driver.ErrInvalidState, v.state)
	case v.moving:
		// The move that paused it still reads its memory; it resumes the
		// VM itself if it fails, and is stopped by cancelling its context.
		return fmt.Errorf("resume %s: %w: its migration is still running", id, driver.ErrInvalidState)
	case !now.Before(leaseEnd):
		return fmt.Errorf("resume %s at epoch %d: %w (%s ago)", id, epoch, driver.ErrLeaseExpired, now.Sub(leaseEnd))
	}
	if leaseEnd.After(v.leaseEnd) {
		v.leaseEnd = anchor(now, leaseEnd)
	}
	v.unpause("resumed")
	return nil
}

// unpause runs a paused VM again on its lease, with mu held; the gate
// freezes it at once if the lease has ended meanwhile.
func (v *vm) unpause(why string) {
	if v.mem != nil && v.mem.untrack != nil {
		go v.mem.untrack()
	}
	v.setState(driver.StateRunning)
	v.log.Info("vm resumed", "counter", v.counter, "lease_end", v.leaseEnd, "reason", why)
	v.gate()
}

// keepTracking hands the write tracking of a migration that ended ready
// to m, to be lifted when the guest runs here again or m is unmapped.
func (v *vm) keepTracking(m *memory, sums *sourceSums) {
	v.mu.Lock()
	defer v.mu.Unlock()
	m.untrack = sync.OnceFunc(sums.close)
}

// untrack lifts the tracking an earlier move left on m, waiting for a
// lift under way.
func (v *vm) untrack(m *memory) {
	v.mu.Lock()
	u := m.untrack
	m.untrack = nil
	v.mu.Unlock()
	if u != nil {
		u()
	}
}

// pin lets a move use v's memory without mu, with mu held: the pause (or,
// on the target, being the only writer until Activate) keeps the guest
// off it, and halt leaves it mapped until unpin. It returns the memory,
// or nil if the VM holds none.
func (v *vm) pin() *memory {
	if v.mem != nil {
		v.pins++
	}
	return v.mem
}

// unpin ends a pin of m, unmapping m if the VM was halted meanwhile.
func (v *vm) unpin(m *memory) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.pins--
	if v.pins == 0 && v.mem != m {
		m.free()
	}
}

// beginMove starts an outgoing move (MigrateOut, SaveState) of the VM at
// epoch: it must be running and not already moving. It pins the memory
// and, with log, starts its dirty log.
func (d *Driver) beginMove(op string, id driver.VMID, epoch uint64, log bool) (*vm, *memory, error) {
	v := d.lookup(id)
	if v == nil {
		return nil, nil, fmt.Errorf("%s %s: %w", op, id, driver.ErrNotFound)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	v.gate()
	switch {
	case epoch != v.spec.Epoch:
		return nil, nil, fmt.Errorf("%s %s at epoch %d: %w: vm is at epoch %d", op, id, epoch, driver.ErrStaleEpoch, v.spec.Epoch)
	case v.moving:
		return nil, nil, fmt.Errorf("%s %s: %w: a migration of it is already running", op, id, driver.ErrInvalidState)
	case v.state != driver.StateRunning:
		// A frozen VM's node has lost its lease: the group is the
		// leader's to restart, not this node's to move.
		return nil, nil, fmt.Errorf("%s %s: %w: it is %s", op, id, driver.ErrInvalidState, v.state)
	}
	v.moving = true
	m := v.pin()
	if log {
		m.logDirty()
	}
	return v, m, nil
}

// pause stops the guest of a move at its switchover, with mu held: no tick
// follows until unpause. A VM that froze during the pre-copy is paused as
// well (it is as still); one stopped meanwhile cannot be.
func (v *vm) pause() error {
	if !v.live() {
		return fmt.Errorf("%w: it is %s", driver.ErrInvalidState, v.state)
	}
	v.setState(driver.StatePaused)
	return nil
}

// endMove ends a move begun by beginMove: the dirty log and the throttle
// end with it, and after an error a VM the move paused runs again (or
// freezes, if its lease has ended).
func (v *vm) endMove(m *memory, err error) {
	v.mu.Lock()
	if v.mem != nil {
		v.mem.stopDirtyLog()
	}
	v.throttle, v.credit = 0, 0
	v.moving = false
	if err != nil && v.state == driver.StatePaused {
		v.unpause("migration failed: " + err.Error())
	}
	v.mu.Unlock()
	v.unpin(m)
}
