package qemu

import (
	"context"
	"fmt"
	"time"

	"github.com/haven-ha/haven/driver"
	"github.com/haven-ha/haven/driver/qemu/qmp"
)

// Post-copy, and how it keeps the move's rule that the new owner is
// committed at the switchover, all or nothing.
//
// A pre-copy's target holds the whole guest before the commit, so a
// failure on either side before it rolls back to the source, and one
// after it completes on the target. Post-copy cannot wait for that: its
// target runs while the pages it lacks still come from the source. So a
// move that may end in post-copy (MigrateOptions.Postcopy) and whose
// pre-copy stalls asks QEMU to switch (migrate-start-postcopy), and QEMU
// stops the guest in the pause before its switchover
// (pause-before-switchover). MigrateOut returns there, the target
// confirming that it waits (msgPostcopy, then verified), and the source
// still holds all of the guest:
//
//   - no commit (a failure, a cancel): Resume cancels QEMU's migration
//     and runs the guest on here, as after any move that did not commit;
//   - the commit: the source's executor ends the VM, which the commit
//     made another node's, with Kill, and Kill lets QEMU go on instead
//     (handOver): the device state goes, then every page left, the target
//     faulting in what it touches first; Activate on the target (before
//     or after) arms its lease and cont, which QEMU applies once the
//     device state has arrived.
//
// From the commit until QEMU reports the post-copy completed the guest
// lives on both nodes, its vCPUs on the target, some of its memory only
// on the source: a failure of either node, of either QEMU or of the link
// between them loses the guest, which its group then restarts from its
// disks (followPostcopy makes the target's VM crashed with the reason).
// That is the price of a pause that no longer depends on the guest's
// dirty rate, and why post-copy is opt-in.
//
// The source's QEMU serves pages after its own lease is no longer
// renewed (the group is the target's): handOver extends its supervisor's
// lease itself while the pages go. That keeps one runner: the source's
// vCPUs stopped at the pause and never run again (nothing sends it cont
// after handOver), and its disks were handed to the target at the
// switchover.
//
// On QEMU before 9.0 under TCG (the CI machines) the guest's kernel
// oopsed right after it ran on the target (a call through a stale
// hrtimer, a corrupt list), 4 of 4 times: pages dirtied through the
// vCPUs' TLB were never sent again. memArg's RAM pad (tcgRAMPad) avoids
// that QEMU bug; with it the post-copy completes (5 of 5). postcopySupported
// stays a switch for the tests of the refusal.
var postcopySupported = true

const (
	// postcopyDrain bounds a post-copy: the source's handOver, and on the
	// target the wait for the source to go on after the commit.
	postcopyDrain = 2 * time.Minute
	// postcopyStart bounds Activate's wait for the source's device state,
	// which the source sends once it learns of the commit: a refused
	// Activate leaves the VM incoming, for the executor to try again.
	postcopyStart = 10 * time.Second
	// handoverLease is how far handOver moves the source's lease end at
	// a time while its QEMU serves pages.
	handoverLease = 5 * time.Second
)

// handOver lets the QEMU of a source that a move left paused before its
// switchover to post-copy go on, once the move is committed (Kill, Stop),
// and waits until it has sent every page, or failed, or postcopyDrain
// passed. v.cmd is held; the caller kills the VM afterwards.
func (d *Driver) handOver(v *vm) {
	v.mu.Lock()
	mon, sup, epoch := v.handover, v.sup, v.epoch
	v.handover = nil
	v.mu.Unlock()
	if mon == nil || sup == nil {
		return
	}
	id := v.id.String()
	ctx, cancel := context.WithTimeout(context.Background(), postcopyDrain)
	defer cancel()
	renew := func() {
		if _, err := sup.Extend(ctx, epoch, time.Now().Add(handoverLease)); err != nil {
			d.log.Warn("post-copy: cannot extend the source's lease", "vm", id, "error", err)
		}
	}
	renew()
	if err := bounded(ctx, qmpTimeout, mon.MigrateContinue); err != nil {
		d.log.Error("post-copy could not start: the guest is lost", "vm", id, "error", err)
		return
	}
	d.log.Info("post-copy: the target runs, the source sends the rest", "vm", id)
	renewed := time.Now()
	for {
		info, err := within(ctx, qmpTimeout, mon.QueryMigrate)
		switch {
		case err != nil:
			d.log.Error("post-copy did not complete: the guest is lost", "vm", id, "error", err)
			return
		case info.Status == qmp.MigrationCompleted:
			var downtime time.Duration
			if info.Downtime != nil {
				downtime = time.Duration(*info.Downtime) * time.Millisecond
			}
			var faults int64
			if info.RAM != nil {
				faults = info.RAM.PostcopyRequests
			}
			d.log.Info("vm migrated out in post-copy", "vm", id, "epoch", epoch, "downtime", downtime,
				"total", time.Duration(info.TotalTime)*time.Millisecond, "page_requests", faults)
			return
		case info.Status == qmp.MigrationFailed || info.Status == qmp.MigrationCancelled || info.Status == qmp.MigrationPostcopyPaused:
			d.log.Error("post-copy failed: the guest is lost", "vm", id, "status", info.Status, "error", info.ErrorDesc)
			return
		}
		if time.Since(renewed) >= time.Second {
			renew()
			renewed = time.Now()
		}
		select {
		case <-ctx.Done():
			d.log.Error("post-copy did not complete in time: the guest is lost", "vm", id, "limit", postcopyDrain)
			return
		case <-time.After(pollEvery):
		}
	}
}

// followPostcopy watches the incoming migration of a VM that Activate
// runs in post-copy until it completes. One that fails (the source or
// the link gone: QEMU waits in postcopy-paused for a recovery with
// vCPUs that fault on missing pages), or whose source never goes on,
// has lost the guest: its QEMU is killed and the VM reported crashed
// with why, for its owner to restart the group.
func (d *Driver) followPostcopy(v *vm, mon *qmp.Client) {
	go func() {
		deadline := time.Now().Add(postcopyDrain)
		for {
			time.Sleep(pollEvery)
			v.mu.Lock()
			mine := v.mon == mon && !v.stopping
			v.mu.Unlock()
			if !mine {
				return
			}
			info, err := within(context.Background(), qmpTimeout, mon.QueryMigrate)
			if err != nil && mon.Err() != nil {
				return // QEMU is gone: watch reports it
			}
			var why string
			switch {
			case err != nil:
			case info.Status == qmp.MigrationCompleted:
				d.log.Info("post-copy completed: the vm holds all of its memory", "vm", v.id.String())
				return
			case info.Status == qmp.MigrationFailed || info.Status == qmp.MigrationCancelled || info.Status == qmp.MigrationPostcopyPaused:
				why = "post-copy " + info.Status
				if info.ErrorDesc != "" {
					why += ": " + info.ErrorDesc
				}
			}
			if why == "" && time.Now().After(deadline) {
				why = fmt.Sprintf("post-copy did not complete within %s", postcopyDrain)
			}
			if why != "" {
				d.lose(v, mon, why+": the guest is lost")
				return
			}
		}
	}()
}

// lose kills a VM whose guest is gone and reports it crashed with
// reason, unless the driver let go of QEMU or ends it itself meanwhile.
func (d *Driver) lose(v *vm, mon *qmp.Client, reason string) {
	v.mu.Lock()
	sup, mine := v.sup, v.mon == mon && !v.stopping
	v.mu.Unlock()
	if !mine {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if sup != nil {
		_, _ = sup.Kill(ctx)
		_, _ = sup.Release(ctx)
	}
	v.mu.Lock()
	if v.mon == mon && !v.stopping {
		v.releaseLocked()
		v.setStateLocked(driver.StateCrashed)
		v.reason = reason
	}
	v.mu.Unlock()
	d.log.Warn("vm crashed", "vm", v.id.String(), "reason", reason)
}
