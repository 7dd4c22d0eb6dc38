package sim

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/haven-ha/haven/driver"
)

// vm is one simulated VM: a guest loop over a memory buffer, stepped by
// the driver's clock, two kinds of files, and a lease gate.
//
// Everything the guest does happens under mu, in step or in the final tick
// of Stop. ExtendLease, Stop, Kill, Crash, Resume and Activate take the
// same mu. That is what makes the fencing contract hold: a thaw cannot
// slip between the guest's gate check and its writes, and once Kill
// returns no write follows.
//
// A migration's source is paused at its switchover and its target is
// incoming until Activate; both hold memory but never tick (switch.go).
type vm struct {
	// spec is immutable after boot but for spec.Disks, which only
	// AttachDisk and DetachDisk change, under mu, with paths and disks.
	spec   driver.VMSpec
	period time.Duration // of the guest loop; immutable after boot
	now    func() time.Time
	log    *slog.Logger
	// changes is the driver's count of changes, which every change of
	// state moves (setState).
	changes *driver.ChangeCount

	mu       sync.Mutex
	paths    []string // absolute disk paths, as spec.Disks
	state    driver.State
	reason   string
	leaseEnd time.Time
	counter  uint64 // last value of the guest's counter, kept after mem is freed
	mem      *memory
	dirt     *dirtier
	disks    []*os.File
	exec     *os.File
	hdr      [HeaderSize]byte // scratch for the disk header check
	wakeups  uint64           // guest loop steps, for tests to wait on
	// hung: the guest stopped executing (Hang) at fed, its watchdog's
	// last feed; watchdog is its timeout, zero for none.
	hung     bool
	fed      time.Time
	watchdog time.Duration

	// moving: a MigrateOut or SaveState of this VM runs; it alone may end
	// the pause it makes, so Resume and a second move are refused.
	moving bool
	// throttle is the percentage of ticks the guest skips so that a
	// migration can outrun it; credit spreads the rest (see throttled).
	throttle, credit int
	// pins counts moves that use mem without mu; halt leaves it mapped
	// to the last of them (see pin).
	pins int
	// complete: an incoming VM has all its state, verified against sum.
	complete bool
	sum      uint64
}

// step is one iteration of the guest loop, called by the driver's clock;
// false means the VM holds no guest any more and leaves the clock.
func (v *vm) step() bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.wakeups++
	if !v.holds() {
		return false
	}
	switch {
	case !v.gate() || v.throttled():
	case v.hung:
		// The watchdog runs on the host's clock, frozen time included,
		// as QEMU's does when its whole process was stopped.
		if v.watchdog > 0 && v.now().Sub(v.fed) >= v.watchdog {
			v.halt(driver.StateCrashed, fmt.Sprintf("the guest's watchdog expired (not fed for %s)", v.watchdog))
		}
	default:
		v.tick()
	}
	return v.holds()
}

// throttled reports whether this tick is one a migration's throttle skips:
// throttle out of every hundred, spread evenly.
func (v *vm) throttled() bool {
	if v.throttle == 0 {
		return false
	}
	v.credit += 100 - v.throttle
	if v.credit >= 100 {
		v.credit -= 100
		return false
	}
	return true
}

// live reports whether the VM exists as a guest that runs or may run on
// its own lease (running or frozen).
func (v *vm) live() bool {
	return v.state == driver.StateRunning || v.state == driver.StateFrozen
}

// holds reports whether the VM holds a guest's state: live, or paused or
// incoming for a migration.
func (v *vm) holds() bool {
	return v.live() || v.state == driver.StatePaused || v.state == driver.StateIncoming
}

// gate is the lease check of fencing step 4. Called with mu held before
// every guest action: it freezes a running VM once now has reached its
// lease end and reports whether the guest may act. Nothing but ExtendLease
// sets a frozen VM running again, and ExtendLease holds mu too.
func (v *vm) gate() bool {
	if v.state == driver.StateRunning && !v.now().Before(v.leaseEnd) {
		v.setState(driver.StateFrozen)
		// Warn: a lease that runs out means the renewals stopped (a
		// partition, a stalled agent), and the gate has just fenced the VM.
		v.log.Warn("vm frozen at lease end", "lease_end", v.leaseEnd, "counter", v.counter)
	}
	return v.state == driver.StateRunning
}

// tick is one guest step, with mu held and the gate open: dirty memory,
// count, then record the step in the execution log and on every disk. The
// gate is checked again before each write, so a tick that straddles the
// lease end stops writing at the lease end, not at the end of the tick. A
// refused disk write crashes the guest, as an I/O error would.
func (v *vm) tick() {
	now := v.now()
	// The counter lives in guest memory: read it, count, write it back
	// after dirtying (which may overwrite page 0).
	c := v.mem.uint64At(0) + 1
	v.dirt.tick(v.mem, c)
	v.mem.putUint64At(0, c)
	v.counter = c

	line, err := json.Marshal(Record{
		Node: v.spec.Node, Group: v.spec.ID.Group, VM: v.spec.ID.Resource,
		Epoch: v.spec.Epoch, Counter: c, Wall: now.UTC(),
	})
	if err != nil {
		v.halt(driver.StateCrashed, "encoding record: "+err.Error())
		return
	}
	line = append(line, '\n')
	// Execution log first: it must show every tick the guest executed,
	// also one whose disk write is about to be refused.
	if !v.gate() {
		return
	}
	if _, err := v.exec.Write(line); err != nil {
		// The log is the checker's evidence of execution; a guest that
		// runs without leaving it would hide a second runner.
		v.halt(driver.StateCrashed, "execution log: "+err.Error())
		return
	}
	for i, f := range v.disks {
		if !v.gate() {
			return
		}
		if err := appendLine(f, v.paths[i], v.spec.Epoch, line, v.hdr[:]); err != nil {
			var fe *FencedError
			if errors.As(err, &fe) {
				v.halt(driver.StateCrashed, fmt.Sprintf("fenced: disk claimed by epoch %d", fe.Claimed))
			} else {
				v.halt(driver.StateCrashed, fmt.Sprintf("disk %s: %v", v.spec.Disks[i].Name, err))
			}
			return
		}
	}
}

// halt ends a VM that holds a guest in state (stopped or crashed), with mu
// held: it closes its files and unmaps its memory at once (a stopped VM
// holds no RAM; a move still using it unmaps it when done). The clock's
// next step finds it gone; being under mu, no write follows halt. Halting a VM that holds nothing does nothing, so a
// crash found during Stop's final tick is kept.
func (v *vm) halt(state driver.State, reason string) {
	if !v.holds() {
		return
	}
	v.reason = reason
	v.setState(state)
	for _, f := range v.disks {
		f.Close()
	}
	if v.exec != nil { // an incoming VM has opened no file
		v.exec.Close()
	}
	if v.pins == 0 {
		v.mem.free()
	}
	v.disks, v.exec, v.mem, v.dirt = nil, nil, nil, nil
	if state == driver.StateCrashed {
		v.log.Warn("vm crashed", "reason", reason, "counter", v.counter)
	} else {
		v.log.Info("vm stopped", "reason", reason, "counter", v.counter)
	}
}

// stop halts the VM. With final, a VM whose gate is open first runs one
// last tick (the graceful shutdown's final record).
func (v *vm) stop(final bool, state driver.State, reason string) {
	v.mu.Lock()
	if final && v.gate() {
		v.tick()
	}
	v.halt(state, reason)
	v.mu.Unlock()
}

// setState changes the VM's state, with mu held, and counts the change
// first, so that a List that shows the new state comes after it.
func (v *vm) setState(s driver.State) {
	v.changes.Add(1)
	v.state = s
}

func (v *vm) status() driver.Status {
	v.mu.Lock()
	defer v.mu.Unlock()
	// Apply the gate so a VM past its lease reads frozen even before its
	// loop has woken to notice.
	v.gate()
	return driver.Status{
		ID: v.spec.ID, Epoch: v.spec.Epoch, State: v.state,
		Counter: v.counter, Reason: v.reason, LeaseEnd: v.leaseEnd,
		Complete: v.state == driver.StateIncoming && v.complete,
	}
}
