// Package sim is the simulated hypervisor: VMs that live inside the agent
// process as goroutines, cheap enough to run hundreds per node, honest
// enough that any test can detect two runners of a group.
//
// Each VM has a real memory buffer (an anonymous mapping outside the Go
// heap, so only the pages the guest touches are resident), a guest loop
// that dirties pages of its working set at the rate Config.Guest sets and
// keeps a counter in the buffer's first 8 bytes, and disks on shared
// storage that receive one record per tick (see ClaimDisk for the format;
// DiskSpec.SizeBytes is advisory, a sim disk grows with its records).
// Disks can be added to a running VM and taken away (hotplug.go). A
// booting guest continues its counter from its last record on its first
// disk, so the counter never goes back across restarts and failovers. The
// guest loop passes the lease gate of the driver package's fencing
// contract before every step, and every disk write passes the disk's epoch
// check; see ClaimDisk. Because the VMs are goroutines,
// SIGKILL of the agent kills them and SIGSTOP stops them; after SIGCONT the
// guest checks the gate before it does anything.
//
// The execution log (ExecLogPath) is written beside the disks without
// fencing, so a checker sees what guests executed independently of what
// the disks accepted.
//
// A VM moves to another node's driver live (MigrateOut, MigrateIn:
// iterative pre-copy over a dirty log that every guest write marks while
// a move runs) or through a file on shared storage (SaveState,
// RestoreState). Either way the source ends paused and the target
// incoming, the target's memory is checked against a checksum of the
// source's, and Resume or Activate ends the move (switch.go). The guest's
// counter and random state travel with it, so the target's first tick is
// the source's last plus one, and it dirties what the source would have.
package sim

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/haven-ha/haven/driver"
)

// DefaultTick is the guest loop period when Guest.Tick is zero.
const DefaultTick = 100 * time.Millisecond

// Bounds of the guest knobs. The upper ones are far beyond any useful
// value and keep the dirtier's rate*tick arithmetic exact. The lower one
// is because every tick writes a record to the execution log and to every
// disk under the VM's lock: a shorter period is a busy loop of file writes,
// and hundreds of VMs would starve the agent.
const (
	maxDirtyRate = 1 << 40 // 1 TiB/s
	minTick      = time.Millisecond
	maxTick      = time.Hour
)

// Guest is how the simulated guest behaves, the same in every VM a Driver
// boots.
type Guest struct {
	// DirtyRateBytesPerSec is how much memory the guest dirties per second,
	// counted in whole pages as a hypervisor's dirty log counts it, at
	// random pages of its working set. A rate above one working set per
	// tick dirties the working set once per tick.
	DirtyRateBytesPerSec int64
	// WorkingSetBytes is how much of its memory, from the start, the guest
	// dirties; a VM with less memory than this dirties all of it.
	WorkingSetBytes int64
	// Tick is the guest loop period: one counter step and one record on
	// every disk per tick. Zero means DefaultTick.
	Tick time.Duration
	// Watchdog is the timeout of the guest's virtual watchdog, which it
	// feeds every tick; a guest that stops feeding it this long (Hang) is
	// reset by it: the VM crashes, as QEMU's i6300esb with the QEMU
	// driver's action. Zero: no watchdog, and a hung guest hangs.
	Watchdog time.Duration
}

// Validate says which field of g is out of range, by the name the agent's
// configuration file gives it. New accepts any Guest, so callers validate
// with their own configuration; a Driver with an invalid Guest refuses
// every Start.
func (g Guest) Validate() error {
	switch {
	case g.DirtyRateBytesPerSec < 0 || g.DirtyRateBytesPerSec > maxDirtyRate:
		return fmt.Errorf("dirty_rate_bytes_per_sec: %d is outside 0..%d", g.DirtyRateBytesPerSec, int64(maxDirtyRate))
	case g.WorkingSetBytes < 0:
		return fmt.Errorf("working_set_bytes: %d must not be negative", g.WorkingSetBytes)
	case g.Tick != 0 && (g.Tick < minTick || g.Tick > maxTick):
		return fmt.Errorf("tick: %s is outside %s..%s (0 means %s)", g.Tick, minTick, maxTick, DefaultTick)
	case g.Watchdog < 0 || g.Watchdog > maxTick:
		return fmt.Errorf("watchdog: %s is outside 0..%s", g.Watchdog, maxTick)
	}
	return nil
}

// forVM is g as it runs in a VM of memoryBytes: the default tick filled in
// and the working set no larger than the memory.
func (g Guest) forVM(memoryBytes int64) Guest {
	if g.Tick == 0 {
		g.Tick = DefaultTick
	}
	g.WorkingSetBytes = min(g.WorkingSetBytes, max(memoryBytes, 0))
	return g
}

// Config configures a Driver.
type Config struct {
	// Node is this node's name; it is written into disk claims and records.
	Node string
	// SharedDir is the shared storage root: disk paths are relative to it
	// and the execution logs live under SharedDir/.exec.
	SharedDir string
	// Logger receives VM lifecycle events, each with the VM and its epoch
	// as fields: start, thaw and stop at Info, a freeze at the lease end and
	// a crash (fenced disk writes among them) at Warn. Nil discards them.
	Logger *slog.Logger
	// Now is the clock of the lease gate and the records' wall times; nil
	// means time.Now. Tests inject one to move time by hand.
	Now func() time.Time
	// Guest is the behaviour of every guest this driver boots.
	Guest Guest
}

// Driver is the sim driver.Hypervisor of one node.
type Driver struct {
	cfg Config
	log *slog.Logger
	now func() time.Time
	// guestErr is cfg.Guest.Validate(), which Start returns: New cannot
	// fail, and a guest out of range must not boot.
	guestErr error

	// life serializes what changes the table (Start, Forget, Close), so
	// two Starts of one ID cannot both boot; it is held across file I/O,
	// which is why Status and List use mu instead.
	life   sync.Mutex
	mu     sync.RWMutex
	vms    map[driver.VMID]*vm
	closed bool
	// changes counts the changes of the table and of any VM's state
	// (driver.Watched).
	changes driver.ChangeCount
	clock   *guestClock
}

var (
	_ driver.Hypervisor = (*Driver)(nil)
	_ driver.Watched    = (*Driver)(nil)
)

// Changes implements driver.Watched.
func (d *Driver) Changes() uint64 { return d.changes.Load() }

// Changed implements driver.Watched.
func (d *Driver) Changed() <-chan struct{} { return d.changes.Changed() }

var errClosed = errors.New("sim: driver closed")

// New returns a driver for cfg.Node with no VMs. If cfg.Guest is invalid
// (see Guest.Validate), every Start fails with driver.ErrInvalidSpec.
func New(cfg Config) *Driver {
	d := &Driver{
		cfg: cfg, log: cfg.Logger, now: cfg.Now, guestErr: cfg.Guest.Validate(), vms: make(map[driver.VMID]*vm),
		clock: newGuestClock(cfg.Guest.forVM(0).Tick),
	}
	if d.log == nil {
		d.log = slog.New(slog.DiscardHandler)
	}
	if d.now == nil {
		d.now = time.Now
	}
	return d
}

var (
	_ driver.FaultInjector      = (*Driver)(nil)
	_ driver.DirtyRateEstimator = (*Driver)(nil)
	_ driver.LiveMigrator       = (*Driver)(nil)
	_ driver.QuickMigrator      = (*Driver)(nil)
	_ driver.Checker            = (*Driver)(nil)
)

// Capabilities reports the optional interfaces the sim implements: all
// of them.
func (d *Driver) Capabilities() driver.Capabilities {
	return driver.Capabilities{
		FaultInjection: true, DirtyRateEstimation: true,
		LiveMigration: true, QuickMigration: true, HotPlugDisks: true,
	}
}

// EstimatedDirtyRate implements driver.DirtyRateEstimator. The sim knows
// what its guests do rather than measuring it: the configured rate, but no
// more than the guest's working set (capped at memoryBytes, in whole
// pages) once per tick, because that is all a tick dirties. 0 if the Guest
// is invalid, since no guest of this driver runs.
func (d *Driver) EstimatedDirtyRate(memoryBytes int64) int64 {
	if d.guestErr != nil {
		return 0
	}
	g := d.cfg.Guest.forVM(memoryBytes)
	pages := (g.WorkingSetBytes + PageSize - 1) / PageSize
	// Float: pages*PageSize*1e9 overflows int64 for a large VM, and an
	// estimate needs no exactness beyond a byte.
	if perTick := float64(pages) * PageSize * float64(time.Second) / float64(g.Tick); perTick < float64(g.DirtyRateBytesPerSec) {
		return int64(perTick)
	}
	return g.DirtyRateBytesPerSec
}

// Start implements driver.Hypervisor.
func (d *Driver) Start(ctx context.Context, spec driver.VMSpec, leaseEnd time.Time) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if d.guestErr != nil {
		return fmt.Errorf("start %s: %w: sim guest %v", spec.ID, driver.ErrInvalidSpec, d.guestErr)
	}
	spec, err := d.normalize(spec)
	if err != nil {
		return fmt.Errorf("start %s: %w: %v", spec.ID, driver.ErrInvalidSpec, err)
	}
	now := d.now()
	if !now.Before(leaseEnd) {
		return fmt.Errorf("start %s at epoch %d: %w (%s ago)", spec.ID, spec.Epoch, driver.ErrLeaseExpired, now.Sub(leaseEnd))
	}
	leaseEnd = anchor(now, leaseEnd)
	d.life.Lock()
	defer d.life.Unlock()
	if d.isClosed() {
		return errClosed
	}
	if old := d.lookup(spec.ID); old != nil {
		old.mu.Lock()
		live, holds, st := old.live(), old.holds(), old.state
		old.mu.Unlock()
		switch {
		case old.spec.Epoch > spec.Epoch:
			return fmt.Errorf("start %s at epoch %d: %w: known at epoch %d", spec.ID, spec.Epoch, driver.ErrStaleEpoch, old.spec.Epoch)
		case old.spec.Epoch == spec.Epoch && live:
			return nil // idempotent: the executor may repeat itself
		case old.spec.Epoch == spec.Epoch && holds:
			// Paused or incoming: a booted guest would fork the one a
			// migration holds, at the same epoch, so no disk would fence
			// either of them.
			return fmt.Errorf("start %s at epoch %d: %w: it is %s", spec.ID, spec.Epoch, driver.ErrInvalidState, st)
		}
		// A newer epoch replaces the old incarnation, and a stopped or
		// crashed one at the same epoch is restarted (a guest crash on a
		// node that still owns the group).
		old.stop(false, driver.StateStopped, fmt.Sprintf("replaced by epoch %d", spec.Epoch))
	}
	// Waiting for the lock (another Start, a slow Stop) may have used up
	// the lease; claiming disks for a VM that may not run is pointless.
	if now := d.now(); !now.Before(leaseEnd) {
		return fmt.Errorf("start %s at epoch %d: %w (%s ago)", spec.ID, spec.Epoch, driver.ErrLeaseExpired, now.Sub(leaseEnd))
	}
	v, err := d.boot(spec, leaseEnd)
	if err != nil {
		return fmt.Errorf("start %s at epoch %d: %w", spec.ID, spec.Epoch, err)
	}
	v.log.Info("vm starting", "counter", v.counter, "lease_end", v.leaseEnd)
	d.mu.Lock()
	d.vms[spec.ID] = v
	d.changes.Add(1)
	d.mu.Unlock()
	d.clock.add(v, false)
	return nil
}

// CanRun implements driver.Checker: a simulated VM needs no file and no
// machine type, so what Start would refuse of the spec itself is all.
func (d *Driver) CanRun(spec driver.VMSpec) error {
	spec.Node = ""
	if _, err := d.normalize(spec); err != nil {
		return fmt.Errorf("%w: %v", driver.ErrInvalidSpec, err)
	}
	return nil
}

// ChecksSpecOnly implements driver.SpecOnlyChecker: a simulated guest
// needs nothing of the host.
func (d *Driver) ChecksSpecOnly() bool { return true }

// normalize checks a spec and fills in its defaults.
func (d *Driver) normalize(spec driver.VMSpec) (driver.VMSpec, error) {
	if err := spec.Validate(); err != nil {
		return spec, err
	}
	if spec.Node == "" {
		spec.Node = d.cfg.Node
	}
	switch {
	case spec.Node != d.cfg.Node:
		return spec, fmt.Errorf("node %q: this driver runs node %q", spec.Node, d.cfg.Node)
	case spec.MemoryBytes < PageSize:
		return spec, fmt.Errorf("memory_bytes: %d is below one page (%d)", spec.MemoryBytes, PageSize)
	}
	spec.Disks = slices.Clone(spec.Disks)
	return spec, nil
}

// anchor re-expresses t as an offset from now. When now comes from
// time.Now, the result carries a monotonic reading even if t did not, so
// every later gate check is immune to wall-clock steps from here on.
func anchor(now, t time.Time) time.Time { return now.Add(t.Sub(now)) }

// boot claims the disks, recovers the counter and opens the files of a new
// VM. Nothing runs until the caller starts its loop.
func (d *Driver) boot(spec driver.VMSpec, leaseEnd time.Time) (*vm, error) {
	v, err := d.newVM(spec, driver.StateRunning)
	if err != nil {
		return nil, err
	}
	v.leaseEnd = leaseEnd
	if err := v.attach(d.cfg.SharedDir); err != nil {
		v.mem.free()
		return nil, err
	}
	// The guest recovers its counter from its last record on its first
	// disk, as an application replays its journal, so the counter keeps
	// growing across restarts on any node. The claim in attach already
	// keeps older epochs from appending after this read.
	if len(v.paths) > 0 {
		last, ok, err := LastRecordOf(v.paths[0], spec.ID)
		if err != nil {
			v.detach()
			v.mem.free()
			return nil, err
		}
		if ok {
			v.counter = last.Counter
		}
	}
	v.mem.putUint64At(0, v.counter)
	return v, nil
}

// newVM maps the memory of a VM for spec and sets up its guest, in state.
func (d *Driver) newVM(spec driver.VMSpec, state driver.State) (*vm, error) {
	guest := d.cfg.Guest.forVM(spec.MemoryBytes)
	mem, err := newMemory(spec.MemoryBytes)
	if err != nil {
		return nil, err
	}
	return &vm{
		spec: spec, period: guest.Tick, watchdog: guest.Watchdog, now: d.now, changes: &d.changes,
		log:   d.log.With("vm", spec.ID.String(), "epoch", spec.Epoch),
		state: state, mem: mem,
		dirt: newDirtier(rand.Uint64(), mem, guest.DirtyRateBytesPerSec, guest.WorkingSetBytes, int64(guest.Tick)),
	}, nil
}

// attach claims the VM's disks for its epoch and opens them and its
// execution log, as a guest about to run needs them. On error it leaves
// nothing open, though disks it claimed stay claimed.
func (v *vm) attach(sharedDir string) (err error) {
	defer func() {
		if err != nil {
			v.detach()
		}
	}()
	for _, dk := range v.spec.Disks {
		p := filepath.Join(sharedDir, dk.Path)
		if err := ClaimDisk(p, v.spec.Node, v.spec.Epoch); err != nil {
			return fmt.Errorf("claiming disk %s: %w", dk.Name, err)
		}
		f, err := os.OpenFile(p, os.O_RDWR|os.O_APPEND, 0)
		if err != nil {
			return err
		}
		v.paths = append(v.paths, p)
		v.disks = append(v.disks, f)
	}
	execPath := ExecLogPath(sharedDir, v.spec.ID)
	if err := os.MkdirAll(filepath.Dir(execPath), 0o755); err != nil {
		return err
	}
	v.exec, err = os.OpenFile(execPath, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	return err
}

// detach closes what attach opened.
func (v *vm) detach() {
	for _, f := range v.disks {
		f.Close()
	}
	if v.exec != nil {
		v.exec.Close()
	}
	v.paths, v.disks, v.exec = nil, nil, nil
}

// Stop implements driver.Hypervisor.
func (d *Driver) Stop(ctx context.Context, id driver.VMID, epoch uint64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	v, err := d.command("stop", id, epoch)
	if err != nil {
		return err
	}
	v.stop(true, driver.StateStopped, "stopped")
	return nil
}

// Kill implements driver.Hypervisor.
func (d *Driver) Kill(id driver.VMID, epoch uint64) error {
	v, err := d.command("kill", id, epoch)
	if err != nil {
		return err
	}
	v.stop(false, driver.StateStopped, "killed")
	return nil
}

// Crash implements driver.FaultInjector.
func (d *Driver) Crash(id driver.VMID, reason string) error {
	v := d.lookup(id)
	if v == nil {
		return fmt.Errorf("crash %s: %w", id, driver.ErrNotFound)
	}
	v.mu.Lock()
	if !v.live() {
		st := v.state
		v.mu.Unlock()
		return fmt.Errorf("crash %s: %w: it is %s", id, driver.ErrInvalidState, st)
	}
	v.halt(driver.StateCrashed, reason)
	v.mu.Unlock()
	return nil
}

// Hang implements driver.FaultInjector: the guest stops executing and
// feeding its watchdog while its VM stays up, as a guest kernel that
// locked up.
func (d *Driver) Hang(id driver.VMID) error {
	v := d.lookup(id)
	if v == nil {
		return fmt.Errorf("hang %s: %w", id, driver.ErrNotFound)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.state != driver.StateRunning {
		return fmt.Errorf("hang %s: %w: it is %s", id, driver.ErrInvalidState, v.state)
	}
	if !v.hung {
		v.hung, v.fed = true, v.now()
		v.log.Info("guest hung (injected)", "watchdog", v.watchdog)
	}
	return nil
}

// MemoryChecksum implements driver.FaultInjector. A running or frozen
// VM's memory is hashed under its mutex, between two ticks; a paused one
// and a complete incoming one have no writer left (the move that paused
// the one has sent everything; Activate takes the mutex that the other's
// hash holds).
func (d *Driver) MemoryChecksum(id driver.VMID) (uint64, error) {
	v := d.lookup(id)
	if v == nil {
		return 0, fmt.Errorf("checksum of %s: %w", id, driver.ErrNotFound)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	switch {
	case v.mem == nil || !v.holds():
		return 0, fmt.Errorf("checksum of %s: %w: it is %s", id, driver.ErrInvalidState, v.state)
	case v.state == driver.StateIncoming && !v.complete:
		return 0, fmt.Errorf("checksum of %s: %w: its state has not all arrived", id, driver.ErrInvalidState)
	}
	return v.mem.checksum(), nil
}

// command finds the VM a Stop or Kill is for and refuses an older epoch.
// A newer epoch is accepted: a newer owner may stop an older incarnation.
func (d *Driver) command(op string, id driver.VMID, epoch uint64) (*vm, error) {
	v := d.lookup(id)
	if v == nil {
		return nil, fmt.Errorf("%s %s: %w", op, id, driver.ErrNotFound)
	}
	if epoch < v.spec.Epoch {
		return nil, fmt.Errorf("%s %s at epoch %d: %w: vm is at epoch %d", op, id, epoch, driver.ErrStaleEpoch, v.spec.Epoch)
	}
	return v, nil
}

// ExtendLease implements driver.Hypervisor. The check of until against the
// clock and the thaw happen under the VM's mutex, the one the guest loop
// checks the gate under, so no late thaw can get through: see the driver
// package's fencing contract.
func (d *Driver) ExtendLease(id driver.VMID, epoch uint64, until time.Time) error {
	v := d.lookup(id)
	if v == nil {
		return fmt.Errorf("extend lease of %s: %w", id, driver.ErrNotFound)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	now := v.now()
	switch {
	case epoch != v.spec.Epoch:
		return fmt.Errorf("extend lease of %s at epoch %d: %w: vm is at epoch %d", id, epoch, driver.ErrStaleEpoch, v.spec.Epoch)
	case !v.live() && v.state != driver.StatePaused:
		// A paused source keeps its lease renewed while the move may
		// still roll back; an incoming VM has no lease to extend.
		return fmt.Errorf("extend lease of %s: %w: it is %s", id, driver.ErrInvalidState, v.state)
	case !now.Before(until):
		// Freeze first if the lease has run out unnoticed, so Status
		// agrees with what the refusal means.
		v.gate()
		return fmt.Errorf("extend lease of %s to %s: %w (%s ago)", id, until.Format(time.RFC3339Nano), driver.ErrLeaseExpired, now.Sub(until))
	}
	if until.After(v.leaseEnd) {
		v.leaseEnd = anchor(now, until)
	}
	// A paused VM stays paused: only Resume runs it.
	if v.state == driver.StateFrozen {
		// leaseEnd >= until > now: the gate is open again.
		v.setState(driver.StateRunning)
		v.log.Info("vm thawed", "lease_end", v.leaseEnd)
	}
	return nil
}

// Status implements driver.Hypervisor.
func (d *Driver) Status(id driver.VMID) (driver.Status, error) {
	v := d.lookup(id)
	if v == nil {
		return driver.Status{}, fmt.Errorf("status of %s: %w", id, driver.ErrNotFound)
	}
	return v.status(), nil
}

// List implements driver.Hypervisor.
func (d *Driver) List() []driver.Status {
	d.mu.RLock()
	vms := make([]*vm, 0, len(d.vms))
	for _, v := range d.vms {
		vms = append(vms, v)
	}
	d.mu.RUnlock()
	// Each ID's string once, not at every comparison: the executor lists
	// up to ten times a second.
	type keyed struct {
		key string
		st  driver.Status
	}
	ks := make([]keyed, len(vms))
	for i, v := range vms {
		st := v.status()
		ks[i] = keyed{st.ID.String(), st}
	}
	slices.SortFunc(ks, func(a, b keyed) int { return strings.Compare(a.key, b.key) })
	out := make([]driver.Status, len(ks))
	for i, k := range ks {
		out[i] = k.st
	}
	return out
}

// Forget implements driver.Hypervisor.
func (d *Driver) Forget(id driver.VMID, epoch uint64) error {
	d.life.Lock()
	defer d.life.Unlock()
	v := d.lookup(id)
	if v == nil {
		return fmt.Errorf("forget %s: %w", id, driver.ErrNotFound)
	}
	v.mu.Lock()
	st := v.state
	if v.spec.Epoch != epoch {
		v.mu.Unlock()
		return fmt.Errorf("forget %s at epoch %d: %w: it is at epoch %d", id, epoch, driver.ErrStaleEpoch, v.spec.Epoch)
	}
	if v.live() || st == driver.StatePaused {
		v.mu.Unlock()
		return fmt.Errorf("forget %s: %w: it is %s", id, driver.ErrInvalidState, st)
	}
	// An incoming VM has never run and claimed nothing: forgetting it
	// discards the copy.
	v.halt(driver.StateStopped, "forgotten while incoming")
	v.mu.Unlock()
	d.mu.Lock()
	delete(d.vms, id)
	d.changes.Add(1)
	d.mu.Unlock()
	return nil
}

// Close kills every VM; the clock lets go of them at its next tick. Later
// Starts fail; Status and List keep working.
func (d *Driver) Close() error {
	d.life.Lock()
	defer d.life.Unlock()
	d.mu.Lock()
	d.closed = true
	vms := make([]*vm, 0, len(d.vms))
	for _, v := range d.vms {
		vms = append(vms, v)
	}
	d.mu.Unlock()
	for _, v := range vms {
		v.stop(false, driver.StateStopped, "driver closed")
	}
	return nil
}

func (d *Driver) lookup(id driver.VMID) *vm {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.vms[id]
}

func (d *Driver) isClosed() bool {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.closed
}
