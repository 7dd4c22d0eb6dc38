package sim

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/haven-ha/haven/driver"
	"github.com/haven-ha/haven/internal/logging/logtest"
)

// frozenVM starts web at epoch 1 with a lease of 10 s on a fake clock, lets
// it run a few ticks, then moves the clock to the lease end.
func frozenVM(t *testing.T) (d *Driver, clk *clock, dir string, leaseEnd time.Time) {
	t.Helper()
	dir, clk = t.TempDir(), newClock()
	d = newDriver(t, "n1", dir, clk)
	leaseEnd = clk.Now().Add(10 * time.Second)
	start(t, d, testSpec(web, 1), leaseEnd)
	waitCounter(t, d, web, 3)
	clk.Set(leaseEnd)
	if st := status(t, d, web); st.State != driver.StateFrozen {
		t.Fatalf("at lease end: state %s, want frozen", st.State)
	}
	return d, clk, dir, leaseEnd
}

// Step 4: at its lease end the guest stops executing and writing, and
// nothing it wrote is stamped at or after the lease end.
func TestGateFreezesAtLeaseEnd(t *testing.T) {
	d, _, dir, leaseEnd := frozenVM(t)
	spec := testSpec(web, 1)
	_, disk := readDisk(t, diskPath(dir, spec))
	exec := readExec(t, dir, web)
	counter := status(t, d, web).Counter

	waitWakeups(t, d, web, 10)

	if st := status(t, d, web); st.State != driver.StateFrozen || st.Counter != counter {
		t.Errorf("after 10 more wakeups: state %s counter %d, want frozen at %d", st.State, st.Counter, counter)
	}
	_, disk2 := readDisk(t, diskPath(dir, spec))
	exec2 := readExec(t, dir, web)
	if len(disk2) != len(disk) || len(exec2) != len(exec) {
		t.Errorf("frozen VM wrote: disk %d -> %d records, exec log %d -> %d", len(disk), len(disk2), len(exec), len(exec2))
	}
	for _, r := range append(disk2, exec2...) {
		if !r.Wall.Before(leaseEnd) {
			t.Errorf("record %+v stamped at or after lease end %s", r, leaseEnd)
		}
	}
	increasing(t, "disk", disk2)
	increasing(t, "exec log", exec2)
}

// Step 5's other half: a renewal that arrives in time thaws the guest, and
// it carries on counting where it stopped.
func TestExtendLeaseThaws(t *testing.T) {
	d, clk, dir, _ := frozenVM(t)
	before := status(t, d, web).Counter

	if err := d.ExtendLease(web, 1, clk.Now().Add(10*time.Second)); err != nil {
		t.Fatalf("ExtendLease: %v", err)
	}
	if st := status(t, d, web); st.State != driver.StateRunning {
		t.Fatalf("after ExtendLease: state %s, want running", st.State)
	}
	waitCounter(t, d, web, before+3)
	_, disk := readDisk(t, diskPath(dir, testSpec(web, 1)))
	increasing(t, "disk", disk)
	if last := disk[len(disk)-1].Counter; last <= before {
		t.Errorf("last disk counter %d, want beyond %d", last, before)
	}
}

// The late thaw of notes/fencing counterexample (vi'): a renewal whose
// lease has already run out by the time it reaches the driver is refused,
// and the VM stays frozen and silent.
func TestExtendLeaseLateIsRefused(t *testing.T) {
	for _, tc := range []struct {
		name  string
		until time.Duration // relative to now
	}{
		{"until is now", 0},
		{"until has passed", -time.Second},
		{"until long past", -time.Hour},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, clk, dir, _ := frozenVM(t)
			_, disk := readDisk(t, diskPath(dir, testSpec(web, 1)))
			err := d.ExtendLease(web, 1, clk.Now().Add(tc.until))
			if !errors.Is(err, driver.ErrLeaseExpired) {
				t.Fatalf("ExtendLease: %v, want ErrLeaseExpired", err)
			}
			waitWakeups(t, d, web, 5)
			if st := status(t, d, web); st.State != driver.StateFrozen {
				t.Errorf("state %s, want still frozen", st.State)
			}
			if _, disk2 := readDisk(t, diskPath(dir, testSpec(web, 1))); len(disk2) != len(disk) {
				t.Errorf("refused thaw let the guest write: %d -> %d records", len(disk), len(disk2))
			}
		})
	}
}

// A VM whose lease ran out before its loop noticed is treated as frozen
// by ExtendLease too: the refusal does not depend on the loop's timing.
func TestExtendLeaseLateBeforeLoopNotices(t *testing.T) {
	dir, clk := t.TempDir(), newClock()
	guest := testGuest
	guest.Tick = time.Hour // the loop never wakes during the test
	d := newGuestDriver(t, "n1", dir, clk, guest)
	spec := testSpec(web, 1)
	leaseEnd := clk.Now().Add(time.Second)
	start(t, d, spec, leaseEnd)
	clk.Set(leaseEnd.Add(time.Millisecond))
	if err := d.ExtendLease(web, 1, leaseEnd); !errors.Is(err, driver.ErrLeaseExpired) {
		t.Fatalf("ExtendLease: %v, want ErrLeaseExpired", err)
	}
	if st := status(t, d, web); st.State != driver.StateFrozen {
		t.Errorf("state %s, want frozen", st.State)
	}
}

func TestExtendLeaseNeverShortens(t *testing.T) {
	dir, clk := t.TempDir(), newClock()
	d := newDriver(t, "n1", dir, clk)
	t0 := clk.Now()
	start(t, d, testSpec(web, 1), t0.Add(10*time.Second))
	for _, tc := range []struct {
		until, want time.Duration
	}{
		{5 * time.Second, 10 * time.Second},  // earlier: ignored
		{10 * time.Second, 10 * time.Second}, // same
		{20 * time.Second, 20 * time.Second}, // later: moves
		{15 * time.Second, 20 * time.Second}, // earlier again: ignored
	} {
		if err := d.ExtendLease(web, 1, t0.Add(tc.until)); err != nil {
			t.Fatalf("ExtendLease(+%s): %v", tc.until, err)
		}
		if got := status(t, d, web).LeaseEnd; !got.Equal(t0.Add(tc.want)) {
			t.Errorf("after ExtendLease(+%s): lease end +%s, want +%s", tc.until, got.Sub(t0), tc.want)
		}
	}
}

func TestStartWithExpiredLeaseIsRefused(t *testing.T) {
	dir, clk := t.TempDir(), newClock()
	d := newDriver(t, "n1", dir, clk)
	for _, lease := range []time.Duration{0, -time.Nanosecond, -time.Minute} {
		err := d.Start(context.Background(), testSpec(web, 1), clk.Now().Add(lease))
		if !errors.Is(err, driver.ErrLeaseExpired) {
			t.Errorf("Start with lease end now%+v: %v, want ErrLeaseExpired", lease, err)
		}
	}
	if l := d.List(); len(l) != 0 {
		t.Errorf("List after refused starts: %v", l)
	}
}

// Step 6 in the driver: commands from an older epoch never touch the VM.
func TestStaleEpochIsRefused(t *testing.T) {
	dir, clk := t.TempDir(), newClock()
	d := newDriver(t, "n1", dir, clk)
	lease := clk.Now().Add(time.Minute)
	start(t, d, testSpec(web, 5), lease)
	ctx := context.Background()

	for name, call := range map[string]func() error{
		"Start epoch 4":       func() error { return d.Start(ctx, testSpec(web, 4), lease) },
		"Stop epoch 4":        func() error { return d.Stop(ctx, web, 4) },
		"Kill epoch 4":        func() error { return d.Kill(web, 4) },
		"ExtendLease epoch 4": func() error { return d.ExtendLease(web, 4, lease.Add(time.Minute)) },
		// A thaw needs the exact epoch the leader confirmed.
		"ExtendLease epoch 6": func() error { return d.ExtendLease(web, 6, lease.Add(time.Minute)) },
	} {
		if err := call(); !errors.Is(err, driver.ErrStaleEpoch) {
			t.Errorf("%s: %v, want ErrStaleEpoch", name, err)
		}
	}
	st := status(t, d, web)
	if st.State != driver.StateRunning || st.Epoch != 5 || !st.LeaseEnd.Equal(lease) {
		t.Errorf("after refused commands: %+v, want running at epoch 5 with its lease", st)
	}

	// Same epoch: a no-op, the guest keeps its identity.
	v := d.lookup(web)
	start(t, d, testSpec(web, 5), lease)
	if d.lookup(web) != v {
		t.Error("Start at the same epoch replaced the running VM")
	}
	// Higher epoch: replaces it, and the counter carries on from disk.
	before := waitCounter(t, d, web, 3).Counter
	start(t, d, testSpec(web, 6), lease)
	if st := status(t, d, web); st.Epoch != 6 || st.State != driver.StateRunning || st.Counter < before {
		t.Errorf("after Start at epoch 6: %+v, want running at epoch 6, counter >= %d", st, before)
	}
	v.mu.Lock()
	oldState := v.state
	v.mu.Unlock()
	if oldState != driver.StateStopped {
		t.Errorf("replaced VM is %s, want stopped", oldState)
	}
}

// The disk fence: a claim by a newer epoch (here on another node, with the
// old node's lease wrongly still valid) makes the old guest's next write
// fail, and the old guest dies as on an I/O error. The execution log keeps
// the tick whose write was refused, which is what lets a checker see that
// the guest executed.
func TestDiskClaimFencesOlderEpoch(t *testing.T) {
	dir, clk := t.TempDir(), newClock()
	n1, n2 := newDriver(t, "n1", dir, clk), newDriver(t, "n2", dir, clk)
	lease := clk.Now().Add(time.Minute)
	start(t, n1, testSpec(web, 1), lease)
	waitCounter(t, n1, web, 3)

	start(t, n2, testSpec(web, 2), lease)
	var st driver.Status
	waitFor(t, "n1's VM to die", func() bool {
		st = status(t, n1, web)
		return st.State != driver.StateRunning
	})
	if st.State != driver.StateCrashed || st.Reason != "fenced: disk claimed by epoch 2" {
		t.Fatalf("n1's VM: %s %q, want crashed, fenced by epoch 2", st.State, st.Reason)
	}
	waitCounter(t, n2, web, st.Counter+3)

	h, disk := readDisk(t, diskPath(dir, testSpec(web, 1)))
	if h.Epoch != 2 || h.Node != "n2" {
		t.Errorf("header %+v, want claimed by n2 at epoch 2", h)
	}
	seen2 := false
	type key struct{ epoch, counter uint64 }
	onDisk := map[key]bool{}
	for _, r := range disk {
		onDisk[key{r.Epoch, r.Counter}] = true
		seen2 = seen2 || r.Epoch == 2
		if seen2 && r.Epoch == 1 {
			t.Errorf("epoch-1 record %+v after epoch 2 took the disk", r)
		}
	}
	var refused []Record
	for _, r := range readExec(t, dir, web) {
		if r.Epoch == 1 && !onDisk[key{r.Epoch, r.Counter}] {
			refused = append(refused, r)
		}
	}
	if len(refused) != 1 || refused[0].Counter != st.Counter {
		t.Errorf("exec log records of epoch 1 missing from the disk: %+v, want just the fenced tick (counter %d)", refused, st.Counter)
	}
	// The fenced VM can be forgotten, but not restarted at its old epoch.
	if err := n1.Start(context.Background(), testSpec(web, 1), lease); !errors.Is(err, driver.ErrStaleEpoch) {
		t.Errorf("restart at epoch 1 on a disk claimed by 2: %v, want ErrStaleEpoch", err)
	}
}

// A failover: the group stops on n1 and starts on n2 at a higher epoch,
// and the guest counter continues from the disk, never going back.
func TestCounterContinuesOnAnotherNode(t *testing.T) {
	dir, clk := t.TempDir(), newClock()
	n1, n2 := newDriver(t, "n1", dir, clk), newDriver(t, "n2", dir, clk)
	lease := clk.Now().Add(time.Minute)
	start(t, n1, testSpec(web, 1), lease)
	waitCounter(t, n1, web, 5)
	if err := n1.Stop(context.Background(), web, 1); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	_, disk := readDisk(t, diskPath(dir, testSpec(web, 1)))
	last := disk[len(disk)-1]
	if st := status(t, n1, web); st.State != driver.StateStopped || st.Counter != last.Counter {
		t.Fatalf("after Stop: %+v; last disk record %+v (a graceful stop writes its last count)", st, last)
	}

	start(t, n2, testSpec(web, 2), lease)
	waitCounter(t, n2, web, last.Counter+3)
	_, disk = readDisk(t, diskPath(dir, testSpec(web, 1)))
	increasing(t, "disk", disk)
	for i, r := range disk {
		if r.Epoch == 2 {
			if r.Counter != last.Counter+1 || r.Node != "n2" || disk[i-1].Counter != last.Counter {
				t.Errorf("first epoch-2 record %+v after %+v, want n2 continuing at %d", r, disk[i-1], last.Counter+1)
			}
			break
		}
	}
}

func TestStopFrozenWritesNothing(t *testing.T) {
	d, _, dir, _ := frozenVM(t)
	_, disk := readDisk(t, diskPath(dir, testSpec(web, 1)))
	if err := d.Stop(context.Background(), web, 1); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if _, disk2 := readDisk(t, diskPath(dir, testSpec(web, 1))); len(disk2) != len(disk) {
		t.Errorf("stopping a frozen VM wrote %d records", len(disk2)-len(disk))
	}
	if st := status(t, d, web); st.State != driver.StateStopped {
		t.Errorf("state %s, want stopped", st.State)
	}
}

func TestKillWritesNothingAfter(t *testing.T) {
	dir, clk := t.TempDir(), newClock()
	d := newDriver(t, "n1", dir, clk)
	start(t, d, testSpec(web, 1), clk.Now().Add(time.Minute))
	waitCounter(t, d, web, 3)
	if err := d.Kill(web, 2); err != nil { // a newer epoch may kill an older VM
		t.Fatalf("Kill: %v", err)
	}
	_, disk := readDisk(t, diskPath(dir, testSpec(web, 1)))
	exec := readExec(t, dir, web)
	st := status(t, d, web)
	if st.State != driver.StateStopped || disk[len(disk)-1].Counter != st.Counter || exec[len(exec)-1].Counter != st.Counter {
		t.Errorf("after Kill: %+v, last disk %+v, last exec %+v", st, disk[len(disk)-1], exec[len(exec)-1])
	}
	if err := d.Kill(web, 1); err != nil {
		t.Errorf("second Kill: %v, want nil (idempotent)", err)
	}
}

func TestCrash(t *testing.T) {
	dir, clk := t.TempDir(), newClock()
	d := newDriver(t, "n1", dir, clk)
	lease := clk.Now().Add(time.Minute)
	start(t, d, testSpec(web, 1), lease)
	waitCounter(t, d, web, 3)

	if err := d.Crash(web, "guest kernel panic"); err != nil {
		t.Fatalf("Crash: %v", err)
	}
	st := status(t, d, web)
	if st.State != driver.StateCrashed || st.Reason != "guest kernel panic" {
		t.Errorf("after Crash: %+v", st)
	}
	_, disk := readDisk(t, diskPath(dir, testSpec(web, 1)))
	if last := disk[len(disk)-1].Counter; last != st.Counter {
		t.Errorf("last disk counter %d, status %d: a crash must not write", last, st.Counter)
	}
	if err := d.Crash(web, "again"); !errors.Is(err, driver.ErrInvalidState) {
		t.Errorf("Crash of a crashed VM: %v, want ErrInvalidState", err)
	}
	if err := d.Crash(driver.VMID{Group: "no", Resource: "such"}, "x"); !errors.Is(err, driver.ErrNotFound) {
		t.Errorf("Crash of an unknown VM: %v, want ErrNotFound", err)
	}
	if err := d.ExtendLease(web, 1, lease); !errors.Is(err, driver.ErrInvalidState) {
		t.Errorf("ExtendLease of a crashed VM: %v, want ErrInvalidState", err)
	}
	// The node still owns the group at epoch 1: it may restart it there,
	// and the guest resumes from its journal.
	start(t, d, testSpec(web, 1), lease)
	waitCounter(t, d, web, st.Counter+2)
	_, disk = readDisk(t, diskPath(dir, testSpec(web, 1)))
	increasing(t, "disk", disk)
}

// MemoryChecksum reads a VM's memory as it is, by the migration's hash;
// a VM that holds no memory has none to read.
func TestMemoryChecksum(t *testing.T) {
	dir, clk := t.TempDir(), newClock()
	d := newDriver(t, "n1", dir, clk)
	start(t, d, testSpec(web, 1), clk.Now().Add(time.Minute))
	waitCounter(t, d, web, 3)
	clk.Advance(time.Minute) // frozen: the memory holds still
	if st := status(t, d, web); st.State != driver.StateFrozen {
		t.Fatalf("vm %s past its lease, want frozen", st.State)
	}
	_, want := memoryOf(t, d, web)
	if sum, err := d.MemoryChecksum(web); err != nil || sum != want {
		t.Errorf("MemoryChecksum: %#x, %v; want %#x", sum, err, want)
	}
	if err := d.Kill(web, 1); err != nil {
		t.Fatal(err)
	}
	if _, err := d.MemoryChecksum(web); !errors.Is(err, driver.ErrInvalidState) {
		t.Errorf("checksum of a killed VM: %v, want ErrInvalidState", err)
	}
	if _, err := d.MemoryChecksum(driver.VMID{Group: "no", Resource: "such"}); !errors.Is(err, driver.ErrNotFound) {
		t.Errorf("checksum of an unknown VM: %v, want ErrNotFound", err)
	}
}

// The guest really writes its memory while it runs, and does not while
// frozen.
func TestMemoryDirtied(t *testing.T) {
	dir, clk := t.TempDir(), newClock()
	d := newDriver(t, "n1", dir, clk)
	spec := testSpec(web, 1)
	leaseEnd := clk.Now().Add(time.Minute)
	start(t, d, spec, leaseEnd)

	sum := checksum(t, d, web)
	waitWakeups(t, d, web, 3)
	if sum2 := checksum(t, d, web); sum2 == sum {
		t.Error("memory unchanged after 3 ticks of a running guest")
	}
	v := d.lookup(web)
	v.mu.Lock()
	beyond := v.mem.buf[testGuest.WorkingSetBytes:]
	clean := bytes.Equal(beyond, make([]byte, len(beyond)))
	v.mu.Unlock()
	if !clean {
		t.Error("guest wrote beyond its working set")
	}

	clk.Set(leaseEnd)
	waitWakeups(t, d, web, 1)
	sum = checksum(t, d, web)
	waitWakeups(t, d, web, 5)
	if sum2 := checksum(t, d, web); sum2 != sum {
		t.Error("memory changed while frozen")
	}
}

func TestForgetAndList(t *testing.T) {
	dir, clk := t.TempDir(), newClock()
	d := newDriver(t, "n1", dir, clk)
	lease := clk.Now().Add(time.Minute)
	ids := []driver.VMID{{Group: "b", Resource: "vm"}, {Group: "a", Resource: "vm2"}, {Group: "a", Resource: "vm1"}}
	for _, id := range ids {
		start(t, d, testSpec(id, 1), lease)
	}
	var got []string
	for _, st := range d.List() {
		got = append(got, st.ID.String())
	}
	if strings.Join(got, " ") != "a/vm1 a/vm2 b/vm" {
		t.Errorf("List: %v, want sorted by ID", got)
	}
	if err := d.Forget(ids[0], 1); !errors.Is(err, driver.ErrInvalidState) {
		t.Errorf("Forget of a running VM: %v, want ErrInvalidState", err)
	}
	if err := d.Kill(ids[0], 1); err != nil {
		t.Fatal(err)
	}
	if err := d.Forget(ids[0], 2); !errors.Is(err, driver.ErrStaleEpoch) {
		t.Errorf("Forget of a stopped VM at another epoch: %v, want ErrStaleEpoch", err)
	}
	if err := d.Forget(ids[0], 1); err != nil {
		t.Errorf("Forget of a stopped VM: %v", err)
	}
	if _, err := d.Status(ids[0]); !errors.Is(err, driver.ErrNotFound) {
		t.Errorf("Status after Forget: %v, want ErrNotFound", err)
	}
	if err := d.Forget(ids[0], 1); !errors.Is(err, driver.ErrNotFound) {
		t.Errorf("second Forget: %v, want ErrNotFound", err)
	}
}

func TestInvalidSpec(t *testing.T) {
	dir, clk := t.TempDir(), newClock()
	d := newDriver(t, "n1", dir, clk)
	for name, mod := range map[string]func(*driver.VMSpec){
		"empty group":     func(s *driver.VMSpec) { s.ID.Group = "" },
		"slash in vm":     func(s *driver.VMSpec) { s.ID.Resource = "a/b" },
		"dot-dot group":   func(s *driver.VMSpec) { s.ID.Group = ".." },
		"other node":      func(s *driver.VMSpec) { s.Node = "n2" },
		"epoch 0":         func(s *driver.VMSpec) { s.Epoch = 0 },
		"tiny memory":     func(s *driver.VMSpec) { s.MemoryBytes = 100 },
		"absolute disk":   func(s *driver.VMSpec) { s.Disks[0].Path = "/etc/passwd" },
		"escaping disk":   func(s *driver.VMSpec) { s.Disks[0].Path = "../outside.img" },
		"empty disk path": func(s *driver.VMSpec) { s.Disks[0].Path = "" },
		"disk twice": func(s *driver.VMSpec) {
			s.Disks = append(s.Disks, driver.DiskSpec{Name: "b", Path: "./" + s.Disks[0].Path})
		},
	} {
		spec := testSpec(web, 1)
		mod(&spec)
		if err := d.Start(context.Background(), spec, clk.Now().Add(time.Minute)); !errors.Is(err, driver.ErrInvalidSpec) {
			t.Errorf("%s: %v, want ErrInvalidSpec", name, err)
		}
	}
}

// A guest out of range is refused by Validate, which names the field, and
// a driver given one anyway boots nothing: the checks that were per spec
// still hold for the guest config.
func TestInvalidGuest(t *testing.T) {
	for _, tc := range []struct {
		name, field string
		mod         func(*Guest)
	}{
		{"negative rate", "dirty_rate_bytes_per_sec", func(g *Guest) { g.DirtyRateBytesPerSec = -1 }},
		{"huge rate", "dirty_rate_bytes_per_sec", func(g *Guest) { g.DirtyRateBytesPerSec = 1 << 50 }},
		{"negative working set", "working_set_bytes", func(g *Guest) { g.WorkingSetBytes = -1 }},
		{"negative tick", "tick", func(g *Guest) { g.Tick = -time.Millisecond }},
		{"sub-millisecond tick", "tick", func(g *Guest) { g.Tick = time.Microsecond }},
		{"tick beyond an hour", "tick", func(g *Guest) { g.Tick = time.Hour + time.Nanosecond }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			guest := testGuest
			tc.mod(&guest)
			if err := guest.Validate(); err == nil || !strings.HasPrefix(err.Error(), tc.field+": ") {
				t.Errorf("Validate: %v, want an error about %s", err, tc.field)
			}
			dir, clk := t.TempDir(), newClock()
			d := newGuestDriver(t, "n1", dir, clk, guest)
			spec := testSpec(web, 1)
			if err := d.Start(context.Background(), spec, clk.Now().Add(time.Minute)); !errors.Is(err, driver.ErrInvalidSpec) {
				t.Errorf("Start: %v, want ErrInvalidSpec", err)
			}
			if _, err := os.Stat(diskPath(dir, spec)); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("refused Start touched the disk: %v", err)
			}
			if l := d.List(); len(l) != 0 {
				t.Errorf("List after a refused Start: %v", l)
			}
		})
	}
	for _, g := range []Guest{{}, {DirtyRateBytesPerSec: maxDirtyRate, Tick: maxTick}, {Tick: minTick}, {WorkingSetBytes: 1 << 62}} {
		if err := g.Validate(); err != nil {
			t.Errorf("Validate(%+v): %v, want valid", g, err)
		}
	}
}

// The zero Guest ticks at DefaultTick and dirties nothing; a working set
// larger than the VM is the whole VM, not a fault.
func TestGuestPerVM(t *testing.T) {
	for _, tc := range []struct {
		name    string
		guest   Guest
		period  time.Duration
		wsPages int64
	}{
		{"zero", Guest{}, DefaultTick, 0},
		{"working set beyond memory", Guest{WorkingSetBytes: 1 << 30, DirtyRateBytesPerSec: 4 << 20, Tick: 2 * time.Millisecond}, 2 * time.Millisecond, (1 << 20) / PageSize},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir, clk := t.TempDir(), newClock()
			d := newGuestDriver(t, "n1", dir, clk, tc.guest)
			start(t, d, testSpec(web, 1), clk.Now().Add(time.Minute))
			v := d.lookup(web)
			v.mu.Lock()
			period, wsPages := v.period, v.dirt.wsPages
			v.mu.Unlock()
			if period != tc.period || wsPages != tc.wsPages {
				t.Errorf("period %s, working set %d pages; want %s, %d", period, wsPages, tc.period, tc.wsPages)
			}
		})
	}
}

// The estimate placement prices a migration with is what a guest of that
// size really dirties: the dirtier's pages over one second of ticks.
func TestEstimatedDirtyRate(t *testing.T) {
	const tick = 100 * time.Millisecond
	for _, tc := range []struct {
		name   string
		guest  Guest
		memory int64
		want   int64
	}{
		{"the configured rate", Guest{DirtyRateBytesPerSec: 1 << 20, WorkingSetBytes: 4 << 20, Tick: tick}, 64 << 20, 1 << 20},
		{"one working set per tick", Guest{DirtyRateBytesPerSec: 1 << 30, WorkingSetBytes: 1 << 20, Tick: tick}, 64 << 20, 10 << 20},
		{"one memory per tick", Guest{DirtyRateBytesPerSec: 1 << 30, WorkingSetBytes: 1 << 30, Tick: tick}, 256 << 10, 2560 << 10},
		{"a partial page is a page", Guest{DirtyRateBytesPerSec: 1 << 30, WorkingSetBytes: 1, Tick: tick}, 64 << 20, 10 * PageSize},
		{"default tick", Guest{DirtyRateBytesPerSec: 1 << 30, WorkingSetBytes: 1 << 20}, 64 << 20, (1 << 20) * int64(time.Second/DefaultTick)},
		{"idle", Guest{WorkingSetBytes: 1 << 20, Tick: tick}, 64 << 20, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := New(Config{Node: "n1", SharedDir: t.TempDir(), Guest: tc.guest})
			got := d.EstimatedDirtyRate(tc.memory)
			if got != tc.want {
				t.Errorf("EstimatedDirtyRate(%d): %d, want %d", tc.memory, got, tc.want)
			}
			g := tc.guest.forVM(tc.memory)
			m := newTestMemory(t, tc.memory)
			dt := newDirtier(1, m, g.DirtyRateBytesPerSec, g.WorkingSetBytes, int64(g.Tick))
			pages := 0
			for c := range uint64(time.Second / g.Tick) {
				pages += dt.tick(m, c)
			}
			if dirtied := int64(pages) * PageSize; dirtied != got {
				t.Errorf("estimate %d B/s, but the guest dirtied %d bytes in a second", got, dirtied)
			}
		})
	}
	bad := New(Config{Node: "n1", SharedDir: t.TempDir(), Guest: Guest{DirtyRateBytesPerSec: -1}})
	if got := bad.EstimatedDirtyRate(64 << 20); got != 0 {
		t.Errorf("with an invalid guest: %d, want 0 (no guest runs)", got)
	}
}

// The agent logs through the driver: every lifecycle step of a VM is one
// line with the VM and its epoch as fields, at Info, and what the fence
// does (a freeze at the lease end, a crash) stands out at Warn.
func TestLifecycleLogs(t *testing.T) {
	var buf logtest.Buffer
	dir, clk := t.TempDir(), newClock()
	d := New(Config{
		Node: "n1", SharedDir: dir, Now: clk.Now, Guest: testGuest,
		Logger: slog.New(slog.NewJSONHandler(&buf, nil)),
	})
	defer d.Close()
	lease := clk.Now().Add(10 * time.Second)
	start(t, d, testSpec(web, 1), lease)
	waitCounter(t, d, web, 2)
	clk.Set(lease)
	status(t, d, web) // applies the gate: frozen
	if err := d.ExtendLease(web, 1, lease.Add(10*time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := d.Crash(web, "guest kernel panic"); err != nil {
		t.Fatal(err)
	}
	start(t, d, testSpec(web, 1), lease.Add(10*time.Second))
	if err := d.Stop(context.Background(), web, 1); err != nil {
		t.Fatal(err)
	}

	want := []struct {
		level, msg string
		fields     []string
	}{
		{"INFO", "vm starting", []string{"counter", "lease_end"}},
		{"WARN", "vm frozen at lease end", []string{"counter", "lease_end"}},
		{"INFO", "vm thawed", []string{"lease_end"}},
		{"WARN", "vm crashed", []string{"counter", "reason"}},
		{"INFO", "vm starting", []string{"counter", "lease_end"}},
		{"INFO", "vm stopped", []string{"counter", "reason"}},
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != len(want) {
		t.Fatalf("%d log lines, want %d:\n%s", len(lines), len(want), buf.String())
	}
	for i, line := range lines {
		var got map[string]any
		if err := json.Unmarshal([]byte(line), &got); err != nil {
			t.Fatalf("line %d: %v", i, err)
		}
		w := want[i]
		if got["level"] != w.level || got["msg"] != w.msg || got["vm"] != "web/vm" || got["epoch"] != 1.0 {
			t.Errorf("line %d: %s\nwant %s %q for web/vm at epoch 1", i, line, w.level, w.msg)
		}
		for _, f := range w.fields {
			if _, ok := got[f]; !ok {
				t.Errorf("line %d: %s\nhas no field %s", i, line, f)
			}
		}
	}
}

func TestClose(t *testing.T) {
	dir, clk := t.TempDir(), newClock()
	d := newDriver(t, "n1", dir, clk)
	lease := clk.Now().Add(time.Minute)
	start(t, d, testSpec(web, 1), lease)
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if st := status(t, d, web); st.State != driver.StateStopped {
		t.Errorf("after Close: %s, want stopped", st.State)
	}
	if err := d.Start(context.Background(), testSpec(web, 2), lease); err == nil {
		t.Error("Start after Close succeeded")
	}
}

// Hundreds of VMs per node: 200 start, run, stop gracefully and leave no
// goroutine behind.
func TestManyVMs(t *testing.T) {
	dir := t.TempDir()
	base := runtime.NumGoroutine()
	d := New(Config{Node: "n1", SharedDir: dir, Guest: Guest{ // quiet: 400 log lines help no one
		Tick: 20 * time.Millisecond, WorkingSetBytes: 64 << 10, DirtyRateBytesPerSec: 1 << 20,
	}})
	defer d.Close()
	lease := time.Now().Add(time.Minute)
	const n = 200
	ids := make([]driver.VMID, n)
	for i := range ids {
		ids[i] = driver.VMID{Group: fmt.Sprintf("g%03d", i), Resource: "vm"}
		start(t, d, testSpec(ids[i], 1), lease)
	}
	for _, id := range ids {
		waitCounter(t, d, id, 2)
	}
	for _, id := range ids {
		if err := d.Stop(context.Background(), id, 1); err != nil {
			t.Fatalf("Stop(%s): %v", id, err)
		}
	}
	for _, id := range ids {
		st := status(t, d, id)
		_, disk := readDisk(t, diskPath(dir, testSpec(id, 1)))
		if st.State != driver.StateStopped || len(disk) < 2 || disk[len(disk)-1].Counter != st.Counter {
			t.Errorf("%s: %+v with %d records", id, st, len(disk))
		}
		if err := d.Forget(id, 1); err != nil {
			t.Errorf("Forget(%s): %v", id, err)
		}
	}
	if l := d.List(); len(l) != 0 {
		t.Errorf("List after Forget: %d VMs", len(l))
	}
	waitFor(t, "guest goroutines to exit", func() bool { return runtime.NumGoroutine() <= base })
}

// A real clock end to end: the gate uses time.Now's monotonic reading, and
// a lease of 50 ms really ends the guest's writes.
func TestRealClockLease(t *testing.T) {
	dir := t.TempDir()
	d := newDriver(t, "n1", dir, nil)
	leaseEnd := time.Now().Add(50 * time.Millisecond)
	start(t, d, testSpec(web, 1), leaseEnd)
	waitFor(t, "freeze", func() bool { return status(t, d, web).State == driver.StateFrozen })
	if time.Now().Before(leaseEnd) {
		t.Fatal("frozen before its lease end")
	}
	waitWakeups(t, d, web, 3)
	for _, r := range readExec(t, dir, web) {
		if !r.Wall.Before(leaseEnd) {
			t.Errorf("record %+v at or after lease end %s", r, leaseEnd.UTC())
		}
	}
	if err := d.ExtendLease(web, 1, time.Now().Add(time.Minute)); err != nil {
		t.Fatalf("ExtendLease: %v", err)
	}
	waitFor(t, "thaw", func() bool { return status(t, d, web).State == driver.StateRunning })
}

// Every command at once, for the race detector and for deadlocks: the
// guest loop, renewals racing the clock, status readers, and in the end a
// stop, a kill and a crash racing each other. Whatever the interleaving,
// the VM ends stopped or crashed, counters only grow, and no record is
// stamped after the last lease end granted.
func TestConcurrentCommands(t *testing.T) {
	dir, clk := t.TempDir(), newClock()
	d := newDriver(t, "n1", dir, clk)
	start(t, d, testSpec(web, 1), clk.Now().Add(50*time.Millisecond))
	ctx := context.Background()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	spin := func(f func()) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
					f()
					runtime.Gosched()
				}
			}
		}()
	}
	spin(func() { clk.Advance(time.Millisecond) })
	spin(func() { _ = d.ExtendLease(web, 1, clk.Now().Add(20*time.Millisecond)) })
	spin(func() { _, _ = d.Status(web); _ = d.List() })
	waitCounter(t, d, web, 20)
	close(stop)
	wg.Wait()

	var race sync.WaitGroup
	for _, f := range []func(){
		func() { _ = d.Stop(ctx, web, 1) },
		func() { _ = d.Kill(web, 1) },
		func() { _ = d.Crash(web, "x") },
	} {
		race.Add(1)
		go func() { defer race.Done(); f() }()
	}
	race.Wait()
	st := status(t, d, web)
	if st.State != driver.StateStopped && st.State != driver.StateCrashed {
		t.Errorf("after stop, kill and crash: %s", st.State)
	}
	_, disk := readDisk(t, diskPath(dir, testSpec(web, 1)))
	increasing(t, "disk", disk)
	for _, r := range readExec(t, dir, web) {
		if !r.Wall.Before(st.LeaseEnd) {
			t.Errorf("record %+v stamped at or after the last lease end %s", r, st.LeaseEnd)
		}
	}
}

// A hung guest stops counting at once; its watchdog, fed by every tick,
// crashes the VM once it has gone unfed for its timeout, and not before.
// Without a watchdog it hangs on, still "running" to the driver.
func TestHungGuest(t *testing.T) {
	dir, clk := t.TempDir(), newClock()
	guest := testGuest
	guest.Watchdog = time.Second
	d := newGuestDriver(t, "n1", dir, clk, guest)
	start(t, d, testSpec(web, 1), clk.Now().Add(time.Hour))
	waitCounter(t, d, web, 2)
	if err := d.Hang(web); err != nil {
		t.Fatal(err)
	}
	hung := status(t, d, web).Counter
	clk.Advance(999 * time.Millisecond)
	waitWakeups(t, d, web, 5)
	if st := status(t, d, web); st.State != driver.StateRunning || st.Counter != hung {
		t.Fatalf("before the watchdog's timeout: %s at %d, want running at %d", st.State, st.Counter, hung)
	}
	clk.Advance(time.Millisecond)
	waitFor(t, "the watchdog to crash the VM", func() bool { return status(t, d, web).State == driver.StateCrashed })
	if st := status(t, d, web); !strings.Contains(st.Reason, "watchdog") || st.Counter != hung {
		t.Errorf("after the watchdog: %+v, want crashed by the watchdog at counter %d", st, hung)
	}
	if err := d.Hang(web); !errors.Is(err, driver.ErrInvalidState) {
		t.Errorf("Hang of a crashed VM: %v, want ErrInvalidState", err)
	}

	other := driver.VMID{Group: "other", Resource: "vm"}
	d2 := newDriver(t, "n2", t.TempDir(), clk) // testGuest: no watchdog
	start(t, d2, testSpec(other, 1), clk.Now().Add(time.Hour))
	if err := d2.Hang(other); err != nil {
		t.Fatal(err)
	}
	clk.Advance(10 * time.Minute)
	waitWakeups(t, d2, other, 5)
	if st := status(t, d2, other); st.State != driver.StateRunning {
		t.Errorf("a hung guest without a watchdog: %s, want still running", st.State)
	}
}

// The sim runs any spec Start accepts, on any node's behalf (the kernel
// is not its concern), and refuses the rest as Start would.
func TestCanRun(t *testing.T) {
	d := New(Config{Node: "n1", SharedDir: t.TempDir()})
	defer d.Close()
	spec := driver.VMSpec{ID: driver.VMID{Group: "g", Resource: "vm"}, Node: "n2", Epoch: 1, MemoryBytes: 1 << 20, Boot: driver.Boot{Kernel: "/nonexistent/vmlinuz"}}
	if err := d.CanRun(spec); err != nil {
		t.Fatalf("CanRun = %v", err)
	}
	spec.MemoryBytes = 0
	if err := d.CanRun(spec); !errors.Is(err, driver.ErrInvalidSpec) || !strings.Contains(err.Error(), "memory_bytes") {
		t.Fatalf("CanRun without memory = %v, want ErrInvalidSpec naming memory_bytes", err)
	}
}

// Changes moves at every change of the table or of a VM's state, whether
// a call made it or the VM did on its own (the freeze at its lease end, a
// crash), and not at the guest's ticks: the executor sleeps on it.
func TestChangesCountsStatesNotTicks(t *testing.T) {
	dir, clk := t.TempDir(), newClock()
	d := newDriver(t, "n1", dir, clk)
	moved := func(what string, from uint64) uint64 {
		t.Helper()
		now := d.Changes()
		if now == from {
			t.Fatalf("%s: Changes stayed at %d", what, now)
		}
		return now
	}
	c := d.Changes()
	leaseEnd := clk.Now().Add(10 * time.Second)
	start(t, d, testSpec(web, 1), leaseEnd)
	c = moved("start", c)
	waitWakeups(t, d, web, 5)
	if now := d.Changes(); now != c {
		t.Fatalf("ticks moved Changes from %d to %d", c, now)
	}
	clk.Set(leaseEnd)
	waitWakeups(t, d, web, 2) // the guest loop's gate freezes it
	c = moved("freeze at lease end", c)
	if err := d.ExtendLease(web, 1, clk.Now().Add(10*time.Second)); err != nil {
		t.Fatal(err)
	}
	c = moved("thaw", c)
	if err := d.Crash(web, "test"); err != nil {
		t.Fatal(err)
	}
	c = moved("crash", c)
	if err := d.Forget(web, 1); err != nil {
		t.Fatal(err)
	}
	moved("forget", c)
}
