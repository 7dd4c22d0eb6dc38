package qemu

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/haven-ha/haven/driver"
	"github.com/haven-ha/haven/driver/qemu/testguest"
)

// The stall signal: passes sampled once each, a pass that leaves no
// less than the best before it (by a sixteenth) counting toward it, and
// nothing before QEMU throttles.
func TestStall(t *testing.T) {
	for _, tc := range []struct {
		name      string
		passes    []int64 // remaining MiB at passes 1, 2, ...
		throttled bool
		want      int // the pass that stalls, 0 for none
	}{
		{"converging", []int64{160, 16, 8, 4, 2, 1}, true, 0},
		{"flat", []int64{160, 16, 16, 16, 16}, true, 4},
		{"noise is no progress", []int64{160, 16, 15, 16, 16}, true, 4},
		{"progress restarts the count", []int64{160, 16, 16, 12, 12, 12}, true, 6},
		{"not throttled", []int64{160, 16, 16, 16, 16}, false, 0},
	} {
		var s stall
		got := 0
		for i, mib := range tc.passes {
			pass := int64(i + 1)
			// Several polls per pass: only the first counts.
			for range 3 {
				if s.sample(pass, mib<<20, tc.throttled) && got == 0 {
					got = int(pass)
				}
			}
		}
		if got != tc.want {
			t.Errorf("%s: stalled at pass %d, want %d", tc.name, got, tc.want)
		}
	}
}

// Where post-copy is not enabled (postcopySupported) the driver does not
// report it and refuses a move that asks for it, before anything is sent;
// the VM runs on.
func TestLiveMigrationPostcopyRefused(t *testing.T) {
	needQEMU(t)
	postcopySupported = false
	t.Cleanup(func() { postcopySupported = true })
	n1, n2 := twoNodes(t)
	if n1.d.Capabilities().Postcopy {
		t.Fatal("the driver reports post-copy")
	}
	spec := movingGuest(t, 1)
	src := bootGuest(t, n1, spec)
	target := spec
	target.Epoch = 2
	_, err, inErr := move(t, n1, n2, target, 1, driver.MigrateOptions{Postcopy: true}, nil)
	if !errors.Is(err, driver.ErrUnsupported) || inErr == nil {
		t.Fatalf("MigrateOut: %v, want ErrUnsupported; MigrateIn: %v, want an error", err, inErr)
	}
	mustStatus(t, n1, web, driver.StateRunning, false)
	if err := src.Poll(); err != nil {
		t.Fatal(err)
	}
	last := src.Last().N
	src.Wait(t, 10*time.Second, "the source to tick on", func(s *testguest.Serial) bool { return s.Last().N > last+10 })
}

// A move that stopped before its switchover to post-copy and is not
// committed rolls back: Resume cancels QEMU's migration and the guest
// counts on at the source.
func TestLiveMigrationPostcopyRollback(t *testing.T) {
	needQEMU(t)
	n1, n2 := twoNodes(t)
	g := testguest.Build(t)
	spec := driver.VMSpec{ID: web, Epoch: 1, VCPUs: 1, MemoryBytes: 160 << 20, Boot: driver.Boot{
		Kernel: g.Kernel, Initrd: g.Initrd,
		Cmdline: g.Append(testguest.Options{MemMiB: 16, DirtyMiBPerSec: 24, TickMs: 10, WatchdogSec: 60}),
	}}
	src := bootGuest(t, n1, spec)
	target := spec
	target.Epoch = 2
	_, err, inErr := move(t, n1, n2, target, 1, driver.MigrateOptions{BandwidthLimit: 4 << 20, Postcopy: true}, nil)
	if err != nil || inErr != nil {
		t.Fatalf("MigrateOut: %v; MigrateIn: %v", err, inErr)
	}
	if v := n1.d.lookup(web); v.handover == nil {
		t.Fatal("the source is not paused before a switchover to post-copy")
	}
	if err := src.Poll(); err != nil {
		t.Fatal(err)
	}
	last := src.Last().N
	// The leader rolls back: the target's incoming VM goes, the source
	// resumes.
	if err := n2.d.Forget(web, 2); err != nil {
		t.Fatal(err)
	}
	if err := n1.d.Resume(web, 1, lease()); err != nil {
		t.Fatal(err)
	}
	src.Wait(t, 30*time.Second, "the source to tick on", func(s *testguest.Serial) bool { return s.Last().N > last+20 })
	if err := src.Increasing(); err != nil {
		t.Error(err)
	}
	mustStatus(t, n1, web, driver.StateRunning, false)
}

// A committed move that switched to post-copy completes: Kill on the
// source lets QEMU send the rest, Activate runs the guest on the target,
// which counts on from where the source stopped and keeps counting once
// every page has arrived (a page lost on the way shows as an oops and a
// count from 1 again).
func TestLiveMigrationPostcopy(t *testing.T) {
	needQEMU(t)
	n1, n2 := twoNodes(t)
	g := testguest.Build(t)
	spec := driver.VMSpec{ID: web, Epoch: 1, VCPUs: 1, MemoryBytes: 160 << 20, Boot: driver.Boot{
		Kernel: g.Kernel, Initrd: g.Initrd,
		Cmdline: g.Append(testguest.Options{MemMiB: 16, DirtyMiBPerSec: 24, TickMs: 10, WatchdogSec: 60}),
	}}
	src := bootGuest(t, n1, spec)
	dst := n2.console(t, web)
	target := spec
	target.Epoch = 2
	_, err, inErr := move(t, n1, n2, target, 1, driver.MigrateOptions{BandwidthLimit: 4 << 20, Postcopy: true}, nil)
	if err != nil || inErr != nil {
		t.Fatalf("MigrateOut: %v; MigrateIn: %v", err, inErr)
	}
	if v := n1.d.lookup(web); v.handover == nil {
		t.Fatal("the source is not paused before a switchover to post-copy")
	}
	if err := src.Poll(); err != nil {
		t.Fatal(err)
	}
	last := src.Last()
	// The commit: the source's executor kills its VM, which hands over.
	killed := make(chan error, 1)
	go func() { killed <- n1.d.Kill(web, 1) }()
	if err := n2.d.Activate(web, 2, lease()); err != nil {
		t.Fatal(err)
	}
	first := tickAfter(t, dst, 0, 30*time.Second)
	if first.N <= last.N || first.N > last.N+20 {
		b, _ := os.ReadFile(dst.Path())
		t.Fatalf("the target's first tick is %d, the source's last %d: the guest did not carry on; the target's console:\n%s", first.N, last.N, b)
	}
	// Kill returns once the source has sent every page.
	select {
	case err := <-killed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(postcopyDrain):
		t.Fatal("the post-copy did not complete")
	}
	if err := dst.Poll(); err != nil {
		t.Fatal(err)
	}
	done := dst.Last().N
	dst.Wait(t, 30*time.Second, "the target to tick on with all of its memory", func(s *testguest.Serial) bool { return s.Last().N >= done+500 })
	if err := dst.Increasing(); err != nil {
		b, _ := os.ReadFile(dst.Path())
		t.Errorf("%v; the target's console:\n%s", err, b)
	}
	mustStatus(t, n2, web, driver.StateRunning, false)
}

// A move over two channels (multifd, set on both QEMUs) completes, and
// the guest counts on at the target.
func TestLiveMigrationMultifd(t *testing.T) {
	needQEMU(t)
	n1, n2 := twoNodes(t)
	spec := movingGuest(t, 1)
	src := bootGuest(t, n1, spec)
	dst := n2.console(t, web)
	target := spec
	target.Epoch = 2
	res, err, inErr := move(t, n1, n2, target, 1, driver.MigrateOptions{Channels: 2}, nil)
	if err != nil || inErr != nil {
		t.Fatalf("MigrateOut: %v; MigrateIn: %v", err, inErr)
	}
	_, mon, _, _ := n1.d.lookup(web).snapshot()
	info, err := mon.QueryMigrate(context.Background())
	if err != nil || info.RAM == nil || info.RAM.MultifdBytes == 0 {
		t.Fatalf("the source's migration %+v, %v: no bytes went over multifd channels", info.RAM, err)
	}
	if err := src.Poll(); err != nil {
		t.Fatal(err)
	}
	last := src.Last()
	if err := n2.d.Activate(web, 2, lease()); err != nil {
		t.Fatal(err)
	}
	first := tickAfter(t, dst, 0, 10*time.Second)
	if first.N <= last.N || first.N > last.N+20 {
		t.Errorf("the target's first tick is %d, the source's last %d: the guest did not carry on", first.N, last.N)
	}
	dst.Wait(t, 10*time.Second, "the target to tick on", func(s *testguest.Serial) bool { return s.Last().N >= first.N+20 })
	if err := n1.d.Kill(web, 1); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d rounds, %d MiB sent (%d MiB over multifd), QEMU's downtime %s, gap %s",
		res.Rounds, res.BytesSent>>20, info.RAM.MultifdBytes>>20, res.Paused, first.Seen.Sub(last.Seen).Round(time.Millisecond))
}
