// Package drivertest is the contract every driver.Hypervisor keeps, as one
// suite that each driver's tests run against a real instance of it: the
// same calls, the same fencing and epoch rules, on the real clock. A driver
// passes it or is not a driver; what only one driver does (the sim's hand
// clock, QEMU's QMP) stays in that driver's own tests.
package drivertest

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/haven-ha/haven/driver"
	"github.com/haven-ha/haven/internal/waitfor"
)

// Harness is what the suite needs of a driver under test.
type Harness struct {
	// New opens a fresh driver for node; the suite closes it. Drivers
	// opened by one test share their shared storage, as nodes of a site do.
	New func(t *testing.T, node string) driver.Hypervisor
	// Spec is a spec of the driver's cheapest VM that shows progress.
	Spec func(t *testing.T, id driver.VMID, node string, epoch uint64) driver.VMSpec
	// Progress reads the guest's own progress (a counter it keeps, read
	// from outside the guest): it grows while the guest executes and only
	// then. Not Status: the suite checks the driver's word against it.
	Progress func(t *testing.T, h driver.Hypervisor, id driver.VMID) uint64
	// Lease is a lease long enough for Start to return and the guest to
	// show progress under renewals every Lease/4.
	Lease time.Duration
	// Boot bounds how long a guest takes from Start to its first progress.
	Boot time.Duration
	// Settle is how long after a freeze the suite watches for progress
	// that should not come: a few of the guest's ticks.
	Settle time.Duration
	// Disk makes a disk image on the shared storage that a VM of Spec can
	// take while it runs, named name, and returns it. Without it, or if
	// the driver does not report HotPlugDisks, the hot-plug contract is
	// skipped.
	Disk func(t *testing.T, name string) driver.DiskSpec
}

// Run runs the contract suite.
func Run(t *testing.T, h Harness) {
	s := suite{h}
	for _, tc := range []struct {
		name string
		test func(*testing.T)
	}{
		{"GateFreezesAtLeaseEnd", s.gateFreezes},
		{"StartRefusals", s.startRefusals},
		{"Epochs", s.epochs},
		{"StopKillForget", s.stopKillForget},
		{"ExtendLeaseNeverShortens", s.neverShortens},
		{"List", s.list},
		{"HotPlugDisks", s.hotPlug},
		{"Watched", s.watched},
	} {
		t.Run(tc.name, tc.test)
	}
}

type suite struct{ h Harness }

var web = driver.VMID{Group: "web", Resource: "vm"}

func (s suite) open(t *testing.T, node string) driver.Hypervisor {
	d := s.h.New(t, node)
	t.Cleanup(func() { d.Close() })
	return d
}

// renew extends id's lease every Lease/4, as an agent's renewals do,
// until the returned stop is called (which waits for the last renewal).
func (s suite) renew(t *testing.T, d driver.Hypervisor, id driver.VMID, epoch uint64) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(s.h.Lease / 4)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				if err := d.ExtendLease(id, epoch, time.Now().Add(s.h.Lease)); err != nil {
					t.Errorf("renewal of %s: %v", id, err)
					return
				}
			}
		}
	}()
	stopped := false
	stop = func() {
		if !stopped {
			stopped = true
			cancel()
			<-done
		}
	}
	t.Cleanup(stop)
	return stop
}

// running starts id at epoch and waits, renewing, until its guest shows
// progress; the renewals go on until stop.
func (s suite) running(t *testing.T, d driver.Hypervisor, id driver.VMID, node string, epoch uint64) (stop func()) {
	t.Helper()
	if err := d.Start(context.Background(), s.h.Spec(t, id, node, epoch), time.Now().Add(s.h.Lease)); err != nil {
		t.Fatalf("Start(%s, epoch %d): %v", id, epoch, err)
	}
	stop = s.renew(t, d, id, epoch)
	base := s.h.Progress(t, d, id)
	s.waitFor(t, s.h.Boot, "the guest to make progress", func() bool { return s.h.Progress(t, d, id) > base })
	return stop
}

func (s suite) waitFor(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	waitfor.Cond(t, within, what, cond)
}

func (s suite) state(t *testing.T, d driver.Hypervisor, id driver.VMID) driver.State {
	t.Helper()
	st, err := d.Status(id)
	if err != nil {
		t.Fatalf("Status(%s): %v", id, err)
	}
	return st.State
}

// still checks that id's guest makes no progress for Settle.
func (s suite) still(t *testing.T, d driver.Hypervisor, id driver.VMID, why string) {
	t.Helper()
	p := s.h.Progress(t, d, id)
	time.Sleep(s.h.Settle) // a watch: progress must not come in this time
	if q := s.h.Progress(t, d, id); q != p {
		t.Errorf("%s: the guest went on from %d to %d", why, p, q)
	}
}

// Step 4: with no renewal the guest stops at its lease end and stays
// stopped; a late renewal (its end already passed) is refused and leaves
// it frozen; a renewal in time thaws it.
func (s suite) gateFreezes(t *testing.T) {
	d := s.open(t, "n1")
	stop := s.running(t, d, web, "n1", 1)
	stop()
	s.waitFor(t, s.h.Lease+2*time.Second, "the freeze at the lease end", func() bool { return s.state(t, d, web) == driver.StateFrozen })
	s.still(t, d, web, "frozen")

	for _, late := range []time.Duration{0, -time.Second, -time.Hour} {
		if err := d.ExtendLease(web, 1, time.Now().Add(late)); !errors.Is(err, driver.ErrLeaseExpired) {
			t.Errorf("a renewal ending %s from now: %v, want ErrLeaseExpired", late, err)
		}
	}
	if st := s.state(t, d, web); st != driver.StateFrozen {
		t.Errorf("after late renewals: %s, want frozen", st)
	}
	s.still(t, d, web, "after late renewals")

	if err := d.ExtendLease(web, 2, time.Now().Add(s.h.Lease)); !errors.Is(err, driver.ErrStaleEpoch) {
		t.Errorf("a renewal at another epoch: %v, want ErrStaleEpoch", err)
	}
	if err := d.ExtendLease(web, 1, time.Now().Add(s.h.Lease)); err != nil {
		t.Fatalf("a renewal in time: %v", err)
	}
	s.renew(t, d, web, 1)
	p := s.h.Progress(t, d, web)
	s.waitFor(t, s.h.Boot, "the thawed guest to go on", func() bool { return s.h.Progress(t, d, web) > p })
	if st := s.state(t, d, web); st != driver.StateRunning {
		t.Errorf("after the thaw: %s, want running", st)
	}
}

// A driver that counts its changes (driver.Watched) has moved the count,
// and signalled it on Changed, by the time Status shows one: the start,
// the freeze at the lease end, which no call made, the thaw, a kill and a
// forget. The guest's progress and a renewal of a running VM change
// nothing and leave both.
func (s suite) watched(t *testing.T) {
	d := s.open(t, "n1")
	w, ok := d.(driver.Watched)
	if !ok {
		t.Skip("the driver does not count its changes")
	}
	// signalled reports whether Changed has a signal waiting, and takes it.
	signalled := func() bool {
		select {
		case <-w.Changed():
			return true
		default:
			return false
		}
	}
	c := w.Changes()
	signalled()
	stop := s.running(t, d, web, "n1", 1)
	if w.Changes() == c || !signalled() {
		t.Errorf("the start left the count at %d, or sent no signal", c)
	}
	stop()
	c = w.Changes()
	signalled()
	if err := d.ExtendLease(web, 1, time.Now().Add(s.h.Lease)); err != nil {
		t.Fatalf("a renewal: %v", err)
	}
	p := s.h.Progress(t, d, web)
	s.waitFor(t, s.h.Boot, "two more steps of the guest", func() bool { return s.h.Progress(t, d, web) >= p+2 })
	if got := w.Changes(); got != c || signalled() {
		t.Errorf("a renewal and the guest's progress moved the count from %d to %d, or signalled", c, got)
	}

	// No renewal from here: the VM freezes on its own.
	s.waitFor(t, s.h.Lease+2*time.Second, "the freeze at the lease end", func() bool {
		before := w.Changes()
		if s.state(t, d, web) != driver.StateFrozen {
			c = before
			return false
		}
		return true
	})
	if got := w.Changes(); got == c || !signalled() {
		t.Errorf("the freeze left the count at %d, where it was while the VM ran, or sent no signal", c)
	}
	c = w.Changes()
	if err := d.ExtendLease(web, 1, time.Now().Add(s.h.Lease)); err != nil {
		t.Fatalf("a renewal in time: %v", err)
	}
	if st := s.state(t, d, web); st != driver.StateRunning {
		t.Fatalf("after the thaw: %s, want running", st)
	}
	if got := w.Changes(); got == c || !signalled() {
		t.Errorf("the thaw left the count at %d, or sent no signal", c)
	}
	c = w.Changes()
	if err := d.Kill(web, 1); err != nil {
		t.Fatal(err)
	}
	if got := w.Changes(); got == c || !signalled() {
		t.Errorf("the kill left the count at %d, or sent no signal", c)
	}
	c = w.Changes()
	if err := d.Forget(web, 1); err != nil {
		t.Fatal(err)
	}
	if got := w.Changes(); got == c || !signalled() {
		t.Errorf("the forget left the count at %d, or sent no signal", c)
	}
}

func (s suite) startRefusals(t *testing.T) {
	d := s.open(t, "n1")
	ctx := context.Background()
	if err := d.Start(ctx, s.h.Spec(t, web, "n1", 1), time.Now().Add(-time.Millisecond)); !errors.Is(err, driver.ErrLeaseExpired) {
		t.Errorf("Start with an expired lease: %v, want ErrLeaseExpired", err)
	}
	if _, err := d.Status(web); err == nil {
		if st := s.state(t, d, web); st == driver.StateRunning || st == driver.StateFrozen {
			t.Errorf("a refused Start left the VM %s", st)
		}
	}
	bad := s.h.Spec(t, web, "n1", 1)
	bad.MemoryBytes = -1
	if err := d.Start(ctx, bad, time.Now().Add(s.h.Lease)); !errors.Is(err, driver.ErrInvalidSpec) {
		t.Errorf("Start with negative memory: %v, want ErrInvalidSpec", err)
	}
	bad = s.h.Spec(t, web, "n1", 1)
	bad.VCPUs = -1
	if err := d.Start(ctx, bad, time.Now().Add(s.h.Lease)); !errors.Is(err, driver.ErrInvalidSpec) {
		t.Errorf("Start with negative vCPUs: %v, want ErrInvalidSpec", err)
	}
	if _, err := d.Status(driver.VMID{Group: "none", Resource: "vm"}); !errors.Is(err, driver.ErrNotFound) {
		t.Errorf("Status of an unknown VM: %v, want ErrNotFound", err)
	}
}

// Step 6: commands from an older epoch leave the newer incarnation alone;
// a newer epoch replaces the older one.
func (s suite) epochs(t *testing.T) {
	d := s.open(t, "n1")
	ctx := context.Background()
	stop := s.running(t, d, web, "n1", 2)
	// The same epoch again is a no-op: the guest is not rebooted.
	p := s.h.Progress(t, d, web)
	if err := d.Start(ctx, s.h.Spec(t, web, "n1", 2), time.Now().Add(s.h.Lease)); err != nil {
		t.Errorf("Start at the running epoch: %v, want a no-op", err)
	}
	if q := s.h.Progress(t, d, web); q < p {
		t.Errorf("Start at the running epoch rebooted the guest: progress %d -> %d", p, q)
	}
	if err := d.Start(ctx, s.h.Spec(t, web, "n1", 1), time.Now().Add(s.h.Lease)); !errors.Is(err, driver.ErrStaleEpoch) {
		t.Errorf("Start at an older epoch: %v, want ErrStaleEpoch", err)
	}
	if err := d.Stop(ctx, web, 1); !errors.Is(err, driver.ErrStaleEpoch) {
		t.Errorf("Stop at an older epoch: %v, want ErrStaleEpoch", err)
	}
	if err := d.Kill(web, 1); !errors.Is(err, driver.ErrStaleEpoch) {
		t.Errorf("Kill at an older epoch: %v, want ErrStaleEpoch", err)
	}
	if err := d.ExtendLease(web, 3, time.Now().Add(s.h.Lease)); !errors.Is(err, driver.ErrStaleEpoch) {
		t.Errorf("ExtendLease at a newer epoch: %v, want ErrStaleEpoch", err)
	}
	if st, err := d.Status(web); err != nil || st.State != driver.StateRunning || st.Epoch != 2 {
		t.Fatalf("after refused commands: %+v, %v; want running at epoch 2", st, err)
	}
	stop()
	// A newer epoch replaces it.
	stop = s.running(t, d, web, "n1", 3)
	if st, err := d.Status(web); err != nil || st.State != driver.StateRunning || st.Epoch != 3 {
		t.Errorf("after Start at a newer epoch: %+v, %v; want running at epoch 3", st, err)
	}
	// A newer owner may stop an older incarnation. The renewals end
	// first: one racing the kill meets a supervisor that is gone.
	stop()
	if err := d.Kill(web, 4); err != nil {
		t.Errorf("Kill at a newer epoch: %v", err)
	}
	if st := s.state(t, d, web); st != driver.StateStopped {
		t.Errorf("after Kill at a newer epoch: %s, want stopped", st)
	}
}

func (s suite) stopKillForget(t *testing.T) {
	d := s.open(t, "n1")
	ctx := context.Background()
	a, b := driver.VMID{Group: "a", Resource: "vm"}, driver.VMID{Group: "b", Resource: "vm"}
	stopA := s.running(t, d, a, "n1", 1)
	stopB := s.running(t, d, b, "n1", 1)

	if err := d.Forget(a, 1); !errors.Is(err, driver.ErrInvalidState) {
		t.Errorf("Forget of a running VM: %v, want ErrInvalidState", err)
	}
	stopA()
	if err := d.Stop(ctx, a, 1); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	stopB()
	if err := d.Kill(b, 1); err != nil {
		t.Fatalf("Kill: %v", err)
	}
	for _, id := range []driver.VMID{a, b} {
		if st := s.state(t, d, id); st != driver.StateStopped {
			t.Errorf("%s after Stop/Kill: %s, want stopped", id, st)
		}
		s.still(t, d, id, "stopped")
		if err := d.Stop(ctx, id, 1); err != nil {
			t.Errorf("Stop of a stopped VM: %v, want success", err)
		}
		if err := d.Kill(id, 1); err != nil {
			t.Errorf("Kill of a stopped VM: %v, want success", err)
		}
		if err := d.ExtendLease(id, 1, time.Now().Add(s.h.Lease)); !errors.Is(err, driver.ErrInvalidState) {
			t.Errorf("ExtendLease of a stopped VM: %v, want ErrInvalidState", err)
		}
		if err := d.Forget(id, 2); !errors.Is(err, driver.ErrStaleEpoch) {
			t.Errorf("Forget at another epoch: %v, want ErrStaleEpoch", err)
		}
		if err := d.Forget(id, 1); err != nil {
			t.Errorf("Forget: %v", err)
		}
		if _, err := d.Status(id); !errors.Is(err, driver.ErrNotFound) {
			t.Errorf("Status after Forget: %v, want ErrNotFound", err)
		}
		if err := d.Forget(id, 1); !errors.Is(err, driver.ErrNotFound) {
			t.Errorf("a second Forget: %v, want ErrNotFound", err)
		}
	}
	// Forgotten, its epoch is gone too: the id starts afresh.
	s.running(t, d, a, "n1", 1)
}

func (s suite) neverShortens(t *testing.T) {
	d := s.open(t, "n1")
	s.running(t, d, web, "n1", 1)
	far := time.Now().Add(time.Hour)
	if err := d.ExtendLease(web, 1, far); err != nil {
		t.Fatal(err)
	}
	if err := d.ExtendLease(web, 1, time.Now().Add(s.h.Lease)); err != nil {
		t.Fatalf("a shorter renewal: %v", err)
	}
	st, err := d.Status(web)
	if err != nil {
		t.Fatal(err)
	}
	if !st.LeaseEnd.Equal(far) {
		t.Errorf("lease end %s after a shorter renewal, want it kept at %s", st.LeaseEnd, far)
	}
}

func (s suite) list(t *testing.T) {
	d := s.open(t, "n1")
	ids := []driver.VMID{{Group: "b", Resource: "vm"}, {Group: "a", Resource: "vm2"}, {Group: "a", Resource: "vm1"}}
	for _, id := range ids {
		s.running(t, d, id, "n1", 1)
	}
	var got []driver.VMID
	for _, st := range d.List() {
		got = append(got, st.ID)
		if st.State != driver.StateRunning || st.Epoch != 1 {
			t.Errorf("List: %s %s at epoch %d, want running at 1", st.ID, st.State, st.Epoch)
		}
	}
	want := []driver.VMID{ids[2], ids[1], ids[0]}
	if !slices.Equal(got, want) {
		t.Errorf("List: %v, want %v (sorted by ID)", got, want)
	}
}

// The hot-plug contract (driver.DiskHotPlugger): at the VM's own epoch,
// only while it runs; a repeat is a no-op; Disks tells what is attached.
func (s suite) hotPlug(t *testing.T) {
	d := s.open(t, "n1")
	if !d.Capabilities().HotPlugDisks {
		t.Skip("the driver does not report HotPlugDisks")
	}
	if s.h.Disk == nil {
		t.Skip("the harness makes no disks (Harness.Disk)")
	}
	hp, ok := d.(driver.DiskHotPlugger)
	if !ok {
		t.Fatal("the driver reports HotPlugDisks but is no driver.DiskHotPlugger")
	}
	ctx := context.Background()
	disk := s.h.Disk(t, "hot")
	names := func() []string {
		t.Helper()
		disks, err := hp.Disks(web)
		if err != nil {
			t.Fatalf("Disks: %v", err)
		}
		var out []string
		for _, dk := range disks {
			out = append(out, dk.Name)
		}
		return out
	}
	stop := s.running(t, d, web, "n1", 2)
	before := names()
	if err := hp.AttachDisk(ctx, web, 1, disk); !errors.Is(err, driver.ErrStaleEpoch) {
		t.Errorf("AttachDisk at an older epoch: %v, want ErrStaleEpoch", err)
	}
	if err := hp.AttachDisk(ctx, web, 3, disk); !errors.Is(err, driver.ErrStaleEpoch) {
		t.Errorf("AttachDisk at a newer epoch: %v, want ErrStaleEpoch", err)
	}
	if err := hp.AttachDisk(ctx, driver.VMID{Group: "none", Resource: "vm"}, 2, disk); !errors.Is(err, driver.ErrNotFound) {
		t.Errorf("AttachDisk to an unknown VM: %v, want ErrNotFound", err)
	}
	bad := disk
	bad.Path = "../" + disk.Path
	if err := hp.AttachDisk(ctx, web, 2, bad); !errors.Is(err, driver.ErrInvalidSpec) {
		t.Errorf("AttachDisk of a path outside the shared storage: %v, want ErrInvalidSpec", err)
	}
	if got := names(); !slices.Equal(got, before) {
		t.Fatalf("after refused attaches the VM has disks %v, had %v", got, before)
	}
	if err := hp.AttachDisk(ctx, web, 2, disk); err != nil {
		t.Fatalf("AttachDisk: %v", err)
	}
	if err := hp.AttachDisk(ctx, web, 2, disk); err != nil {
		t.Errorf("the same AttachDisk again: %v, want a no-op", err)
	}
	if got, want := names(), append(slices.Clone(before), disk.Name); !slices.Equal(got, want) {
		t.Errorf("after the attach the VM has disks %v, want %v", got, want)
	}
	if st := s.state(t, d, web); st != driver.StateRunning {
		t.Fatalf("after the attach the VM is %s", st)
	}
	if err := hp.DetachDisk(ctx, web, 1, disk.Name); !errors.Is(err, driver.ErrStaleEpoch) {
		t.Errorf("DetachDisk at an older epoch: %v, want ErrStaleEpoch", err)
	}
	if err := hp.DetachDisk(ctx, web, 2, disk.Name); err != nil {
		t.Fatalf("DetachDisk: %v", err)
	}
	if err := hp.DetachDisk(ctx, web, 2, disk.Name); err != nil {
		t.Errorf("the same DetachDisk again: %v, want a no-op", err)
	}
	if got := names(); !slices.Equal(got, before) {
		t.Errorf("after the detach the VM has disks %v, want %v", got, before)
	}
	p := s.h.Progress(t, d, web)
	s.waitFor(t, s.h.Boot, "the guest to go on after the detach", func() bool { return s.h.Progress(t, d, web) > p })

	// Frozen at its lease end, the VM takes no disk: the gate forbids
	// it I/O.
	stop()
	s.waitFor(t, s.h.Lease+2*time.Second, "the freeze at the lease end", func() bool { return s.state(t, d, web) == driver.StateFrozen })
	if err := hp.AttachDisk(ctx, web, 2, disk); !errors.Is(err, driver.ErrInvalidState) {
		t.Errorf("AttachDisk to a frozen VM: %v, want ErrInvalidState", err)
	}
	if err := d.Kill(web, 2); err != nil {
		t.Fatal(err)
	}
	if err := hp.AttachDisk(ctx, web, 2, disk); !errors.Is(err, driver.ErrInvalidState) {
		t.Errorf("AttachDisk to a stopped VM: %v, want ErrInvalidState", err)
	}
	if got := names(); !slices.Equal(got, before) {
		t.Errorf("after refused attaches the VM has disks %v, want %v", got, before)
	}
}
