// Package qemu is the driver of real VMs: one qemu-system-x86_64 process per
// VM, run through QMP (driver/qemu/qmp) and fenced by a supervisor process
// beside it (driver/qemu/supervise).
//
// The supervisor is what keeps the fencing contract (driver's package
// documentation) when the agent cannot: it starts QEMU as its child, holds
// the VM's lease end, and stops every thread of QEMU with SIGSTOP when the
// lease ends, whatever the agent is doing, SIGKILLed, SIGSTOPped or
// busy. A thaw (SIGCONT) comes only from an Extend the supervisor checks
// against its own clock, under the same lock as the freeze, so a late
// renewal cannot resume a VM. The supervisor runs in a session of its own,
// so a signal to the agent's process group does not reach it, and QEMU
// dies with it (PR_SET_PDEATHSIG), so no QEMU runs unsupervised. QMP's
// `stop` is not the fence: it needs a QEMU that answers.
//
// A VM's files (its QMP and console sockets, console log, QEMU's pid file,
// the supervisor's socket, vm.json naming the VM and its epoch) live in a
// directory of its own under the run directory. An agent that restarts
// finds its VMs there and takes them back (New), and the executor then
// keeps those it still owns at that epoch and kills the others. Close
// leaves the VMs to their supervisors for that reason: a VM that no agent
// takes back freezes at its lease end.
//
// Moves are QEMU's own migration: live, from QEMU to QEMU over TCP, the
// two drivers agreeing over the executor's stream in a few control
// messages (control.go, migrate.go, incoming.go); quick, through a state
// file on shared storage (save.go). A move's target is a QEMU started
// with -incoming defer and -S under an unarmed supervisor: it answers QMP
// but runs no guest code and takes no disk lock (late-block-activate)
// until Activate arms its lease and continues it (switch.go). The source
// stays under its lease throughout, paused once the state has gone.
package qemu

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/haven-ha/haven/driver"
	"github.com/haven-ha/haven/driver/qemu/qmp"
	"github.com/haven-ha/haven/driver/qemu/supervise"
)

// Config is a node's QEMU driver.
type Config struct {
	// Node is this node's name.
	Node string
	// SharedDir is the shared storage root: disk paths are relative to it.
	SharedDir string
	// RunDir holds the VMs' sockets, logs and supervisors: node-local,
	// kept across agent restarts (the agent's data directory), and short
	// enough for unix socket paths.
	RunDir string
	// Binary is the QEMU system emulator; default qemu-system-x86_64.
	Binary string
	// Accel is QEMU's accelerator; default kvm.
	Accel string
	// CPU is the CPU model every VM gets: one that every node of the
	// cluster can provide, so that a VM can move between them. Default
	// qemu64.
	CPU string
	// Machine is the machine type of a VM whose spec names none; default
	// q35, resolved to the versioned type this QEMU builds for it.
	Machine string
	// StopTimeout bounds a graceful stop (ACPI power button) before the
	// driver quits QEMU; default 30s.
	StopTimeout time.Duration
	// Supervisor is the command that runs a supervisor process, to which
	// the driver appends the supervisor's own arguments: the agent's own
	// binary and its hidden subcommand (see supervise.Main).
	Supervisor []string
	// KillFrozenAfter, if positive, is how long a VM's supervisor lets
	// its QEMU stay frozen past the lease end, with no renewal, before it
	// kills it (supervise.StartConfig.KillAfter): a frozen QEMU holds its
	// images' locks, which the group's restart on another node needs.
	KillFrozenAfter time.Duration
	// MigrationAddr is the address on which a live migration's target
	// QEMU listens for the source's QEMU, on a port of its choice: one
	// the other nodes reach (the agent's bind address). Default
	// 127.0.0.1.
	MigrationAddr string
	// TLSDir, if set, is a directory in QEMU's x509 layout (ca-cert.pem,
	// server-cert.pem, server-key.pem, client-cert.pem, client-key.pem):
	// every live move's stream between the QEMUs is then mutual TLS,
	// each end verifying the other against the CA, the target as
	// TLSHostname. Empty: plaintext.
	TLSDir string
	// TLSHostname is the name in every node's certificate that a move's
	// source verifies the target by.
	TLSHostname string
	// Logger receives VM lifecycle events; nil discards them.
	Logger *slog.Logger
}

func (c *Config) defaults() {
	if c.Binary == "" {
		c.Binary = "qemu-system-x86_64"
	}
	if c.Accel == "" {
		c.Accel = "kvm"
	}
	if c.CPU == "" {
		c.CPU = "qemu64"
	}
	if c.Machine == "" {
		c.Machine = "q35"
	}
	if c.StopTimeout == 0 {
		c.StopTimeout = 30 * time.Second
	}
	if c.MigrationAddr == "" {
		c.MigrationAddr = "127.0.0.1"
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Driver is the QEMU driver.Hypervisor of one node.
type Driver struct {
	cfg      Config
	log      *slog.Logger
	machines machines

	mu     sync.Mutex
	vms    map[driver.VMID]*vm
	closed bool
	// changes counts the changes of the table and of any VM's state
	// (driver.Watched).
	changes driver.ChangeCount
}

// vm is one VM the driver knows: running, or ended and not yet forgotten.
//
// Two locks, so that nothing slow ever holds the one that Status, List
// and lease renewals need: cmd orders the commands that take time (start,
// stop, kill, forget: QEMU booting, a guest shutting down), mu guards the
// fields and is never held across a call to QEMU or the supervisor. A
// renewal thus never waits behind a slow stop, of this VM or another.
type vm struct {
	id  driver.VMID
	dir string
	// spec is the VM as it was started or received, and machine the
	// versioned machine type QEMU builds for it: what the other end of a
	// move checks before it takes the VM's state.
	spec    driver.VMSpec
	machine string

	cmd sync.Mutex

	mu       sync.Mutex
	epoch    uint64
	sup      *supervise.Client // nil until the supervisor runs
	mon      *qmp.Client       // nil once the driver let go of QEMU
	leaseEnd time.Time
	state    driver.State // StateUnknown while it boots; set by setStateLocked
	reason   string
	// changes is the driver's count, which every change of state moves;
	// frozenSeen: the freeze at the lease end, which the supervisor makes
	// on its own, has been counted (stateLocked).
	changes    *driver.ChangeCount
	frozenSeen bool
	// stopping: the driver itself is ending the VM, so QEMU's exit and
	// shutdown events are a stop, not a crash.
	stopping bool
	// moving: a MigrateOut or SaveState of the VM runs; Resume waits for
	// it to return, and a second move is refused.
	moving bool
	// complete: an incoming VM's QEMU has loaded all of the state, or,
	// with postcopy, holds what came before the source paused for its
	// switchover to post-copy and waits for the rest.
	complete bool
	// plugging: a disk hot-plug runs; no move may begin, since its
	// target is prepared with the disks the VM has.
	plugging bool
	// handover is the QEMU of a source that a move left paused before
	// its switchover to post-copy (MigrateOut returned): Kill lets it go
	// on, Resume cancels it (postcopy.go).
	handover *qmp.Client
	// postcopy: an incoming VM that Activate runs while its pages still
	// come from the source.
	postcopy bool
}

func (v *vm) snapshot() (sup *supervise.Client, mon *qmp.Client, epoch uint64, state driver.State) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.sup, v.mon, v.epoch, v.stateLocked()
}

// record is vm.json: what an agent restarted while its VMs run needs to
// take them back.
type record struct {
	Spec driver.VMSpec `json:"spec"`
	// Machine is the versioned machine type QEMU was started with.
	Machine string `json:"machine,omitempty"`
}

// New opens the driver for cfg.Node: it checks that QEMU runs and takes
// back the VMs a previous agent left running under their supervisors.
func New(ctx context.Context, cfg Config) (*Driver, error) {
	cfg.defaults()
	if len(cfg.Supervisor) == 0 {
		return nil, errors.New("qemu driver: no supervisor command")
	}
	if err := checkRunDir(cfg.RunDir); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.RunDir, 0o700); err != nil {
		return nil, err
	}
	m, err := probeMachines(ctx, cfg.Binary)
	if err != nil {
		return nil, err
	}
	if _, err := m.resolve(cfg.Machine); err != nil {
		return nil, err
	}
	d := &Driver{cfg: cfg, log: cfg.Logger, machines: m, vms: map[driver.VMID]*vm{}}
	d.adopt(ctx)
	return d, nil
}

// Capabilities implements driver.Hypervisor. Disk hot-plug comes with its
// interface.
func (d *Driver) Capabilities() driver.Capabilities {
	return driver.Capabilities{LiveMigration: true, QuickMigration: true, HotPlugDisks: true, Postcopy: postcopySupported}
}

var (
	_ driver.LiveMigrator  = (*Driver)(nil)
	_ driver.QuickMigrator = (*Driver)(nil)
	_ driver.Checker       = (*Driver)(nil)
	_ driver.Watched       = (*Driver)(nil)
)

// CanRun implements driver.Checker with the checks Start makes before
// any process starts: the machine type this node's QEMU emulates, the
// kernel, initrd and disk files as this node sees them.
func (d *Driver) CanRun(spec driver.VMSpec) error {
	spec.Node = ""
	if _, err := d.check(spec); err != nil {
		return fmt.Errorf("%w: %v", driver.ErrInvalidSpec, err)
	}
	return nil
}

func shortName(id driver.VMID) string {
	h := sha256.Sum256([]byte(id.String()))
	return "vm-" + hex.EncodeToString(h[:6])
}

func (d *Driver) lookup(id driver.VMID) *vm {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.vms[id]
}

// Start implements driver.Hypervisor.
func (d *Driver) Start(ctx context.Context, spec driver.VMSpec, leaseEnd time.Time) error {
	machine, err := d.check(spec)
	if err != nil {
		return fmt.Errorf("start %s: %w: %v", spec.ID, driver.ErrInvalidSpec, err)
	}
	spec.Node = d.cfg.Node
	if !time.Now().Before(leaseEnd) {
		return fmt.Errorf("start %s at epoch %d: %w", spec.ID, spec.Epoch, driver.ErrLeaseExpired)
	}
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return errClosed
	}
	old := d.vms[spec.ID]
	if old != nil {
		_, _, ep, st := old.snapshot()
		switch {
		case ep > spec.Epoch:
			d.mu.Unlock()
			return fmt.Errorf("start %s at epoch %d: %w: known at epoch %d", spec.ID, spec.Epoch, driver.ErrStaleEpoch, ep)
		case ep == spec.Epoch && (st == driver.StateRunning || st == driver.StateFrozen || st == driver.StateUnknown):
			d.mu.Unlock()
			return nil // running, or booting for another Start
		case ep == spec.Epoch && (st == driver.StatePaused || st == driver.StateIncoming):
			d.mu.Unlock()
			return fmt.Errorf("start %s at epoch %d: %w: the VM is %s", spec.ID, spec.Epoch, driver.ErrInvalidState, st)
		}
	}
	// The new VM takes the id's place at once, booting (StateUnknown),
	// so that a concurrent Start at the same epoch sees it.
	v := &vm{id: spec.ID, dir: vmDir(d.cfg.RunDir, spec.ID), spec: spec, machine: machine, epoch: spec.Epoch, changes: &d.changes}
	v.cmd.Lock()
	defer v.cmd.Unlock()
	d.vms[spec.ID] = v
	d.changes.Add(1)
	d.mu.Unlock()
	if old != nil {
		old.cmd.Lock()
		err := old.kill()
		old.cmd.Unlock()
		if err != nil {
			v.crashed("the older incarnation could not be killed: " + err.Error())
			return fmt.Errorf("start %s: %w", spec.ID, err)
		}
	}
	if err := d.boot(ctx, v, spec, machine, leaseEnd); err != nil {
		_ = v.kill()
		v.crashed(err.Error())
		return fmt.Errorf("start %s at epoch %d: %w", spec.ID, spec.Epoch, err)
	}
	d.log.Info("vm started", "vm", spec.ID.String(), "epoch", spec.Epoch, "dir", v.dir)
	return nil
}

// crashed records that the VM is gone, and why.
func (v *vm) crashed(reason string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.setStateLocked(driver.StateCrashed)
	v.reason = reason
}

// boot starts QEMU paused under its supervisor, connects to it and runs
// it. v.cmd is held.
func (d *Driver) boot(ctx context.Context, v *vm, spec driver.VMSpec, machine string, leaseEnd time.Time) error {
	mon, err := d.launch(ctx, v, spec, machine, leaseEnd, false)
	if err != nil {
		return err
	}
	d.watch(v, mon)
	if err := mon.Cont(ctx); err != nil {
		return fmt.Errorf("qmp cont: %w", err)
	}
	v.mu.Lock()
	v.setStateLocked(driver.StateRunning)
	v.mu.Unlock()
	return nil
}

// launch starts QEMU paused under its supervisor, in a fresh directory
// with the VM's record, and connects to it. A zero leaseEnd leaves the
// supervisor unarmed: a move's target, which must answer QMP but never
// runs before Activate. v.cmd is held.
func (d *Driver) launch(ctx context.Context, v *vm, spec driver.VMSpec, machine string, leaseEnd time.Time, incoming bool) (*qmp.Client, error) {
	if err := os.RemoveAll(v.dir); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(v.dir, 0o700); err != nil {
		return nil, err
	}
	if err := writeRecord(v.dir, record{Spec: spec, Machine: machine}); err != nil {
		return nil, err
	}
	sup, err := supervise.Start(ctx, supervise.StartConfig{
		Command:   d.cfg.Supervisor,
		Socket:    filepath.Join(v.dir, supervisorSocket),
		LogFile:   filepath.Join(v.dir, supervisorLog),
		PIDFile:   filepath.Join(v.dir, supervisorPID),
		Epoch:     spec.Epoch,
		LeaseEnd:  leaseEnd,
		Child:     command(d.cfg, spec, machine, v.dir, incoming),
		KillAfter: d.cfg.KillFrozenAfter,
	})
	if err != nil {
		return nil, fmt.Errorf("supervisor: %w", err)
	}
	v.mu.Lock()
	v.sup, v.leaseEnd = sup, leaseEnd
	v.mu.Unlock()
	mon, err := d.connect(ctx, v.dir, sup)
	if err != nil {
		return nil, err
	}
	v.mu.Lock()
	v.mon = mon
	v.mu.Unlock()
	return mon, nil
}

// connect waits for QEMU's QMP socket and connects to it; a QEMU that
// exits first (it refused its command line) fails with its last words.
func (d *Driver) connect(ctx context.Context, dir string, sup *supervise.Client) (*qmp.Client, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	path := filepath.Join(dir, qmpSocket)
	for {
		mon, err := qmp.Dial(ctx, path, d.log.With("qmp", path))
		if err == nil {
			return mon, nil
		}
		if st, serr := sup.Status(ctx); serr == nil && st.Exit != nil {
			return nil, exitError(st.Exit, lastWords(filepath.Join(dir, supervisorLog)))
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("qmp %s: %w (last: %v)", path, ctx.Err(), err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// stateLocked is the VM's state now: the supervisor freezes it at its
// lease end, so a running VM past its lease end is frozen whether or not
// the driver has heard. The first to see the freeze counts it, before any
// Status or List can show it. v.mu is held.
func (v *vm) stateLocked() driver.State {
	if v.state == driver.StateRunning && !time.Now().Before(v.leaseEnd) {
		if !v.frozenSeen {
			v.frozenSeen = true
			v.changes.Add(1)
		}
		return driver.StateFrozen
	}
	return v.state
}

// setStateLocked changes the VM's state and counts the change first.
// v.mu is held, or v is not in the table yet.
func (v *vm) setStateLocked(s driver.State) {
	v.changes.Add(1)
	v.state, v.frozenSeen = s, false
}

// extendLocked moves the lease end later, never earlier; a freeze that
// was counted and that the new end thaws (the supervisor did, before the
// caller got here) is a change too. v.mu is held.
func (v *vm) extendLocked(until time.Time) {
	if !until.After(v.leaseEnd) {
		return
	}
	v.leaseEnd = until
	if v.frozenSeen && time.Now().Before(until) {
		v.frozenSeen = false
		v.changes.Add(1)
	}
}

// release lets go of QEMU and the supervisor (the processes go on unless
// they were ended). v.mu is held.
func (v *vm) releaseLocked() {
	if v.mon != nil {
		v.mon.Close()
		v.mon = nil
	}
	if v.sup != nil {
		v.sup.Close()
		v.sup = nil
	}
}

// kill ends the VM at once: SIGKILL from its supervisor, which then
// exits. A VM that is already gone stays as it is (stopped or crashed).
// v.cmd is held.
func (v *vm) kill() error {
	v.mu.Lock()
	if v.state == driver.StateStopped || v.state == driver.StateCrashed {
		v.mu.Unlock()
		return nil
	}
	v.stopping = true
	sup := v.sup
	v.mu.Unlock()
	if sup != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := sup.Kill(ctx); err != nil && !errors.Is(err, supervise.ErrExited) {
			return fmt.Errorf("kill %s: %w", v.id, err)
		}
		_, _ = sup.Release(ctx)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	v.releaseLocked()
	if v.state != driver.StateCrashed {
		v.setStateLocked(driver.StateStopped)
	}
	return nil
}

// epochCheck refuses a command from an older epoch than the VM's.
func epochCheck(op string, id driver.VMID, epoch, vmEpoch uint64) error {
	if epoch < vmEpoch {
		return fmt.Errorf("%s %s at epoch %d: %w: the VM is at epoch %d", op, id, epoch, driver.ErrStaleEpoch, vmEpoch)
	}
	return nil
}

// Stop implements driver.Hypervisor: the ACPI power button, then SIGKILL.
// A frozen VM, or one whose lease ends meanwhile, is killed: thawing it to
// shut down would run it past its lease.
func (d *Driver) Stop(ctx context.Context, id driver.VMID, epoch uint64) error {
	v := d.lookup(id)
	if v == nil {
		return fmt.Errorf("stop %s: %w", id, driver.ErrNotFound)
	}
	v.cmd.Lock()
	defer v.cmd.Unlock()
	v.mu.Lock()
	if err := epochCheck("stop", id, epoch, v.epoch); err != nil {
		v.mu.Unlock()
		return err
	}
	running, mon, end := v.stateLocked() == driver.StateRunning, v.mon, v.leaseEnd
	v.stopping = true
	v.mu.Unlock()
	if running && mon != nil {
		if err := d.powerdown(ctx, mon, end); err != nil {
			d.log.Warn("graceful stop failed; killing", "vm", id.String(), "error", err)
		}
	}
	d.handOver(v)
	if err := v.kill(); err != nil {
		return err
	}
	d.log.Info("vm stopped", "vm", id.String(), "epoch", epoch)
	return nil
}

// powerdown asks the guest to power off and waits, within StopTimeout and
// the lease, for QEMU to report it (-no-shutdown keeps QEMU alive).
func (d *Driver) powerdown(ctx context.Context, mon *qmp.Client, leaseEnd time.Time) error {
	ctx, cancel := context.WithDeadline(ctx, earliest(time.Now().Add(d.cfg.StopTimeout), leaseEnd))
	defer cancel()
	sub := mon.Subscribe(qmp.EventShutdown)
	defer sub.Close()
	if err := mon.SystemPowerdown(ctx); err != nil {
		return err
	}
	if _, err := sub.Next(ctx); err != nil {
		return fmt.Errorf("the guest did not power off: %w", err)
	}
	return nil
}

func earliest(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// Kill implements driver.Hypervisor.
func (d *Driver) Kill(id driver.VMID, epoch uint64) error {
	v := d.lookup(id)
	if v == nil {
		return fmt.Errorf("kill %s: %w", id, driver.ErrNotFound)
	}
	v.cmd.Lock()
	defer v.cmd.Unlock()
	_, _, ep, _ := v.snapshot()
	if err := epochCheck("kill", id, epoch, ep); err != nil {
		return err
	}
	d.handOver(v)
	return v.kill()
}

// ExtendLease implements driver.Hypervisor. The supervisor decides, on its
// own clock and under its own lock, whether the new end is still in the
// future; only then does it thaw a frozen QEMU. It takes no command lock:
// a renewal never waits for a slow stop.
func (d *Driver) ExtendLease(id driver.VMID, epoch uint64, until time.Time) error {
	v := d.lookup(id)
	if v == nil {
		return fmt.Errorf("extend lease of %s: %w", id, driver.ErrNotFound)
	}
	v.mu.Lock()
	sup, end, st, vmEpoch := v.sup, v.leaseEnd, v.state, v.epoch
	v.mu.Unlock()
	switch {
	case epoch != vmEpoch:
		return fmt.Errorf("extend lease of %s at epoch %d: %w: the VM is at epoch %d", id, epoch, driver.ErrStaleEpoch, vmEpoch)
	case (st != driver.StateRunning && st != driver.StatePaused) || sup == nil:
		return fmt.Errorf("extend lease of %s: %w: the VM is %s", id, driver.ErrInvalidState, st)
	case !until.After(end):
		if !time.Now().Before(until) {
			return fmt.Errorf("extend lease of %s: %w", id, driver.ErrLeaseExpired)
		}
		return nil // never shortened
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// The supervisor's refusals are the driver's own errors.
	if _, err := sup.Extend(ctx, epoch, until); err != nil {
		return fmt.Errorf("extend lease of %s: %w", id, err)
	}
	v.mu.Lock()
	v.extendLocked(until)
	v.mu.Unlock()
	return nil
}

// Changes implements driver.Watched. The supervisor freezes a VM at its
// lease end without telling the driver, so Changes looks at each VM's
// lease first: a freeze it finds is counted, as the first Status or List
// that shows it would.
func (d *Driver) Changes() uint64 {
	d.mu.Lock()
	vms := make([]*vm, 0, len(d.vms))
	for _, v := range d.vms {
		vms = append(vms, v)
	}
	d.mu.Unlock()
	for _, v := range vms {
		v.mu.Lock()
		v.stateLocked()
		v.mu.Unlock()
	}
	return d.changes.Load()
}

// Changed implements driver.Watched.
func (d *Driver) Changed() <-chan struct{} { return d.changes.Changed() }

// Status implements driver.Hypervisor.
func (d *Driver) Status(id driver.VMID) (driver.Status, error) {
	v := d.lookup(id)
	if v == nil {
		return driver.Status{}, fmt.Errorf("status of %s: %w", id, driver.ErrNotFound)
	}
	return v.status(), nil
}

func (v *vm) status() driver.Status {
	v.mu.Lock()
	defer v.mu.Unlock()
	st := v.stateLocked()
	return driver.Status{
		ID: v.id, Epoch: v.epoch, State: st, Reason: v.reason, LeaseEnd: v.leaseEnd,
		Complete: st == driver.StateIncoming && v.complete,
	}
}

// List implements driver.Hypervisor.
func (d *Driver) List() []driver.Status {
	d.mu.Lock()
	vms := make([]*vm, 0, len(d.vms))
	for _, v := range d.vms {
		vms = append(vms, v)
	}
	d.mu.Unlock()
	out := make([]driver.Status, 0, len(vms))
	for _, v := range vms {
		out = append(out, v.status())
	}
	slices.SortFunc(out, func(a, b driver.Status) int { return strings.Compare(a.ID.String(), b.ID.String()) })
	return out
}

// Forget implements driver.Hypervisor.
func (d *Driver) Forget(id driver.VMID, epoch uint64) error {
	v := d.lookup(id)
	if v == nil {
		return fmt.Errorf("forget %s: %w", id, driver.ErrNotFound)
	}
	v.cmd.Lock()
	defer v.cmd.Unlock()
	_, _, ep, st := v.snapshot()
	switch {
	case epoch != ep:
		return fmt.Errorf("forget %s at epoch %d: %w: the VM is at epoch %d", id, epoch, driver.ErrStaleEpoch, ep)
	case st == driver.StateIncoming:
		if err := v.kill(); err != nil {
			return err
		}
	case st != driver.StateStopped && st != driver.StateCrashed:
		return fmt.Errorf("forget %s: %w: the VM is %s", id, driver.ErrInvalidState, st)
	}
	d.mu.Lock()
	if d.vms[id] == v {
		delete(d.vms, id)
		d.changes.Add(1)
	}
	d.mu.Unlock()
	return os.RemoveAll(v.dir)
}

// Close implements driver.Hypervisor: it lets go of the VMs, which run
// on under their supervisors until their lease ends, for a restarted agent
// to take back.
func (d *Driver) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	for id, v := range d.vms {
		v.mu.Lock()
		v.releaseLocked()
		v.mu.Unlock()
		delete(d.vms, id)
		d.changes.Add(1)
	}
	return nil
}

// adopt takes back the VMs whose supervisors outlived the previous agent.
// A VM whose supervisor is gone died with it (QEMU dies with its
// supervisor): it is listed as crashed, so that the executor forgets it
// and the group's owner learns of it.
func (d *Driver) adopt(ctx context.Context) {
	entries, err := os.ReadDir(d.cfg.RunDir)
	if err != nil {
		d.log.Warn("cannot read the run directory; no VM taken back", "dir", d.cfg.RunDir, "error", err)
		return
	}
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		dir := filepath.Join(d.cfg.RunDir, e.Name())
		b, err := os.ReadFile(filepath.Join(dir, "vm.json"))
		var rec record
		if err == nil {
			err = json.Unmarshal(b, &rec)
		}
		if err != nil || vmDir(d.cfg.RunDir, rec.Spec.ID) != dir {
			d.log.Warn("not a VM's directory; left alone", "dir", dir, "error", err)
			continue
		}
		v := &vm{id: rec.Spec.ID, epoch: rec.Spec.Epoch, dir: dir, spec: rec.Spec, machine: rec.Machine, changes: &d.changes}
		if v.machine == "" {
			// A record from before the field: the type this QEMU
			// builds for the spec now is the best guess.
			v.machine, _ = d.machines.resolve(cmp.Or(rec.Spec.Machine, d.cfg.Machine))
		}
		if err := d.readopt(ctx, v); err != nil {
			// Listed crashed, it must be gone for real: a QEMU the
			// driver cannot drive must not run on beside its group's
			// restart.
			if v.sup != nil {
				kctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				if _, kerr := v.sup.Kill(kctx); kerr == nil || errors.Is(kerr, supervise.ErrExited) {
					_, _ = v.sup.Release(kctx)
				}
				cancel()
			}
			v.releaseLocked()
			v.setStateLocked(driver.StateCrashed)
			v.reason = "lost while the agent was down: " + err.Error()
			d.log.Warn("vm not taken back", "vm", v.id.String(), "epoch", v.epoch, "error", err)
		} else {
			d.log.Info("vm taken back", "vm", v.id.String(), "epoch", v.epoch, "state", v.state.String())
		}
		d.vms[v.id] = v
		d.changes.Add(1)
	}
}

func (d *Driver) readopt(ctx context.Context, v *vm) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var err error
	if v.sup, err = supervise.Dial(ctx, filepath.Join(v.dir, supervisorSocket)); err != nil {
		return fmt.Errorf("supervisor: %w", err)
	}
	st, err := v.sup.Status(ctx)
	if err != nil {
		return fmt.Errorf("supervisor: %w", err)
	}
	if st.Exit != nil {
		_, _ = v.sup.Release(ctx)
		return fmt.Errorf("qemu exited (%s)", st.Exit)
	}
	if st.Epoch != v.epoch {
		return fmt.Errorf("the supervisor holds epoch %d, vm.json %d", st.Epoch, v.epoch)
	}
	v.leaseEnd = st.LeaseEnd
	if st.State == supervise.StateFrozen {
		// A frozen QEMU cannot answer until a renewal thaws it: the
		// driver connects once it does.
		v.setStateLocked(driver.StateRunning)
		go d.reconnect(v)
		return nil
	}
	if v.mon, err = qmp.Dial(ctx, filepath.Join(v.dir, qmpSocket), d.log.With("vm", v.id.String())); err != nil {
		return fmt.Errorf("qmp: %w", err)
	}
	d.watch(v, v.mon)
	qs, err := v.mon.QueryStatus(ctx)
	if err != nil {
		return fmt.Errorf("qmp: %w", err)
	}
	if st.State == supervise.StateUnarmed {
		// A move's target, which only Activate arms: it never ran.
		// Whether it holds all of the state, QEMU says; a target whose
		// stream broke off with the agent is incomplete for good, for
		// the executor to forget.
		mi, err := v.mon.QueryMigrate(ctx)
		if err != nil {
			return fmt.Errorf("qmp: %w", err)
		}
		if qs.Running {
			return errors.New("a move's target runs unarmed")
		}
		v.setStateLocked(driver.StateIncoming)
		v.complete = mi.Status == qmp.MigrationCompleted
		return nil
	}
	// An outgoing migration that the previous agent left running has no
	// driver to finish it, and cannot have been committed: the source
	// says ready only after MigrateOut returned. A completed one is left
	// as it is, its source paused, for the executor to resume or kill.
	if err := cancelMove(ctx, qmpTimeout, v.mon); err != nil {
		return fmt.Errorf("qmp: %w", err)
	}
	if qs, err = settled(ctx, qmpTimeout, v.mon); err != nil {
		return fmt.Errorf("qmp: %w", err)
	}
	state, why := runState(qs.Status)
	v.setStateLocked(state)
	v.reason = why
	return d.adoptDisks(ctx, v, v.mon)
}

// reconnect connects to the QMP socket of a VM taken back frozen, once a
// renewal has thawed it, and watches it from then on. It gives up when the
// VM ends or the driver closes.
func (d *Driver) reconnect(v *vm) {
	for {
		v.mu.Lock()
		gone := v.sup == nil || v.stopping || v.state != driver.StateRunning
		v.mu.Unlock()
		if gone {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		mon, err := qmp.Dial(ctx, filepath.Join(v.dir, qmpSocket), d.log.With("vm", v.id.String()))
		cancel()
		if err != nil {
			continue // frozen still: the greeting waits for the thaw
		}
		v.mu.Lock()
		if v.sup == nil || v.stopping || v.mon != nil {
			v.mu.Unlock()
			mon.Close()
			return
		}
		v.mon = mon
		v.mu.Unlock()
		d.watch(v, mon)
		return
	}
}

// guestGone are the events by which QEMU says the guest is dead though
// QEMU lives: its watchdog fired (QEMU paused it), it panicked, it
// powered itself off (-no-shutdown keeps QEMU up).
var guestGone = []string{qmp.EventWatchdog, "GUEST_PANICKED", qmp.EventShutdown}

// watch makes a guest's death a crash: QEMU saying the guest is gone, or
// QEMU itself exiting, when the driver did not end it. The VM is killed and
// reported crashed with why, and its owner restarts it under the group's
// policy. The subscription is taken before watch returns, so that no
// event after it is missed.
func (d *Driver) watch(v *vm, mon *qmp.Client) {
	sub := mon.Subscribe(guestGone...)
	go func() {
		defer sub.Close()
		var reason string
		for reason == "" {
			ev, err := sub.Next(context.Background())
			if err != nil {
				reason = "qemu exited"
				break
			}
			v.mu.Lock()
			mine := v.mon == mon && !v.stopping && v.state == driver.StateRunning
			v.mu.Unlock()
			if mine {
				reason = guestGoneReason(ev)
			}
		}
		v.mu.Lock()
		sup, mine := v.sup, v.mon == mon && !v.stopping
		v.mu.Unlock()
		if !mine {
			return // the driver let go of QEMU, or is ending it itself
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if sup != nil {
			if st, err := sup.Kill(ctx); err == nil && st.Exit != nil && reason == "qemu exited" {
				reason = exitError(st.Exit, lastWords(filepath.Join(v.dir, supervisorLog))).Error()
			}
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
	}()
}

func guestGoneReason(ev qmp.Event) string {
	switch ev.Name {
	case qmp.EventWatchdog:
		return "the guest's watchdog expired"
	case qmp.EventShutdown:
		var sd qmp.ShutdownData
		_ = ev.Decode(&sd)
		return "the guest powered off (" + sd.Reason + ")"
	}
	return "the guest panicked"
}

// runState maps QEMU's run state (query-status) to the driver's.
func runState(s string) (driver.State, string) {
	switch s {
	case "running":
		return driver.StateRunning, ""
	case "paused", "postmigrate", "finish-migrate", "save-vm":
		return driver.StatePaused, ""
	case "inmigrate", "prelaunch", "restore-vm":
		return driver.StateIncoming, ""
	case "shutdown":
		return driver.StateCrashed, "the guest powered off"
	case "watchdog":
		return driver.StateCrashed, "the guest's watchdog expired"
	case "guest-panicked":
		return driver.StateCrashed, "the guest panicked"
	case "internal-error", "io-error":
		return driver.StateCrashed, "qemu stopped the guest: " + s
	}
	return driver.StateCrashed, "qemu reports state " + s
}

// Reap ends every VM under runDir through its supervisor, whether or not
// an agent runs: for tests that must leave no QEMU behind, and for a node
// taken out of service. It returns the first error.
func Reap(ctx context.Context, runDir string) error {
	socks, err := filepath.Glob(filepath.Join(runDir, "*", supervisorSocket))
	if err != nil {
		return err
	}
	var first error
	for _, s := range socks {
		c, err := supervise.Dial(ctx, s)
		if err != nil {
			continue // no supervisor: its QEMU died with it
		}
		if _, err := c.Kill(ctx); err != nil && !errors.Is(err, supervise.ErrExited) && first == nil {
			first = fmt.Errorf("reap %s: %w", s, err)
		}
		_, _ = c.Release(ctx)
		c.Close()
	}
	return first
}
