package qemu

import (
	"context"
	"fmt"
	"github.com/haven-ha/haven/driver/qemu/qmp"
	"time"

	"github.com/haven-ha/haven/driver"
)

// Activate implements driver.Switcher. The lease check that matters is
// the supervisor's: Arm checks the lease end against its clock under the
// lock of its freeze, so a late Activate cannot run the guest past its
// lease, and from then on the supervisor freezes it at the lease end like
// any VM. Only then does cont start the guest, which also activates its
// disk images (late-block-activate) and so takes their locks.
//
// vm.json needs no rewrite: an incoming VM is at the move's target epoch
// from the start, in its record and its supervisor alike; what tells a
// restarted agent that it was activated is its supervisor, armed.
func (d *Driver) Activate(id driver.VMID, epoch uint64, leaseEnd time.Time) error {
	v := d.lookup(id)
	if v == nil {
		return fmt.Errorf("activate %s: %w", id, driver.ErrNotFound)
	}
	v.cmd.Lock()
	defer v.cmd.Unlock()
	v.mu.Lock()
	st, complete, sup, mon, ep, postcopy := v.state, v.complete, v.sup, v.mon, v.epoch, v.postcopy
	v.mu.Unlock()
	switch {
	case epoch != ep:
		return fmt.Errorf("activate %s at epoch %d: %w: the VM is at epoch %d", id, epoch, driver.ErrStaleEpoch, ep)
	case st != driver.StateIncoming || sup == nil || mon == nil:
		return fmt.Errorf("activate %s: %w: it is %s", id, driver.ErrInvalidState, st)
	case !complete:
		return fmt.Errorf("activate %s: %w: its state has not all arrived", id, driver.ErrInvalidState)
	case !time.Now().Before(leaseEnd):
		return fmt.Errorf("activate %s at epoch %d: %w", id, epoch, driver.ErrLeaseExpired)
	}
	if postcopy {
		// The source goes on once it learns of the commit (Kill), and
		// sends the device state first: QEMU runs the guest only from
		// there (its run state leaves inmigrate for paused).
		if err := awaitPostcopyRun(mon); err != nil {
			return fmt.Errorf("activate %s at epoch %d: %w", id, epoch, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), qmpTimeout)
	defer cancel()
	if _, err := sup.Arm(ctx, epoch, leaseEnd); err != nil {
		return fmt.Errorf("activate %s at epoch %d: %w", id, epoch, err)
	}
	v.mu.Lock()
	v.setStateLocked(driver.StateRunning)
	v.complete, v.leaseEnd = false, leaseEnd
	v.mu.Unlock()
	if postcopy {
		// Watched before cont: from it on, the guest needs every page
		// the source has yet to send.
		d.followPostcopy(v, mon)
	}
	if err := d.cont(ctx, v, leaseEnd); err != nil {
		// Armed and not running: a QEMU that refuses to run the state
		// it loaded (an image another process locks, say) is of no
		// use, and must not run later either.
		_ = v.kill()
		v.crashed("activation failed: " + err.Error())
		return fmt.Errorf("activate %s at epoch %d: %w", id, epoch, err)
	}
	d.log.Info("vm activated", "vm", id.String(), "epoch", epoch, "lease_left", time.Until(leaseEnd).Round(time.Millisecond))
	return nil
}

// awaitPostcopyRun waits, up to postcopyStart, until an incoming QEMU in
// post-copy holds the device state: its run state leaves inmigrate.
func awaitPostcopyRun(mon *qmp.Client) error {
	ctx, cancel := context.WithTimeout(context.Background(), postcopyStart)
	defer cancel()
	for {
		qs, err := within(ctx, qmpTimeout, mon.QueryStatus)
		switch {
		case err != nil:
			return err
		case qs.Status != "inmigrate":
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: the source has not switched over to post-copy yet", driver.ErrInvalidState)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// Resume implements driver.Switcher: the supervisor renews the lease
// first, refusing one that has passed, and only then does cont run the
// guest (and take back the disk images a completed migration let go).
func (d *Driver) Resume(id driver.VMID, epoch uint64, leaseEnd time.Time) error {
	v := d.lookup(id)
	if v == nil {
		return fmt.Errorf("resume %s: %w", id, driver.ErrNotFound)
	}
	v.cmd.Lock()
	defer v.cmd.Unlock()
	v.mu.Lock()
	st, moving, sup, mon, ep := v.state, v.moving, v.sup, v.mon, v.epoch
	v.mu.Unlock()
	switch {
	case epoch != ep:
		return fmt.Errorf("resume %s at epoch %d: %w: the VM is at epoch %d", id, epoch, driver.ErrStaleEpoch, ep)
	case st != driver.StatePaused || sup == nil || mon == nil:
		return fmt.Errorf("resume %s: %w: it is %s", id, driver.ErrInvalidState, st)
	case moving:
		// The move that paused it resumes it itself if it fails, and is
		// stopped by cancelling its context.
		return fmt.Errorf("resume %s: %w: its move is still running", id, driver.ErrInvalidState)
	case !time.Now().Before(leaseEnd):
		return fmt.Errorf("resume %s at epoch %d: %w", id, epoch, driver.ErrLeaseExpired)
	}
	ctx, cancel := context.WithTimeout(context.Background(), qmpTimeout)
	defer cancel()
	if _, err := sup.Extend(ctx, epoch, leaseEnd); err != nil {
		return fmt.Errorf("resume %s at epoch %d: %w", id, epoch, err)
	}
	v.mu.Lock()
	v.extendLocked(leaseEnd)
	handover := v.handover
	v.handover = nil
	v.mu.Unlock()
	if handover != nil {
		// Paused before its switchover to post-copy, uncommitted: the
		// migration is cancelled, and the guest, all of it here, goes on.
		if err := cancelMove(ctx, qmpTimeout, handover); err != nil {
			return fmt.Errorf("resume %s at epoch %d: cancelling its move: %w", id, epoch, err)
		}
		if _, err := settled(ctx, qmpTimeout, handover); err != nil {
			return fmt.Errorf("resume %s at epoch %d: %w", id, epoch, err)
		}
	}
	if err := d.cont(ctx, v, leaseEnd); err != nil {
		return fmt.Errorf("resume %s at epoch %d: %w", id, epoch, err)
	}
	v.mu.Lock()
	if v.state == driver.StatePaused {
		v.setStateLocked(driver.StateRunning)
	}
	v.mu.Unlock()
	d.log.Info("vm resumed", "vm", id.String(), "epoch", epoch)
	return nil
}

// cont runs the guest of an armed QEMU. A QEMU that its supervisor froze
// at the lease end meanwhile cannot answer; the command waits in its
// socket, and it runs when a renewal thaws QEMU, which only a valid lease
// does: the VM reads frozen until then, as the contract has it.
func (d *Driver) cont(ctx context.Context, v *vm, leaseEnd time.Time) error {
	v.mu.Lock()
	mon := v.mon
	v.mu.Unlock()
	if mon == nil {
		return fmt.Errorf("%w: qemu is gone", driver.ErrInvalidState)
	}
	err := mon.Cont(ctx)
	if err != nil && !time.Now().Before(leaseEnd) && ctx.Err() != nil {
		d.log.Warn("cont waits for a renewal: frozen at its lease end", "vm", v.id.String())
		return nil
	}
	return err
}
