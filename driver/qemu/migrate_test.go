package qemu

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/haven-ha/haven/driver"
	"github.com/haven-ha/haven/driver/qemu/testguest"
	"github.com/haven-ha/haven/internal/waitfor"
	"github.com/haven-ha/haven/migrate"
)

// node is one driver of a two-node test: a run directory of its own, the
// shared directory in common.
type node struct {
	d   *Driver
	run string
}

func twoNodes(t *testing.T) (n1, n2 node) {
	t.Helper()
	shared := t.TempDir()
	n1 = node{run: runDir(t)}
	n1.d = newTestDriver(t, "n1", n1.run, shared)
	n2 = node{run: runDir(t)}
	n2.d = newTestDriver(t, "n2", n2.run, shared)
	return n1, n2
}

// console reads the log of the VM's console on n.
func (n node) console(t *testing.T, id driver.VMID) *testguest.Serial {
	s := testguest.NewSerial(ConsolePath(n.run, id))
	t.Cleanup(func() { s.Close() })
	return s
}

func lease() time.Time { return time.Now().Add(10 * time.Minute) }

// movingGuest is the test guest dirtying memory while it moves: 64 MiB
// written at 20 MiB/s, a tick every 10 ms.
func movingGuest(t *testing.T, epoch uint64) driver.VMSpec {
	g := testguest.Build(t)
	return driver.VMSpec{ID: web, Epoch: epoch, VCPUs: 1, MemoryBytes: 256 << 20, Boot: driver.Boot{
		Kernel: g.Kernel, Initrd: g.Initrd,
		Cmdline: g.Append(testguest.Options{MemMiB: 64, DirtyMiBPerSec: 20, TickMs: 10, WatchdogSec: 60}),
	}}
}

// bootGuest starts spec on n and waits until the guest ticks.
func bootGuest(t *testing.T, n node, spec driver.VMSpec) *testguest.Serial {
	t.Helper()
	if err := n.d.Start(context.Background(), spec, lease()); err != nil {
		t.Fatal(err)
	}
	s := n.console(t, spec.ID)
	s.Wait(t, 90*time.Second, "the guest to tick", func(s *testguest.Serial) bool { return s.Ticks() >= 10 })
	return s
}

// move runs a live migration of spec.ID from src, at srcEpoch, to dst at
// spec.Epoch over a pipe, each end closed when its call returns, as the
// agent's stream handlers do.
func move(t *testing.T, src, dst node, spec driver.VMSpec, srcEpoch uint64, opts driver.MigrateOptions, progress func(driver.Progress)) (res driver.MigrateResult, outErr, inErr error) {
	t.Helper()
	return moveCtx(t, t.Context(), src, dst, spec, srcEpoch, opts, progress)
}

// moveCtx is move with the source's context.
func moveCtx(t *testing.T, ctx context.Context, src, dst node, spec driver.VMSpec, srcEpoch uint64, opts driver.MigrateOptions, progress func(driver.Progress)) (res driver.MigrateResult, outErr, inErr error) {
	t.Helper()
	a, b := net.Pipe()
	in := make(chan error, 1)
	go func() {
		err := dst.d.MigrateIn(t.Context(), spec, b)
		b.Close()
		in <- err
	}()
	res, outErr = src.d.MigrateOut(ctx, spec.ID, srcEpoch, a, opts, progress)
	a.Close()
	return res, outErr, <-in
}

func mustStatus(t *testing.T, n node, id driver.VMID, state driver.State, complete bool) {
	t.Helper()
	st, err := n.d.Status(id)
	if err != nil || st.State != state || st.Complete != complete {
		t.Fatalf("status %+v, %v; want %s, complete %v", st, err, state, complete)
	}
}

// qemuRuns asks the VM's QEMU whether it runs guest code.
func qemuRuns(t *testing.T, n node, id driver.VMID) bool {
	t.Helper()
	v := n.d.lookup(id)
	if v == nil {
		t.Fatalf("no vm %s", id)
	}
	_, mon, _, _ := v.snapshot()
	qs, err := mon.QueryStatus(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return qs.Running
}

// tickAfter polls s every few milliseconds until a tick after n shows,
// and returns it, its Seen within that of when it was printed.
func tickAfter(t *testing.T, s *testguest.Serial, n uint64, timeout time.Duration) testguest.Tick {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if err := s.Poll(); err != nil {
			t.Fatal(err)
		}
		if s.Last().N > n {
			return s.Last()
		}
		if time.Now().After(deadline) {
			t.Fatalf("no tick after %d within %s (log %s)", n, timeout, s.Path())
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// A guest dirtying memory moves live: the target takes over the counter
// where the source stopped it, never ran before Activate, and the source
// stays paused until it is killed.
func TestLiveMigration(t *testing.T) {
	needQEMU(t)
	n1, n2 := twoNodes(t)
	spec := movingGuest(t, 1)
	src := bootGuest(t, n1, spec)
	dst := n2.console(t, web)

	// The source's console, read every few milliseconds while the move
	// runs, to date its last tick.
	stopWatch := make(chan struct{})
	watched := make(chan error, 1)
	go func() {
		for {
			if err := src.Poll(); err != nil {
				watched <- err
				return
			}
			select {
			case <-stopWatch:
				watched <- nil
				return
			case <-time.After(2 * time.Millisecond):
			}
		}
	}()

	var (
		mu     sync.Mutex
		phases []driver.Progress
	)
	target := spec
	target.Epoch = 2
	start := time.Now()
	res, err, inErr := move(t, n1, n2, target, 1, driver.MigrateOptions{}, func(p driver.Progress) {
		mu.Lock()
		phases = append(phases, p)
		mu.Unlock()
		// Status answers during the move, and says what the move does.
		if st, err := n1.d.Status(web); err != nil || (p.Phase == "precopy" && st.State != driver.StateRunning) || (p.Phase == "switchover" && st.State != driver.StatePaused) {
			t.Errorf("source during %s: %+v, %v", p.Phase, st, err)
		}
		if st, err := n2.d.Status(web); err != nil || st.State != driver.StateIncoming {
			t.Errorf("target during %s: %+v, %v", p.Phase, st, err)
		}
	})
	returned := time.Now()
	took := returned.Sub(start)
	close(stopWatch)
	if werr := <-watched; werr != nil {
		t.Fatal(werr)
	}
	if err != nil || inErr != nil {
		t.Fatalf("MigrateOut: %v; MigrateIn: %v", err, inErr)
	}
	last := src.Last()
	mustStatus(t, n1, web, driver.StatePaused, false)
	mustStatus(t, n2, web, driver.StateIncoming, true)
	if err := dst.Poll(); err != nil {
		t.Fatal(err)
	}
	if dst.Ticks() != 0 || qemuRuns(t, n2, web) {
		t.Fatalf("the target ran before Activate: %d ticks on its console", dst.Ticks())
	}
	checkProgress(t, phases, res)

	activate := time.Now()
	if err := n2.d.Activate(web, 2, lease()); err != nil {
		t.Fatal(err)
	}
	activated := time.Now()
	first := tickAfter(t, dst, 0, 10*time.Second)
	gap := first.Seen.Sub(last.Seen)
	if first.N <= last.N || first.N > last.N+20 {
		b, _ := os.ReadFile(dst.Path())
		t.Errorf("the target's first tick is %d, the source's last %d: the guest did not carry on; the target's console:\n%s", first.N, last.N, b)
	}
	mustStatus(t, n2, web, driver.StateRunning, false)
	dst.Wait(t, 10*time.Second, "the target to tick on", func(s *testguest.Serial) bool { return s.Last().N >= first.N+20 })
	if err := dst.Increasing(); err != nil {
		t.Error(err)
	}
	if err := src.Poll(); err != nil {
		t.Fatal(err)
	}
	if src.Last().N != last.N {
		t.Errorf("the paused source ticked on: %d after %d", src.Last().N, last.N)
	}
	mustStatus(t, n1, web, driver.StatePaused, false)
	if err := n1.d.Kill(web, 1); err != nil {
		t.Fatal(err)
	}
	if err := n1.d.Forget(web, 1); err != nil {
		t.Fatal(err)
	}
	ms := func(d time.Duration) time.Duration { return d.Round(time.Millisecond) }
	t.Logf("moved in %s (MigrateOut), %d rounds, %d MiB sent, throttle %d %%; QEMU's downtime %s; "+
		"guest-seen gap %s (ticks %d then %d): last tick to MigrateOut's return %s, the test's checks %s, Activate %s, to the first tick %s",
		ms(took), res.Rounds, res.BytesSent>>20, res.ThrottlePercent, res.Paused, ms(gap), last.N, first.N,
		ms(returned.Sub(last.Seen)), ms(activate.Sub(returned)), ms(activated.Sub(activate)), ms(first.Seen.Sub(activated)))
}

// checkProgress checks a completed move's reports: setup once and first,
// pre-copy rounds that never go back, and a switchover that ends with
// everything sent.
func checkProgress(t *testing.T, ps []driver.Progress, res driver.MigrateResult) {
	t.Helper()
	if len(ps) < 3 || ps[0].Phase != "setup" {
		t.Fatalf("reports %+v: want setup, precopy..., switchover", ps)
	}
	round, switchovers := 0, 0
	for _, p := range ps[1:] {
		switch p.Phase {
		case "precopy":
			if switchovers > 0 || p.Round < round || p.BytesSent < 0 {
				t.Errorf("precopy report %+v after round %d", p, round)
			}
		case "switchover":
			switchovers++
		default:
			t.Errorf("report %+v", p)
		}
		round = p.Round
	}
	end := ps[len(ps)-1]
	if switchovers != 2 || end.RemainingBytes != 0 || end.BytesSent != res.BytesSent || end.Round != res.Rounds {
		t.Errorf("last report %+v after %d switchover reports; result %+v", end, switchovers, res)
	}
	if res.Rounds < 2 || res.BytesSent <= 0 || res.Paused <= 0 {
		t.Errorf("result %+v", res)
	}
}

// A completed move rolled back: the source resumes, the guest goes on
// there, and the target's copy is discarded.
func TestLiveMigrationRollback(t *testing.T) {
	needQEMU(t)
	n1, n2 := twoNodes(t)
	spec := movingGuest(t, 1)
	src := bootGuest(t, n1, spec)
	target := spec
	target.Epoch = 2
	if _, err, inErr := move(t, n1, n2, target, 1, driver.MigrateOptions{}, nil); err != nil || inErr != nil {
		t.Fatalf("MigrateOut: %v; MigrateIn: %v", err, inErr)
	}
	if err := src.Poll(); err != nil {
		t.Fatal(err)
	}
	last := src.Last().N
	pid := qemuPID(t, n2.run, web)

	if err := n1.d.Resume(web, 2, lease()); !errors.Is(err, driver.ErrStaleEpoch) {
		t.Errorf("Resume at the target's epoch: %v, want ErrStaleEpoch", err)
	}
	if err := n1.d.Resume(web, 1, time.Now().Add(-time.Millisecond)); !errors.Is(err, driver.ErrLeaseExpired) {
		t.Errorf("Resume with a passed lease: %v, want ErrLeaseExpired", err)
	}
	if err := n1.d.Resume(web, 1, lease()); err != nil {
		t.Fatal(err)
	}
	mustStatus(t, n1, web, driver.StateRunning, false)
	src.Wait(t, 10*time.Second, "the guest to go on at the source", func(s *testguest.Serial) bool { return s.Last().N > last+20 })
	if err := src.Increasing(); err != nil {
		t.Error(err)
	}

	if err := n2.d.Forget(web, 2); err != nil {
		t.Fatal(err)
	}
	if _, err := n2.d.Status(web); !errors.Is(err, driver.ErrNotFound) {
		t.Errorf("the target after Forget: %v", err)
	}
	if err := syscall.Kill(pid, 0); err == nil {
		t.Error("the forgotten target's QEMU lives on")
	}
	if dst := n2.console(t, web); dst.Poll() == nil && dst.Ticks() != 0 {
		t.Errorf("the target ticked %d times", dst.Ticks())
	}
}

// A move that cannot converge in time gives up, and the guest goes on at
// the source; the target leaves nothing behind.
func TestLiveMigrationGivesUp(t *testing.T) {
	needQEMU(t)
	n1, n2 := twoNodes(t)
	spec := movingGuest(t, 1)
	src := bootGuest(t, n1, spec)
	target := spec
	target.Epoch = 2
	start := time.Now()
	_, err, inErr := move(t, n1, n2, target, 1, driver.MigrateOptions{BandwidthLimit: 1 << 20, MaxDuration: time.Second}, nil)
	var gu *driver.GiveUpError
	if !errors.As(err, &gu) {
		t.Fatalf("MigrateOut: %v, want a GiveUpError", err)
	}
	t.Logf("gave up after %s: %v; the target: %v", time.Since(start).Round(time.Millisecond), err, inErr)
	if inErr == nil {
		t.Error("MigrateIn succeeded though the source gave up")
	}
	mustStatus(t, n1, web, driver.StateRunning, false)
	if err := src.Poll(); err != nil {
		t.Fatal(err)
	}
	last := src.Last().N
	src.Wait(t, 10*time.Second, "the guest to go on at the source", func(s *testguest.Serial) bool { return s.Last().N > last+20 })
	if l := n2.d.List(); len(l) != 0 {
		t.Errorf("the target lists %+v", l)
	}
	waitfor.Cond(t, 10*time.Second, "the target's directory gone", func() bool {
		entries, _ := os.ReadDir(n2.run)
		return len(entries) == 0
	})
}

// What the contract refuses, on a diskless VM: a move costs milliseconds.
func TestMigrationRefusals(t *testing.T) {
	needQEMU(t)
	n1, n2 := twoNodes(t)
	spec := driver.VMSpec{ID: web, Epoch: 2, VCPUs: 1, MemoryBytes: 64 << 20}
	if err := n1.d.Start(context.Background(), spec, lease()); err != nil {
		t.Fatal(err)
	}

	// A source not older than the target's epoch.
	_, err, inErr := move(t, n1, n2, spec, 2, driver.MigrateOptions{}, nil)
	if !errors.Is(err, driver.ErrStaleEpoch) || !errors.Is(inErr, driver.ErrStaleEpoch) {
		t.Errorf("a move at the source's own epoch: MigrateOut %v, MigrateIn %v; want ErrStaleEpoch", err, inErr)
	}
	// A target that is not the source's VM.
	other := spec
	other.Epoch, other.MemoryBytes = 3, 128<<20
	_, err, inErr = move(t, n1, n2, other, 2, driver.MigrateOptions{}, nil)
	if !errors.Is(err, driver.ErrInvalidSpec) || !errors.Is(inErr, driver.ErrInvalidSpec) {
		t.Errorf("a move to another machine: MigrateOut %v, MigrateIn %v; want ErrInvalidSpec", err, inErr)
	}
	if l := n2.d.List(); len(l) != 0 {
		t.Errorf("refused moves left %+v on the target", l)
	}
	mustStatus(t, n1, web, driver.StateRunning, false)
	if !qemuRuns(t, n1, web) {
		t.Error("a refused move left the source stopped")
	}
	// The wrong epoch at the source.
	if _, err := n1.d.MigrateOut(t.Context(), web, 1, nil, driver.MigrateOptions{}, nil); !errors.Is(err, driver.ErrStaleEpoch) {
		t.Errorf("MigrateOut at another epoch: %v, want ErrStaleEpoch", err)
	}

	target := spec
	target.Epoch = 3
	if _, err, inErr := move(t, n1, n2, target, 2, driver.MigrateOptions{}, nil); err != nil || inErr != nil {
		t.Fatalf("MigrateOut: %v; MigrateIn: %v", err, inErr)
	}
	// The paused source moves no more.
	if _, err := n1.d.MigrateOut(t.Context(), web, 2, nil, driver.MigrateOptions{}, nil); !errors.Is(err, driver.ErrInvalidState) {
		t.Errorf("MigrateOut of a paused VM: %v, want ErrInvalidState", err)
	}
	if _, err := n1.d.SaveState(t.Context(), web, 2, "x.state", nil); !errors.Is(err, driver.ErrInvalidState) {
		t.Errorf("SaveState of a paused VM: %v, want ErrInvalidState", err)
	}
	if err := n1.d.Activate(web, 2, lease()); !errors.Is(err, driver.ErrInvalidState) {
		t.Errorf("Activate of the paused source: %v, want ErrInvalidState", err)
	}
	if err := n1.d.ExtendLease(web, 2, lease().Add(time.Minute)); err != nil {
		t.Errorf("ExtendLease of the paused source: %v", err)
	}
	mustStatus(t, n1, web, driver.StatePaused, false)

	if err := n2.d.Activate(web, 3, time.Now().Add(-time.Millisecond)); !errors.Is(err, driver.ErrLeaseExpired) {
		t.Errorf("Activate with a passed lease: %v, want ErrLeaseExpired", err)
	}
	if err := n2.d.Activate(web, 2, lease()); !errors.Is(err, driver.ErrStaleEpoch) {
		t.Errorf("Activate at the source's epoch: %v, want ErrStaleEpoch", err)
	}
	if err := n2.d.Activate(web, 4, lease()); !errors.Is(err, driver.ErrStaleEpoch) {
		t.Errorf("Activate at a later epoch: %v, want ErrStaleEpoch", err)
	}
	if err := n2.d.Resume(web, 3, lease()); !errors.Is(err, driver.ErrInvalidState) {
		t.Errorf("Resume of an incoming VM: %v, want ErrInvalidState", err)
	}
	if err := n2.d.ExtendLease(web, 3, lease()); !errors.Is(err, driver.ErrInvalidState) {
		t.Errorf("ExtendLease of an incoming VM: %v, want ErrInvalidState", err)
	}
	if err := n2.d.Start(context.Background(), target, lease()); !errors.Is(err, driver.ErrInvalidState) {
		t.Errorf("Start over an incoming VM: %v, want ErrInvalidState", err)
	}
	mustStatus(t, n2, web, driver.StateIncoming, true)
	if qemuRuns(t, n2, web) {
		t.Fatal("refused activations ran the target")
	}

	if err := n2.d.Activate(web, 3, lease()); err != nil {
		t.Fatal(err)
	}
	mustStatus(t, n2, web, driver.StateRunning, false)
	if !qemuRuns(t, n2, web) {
		t.Error("the activated target does not run")
	}
	if err := n2.d.Activate(web, 3, lease()); !errors.Is(err, driver.ErrInvalidState) {
		t.Errorf("a second Activate: %v, want ErrInvalidState", err)
	}
	if err := n2.d.Resume(web, 3, lease()); !errors.Is(err, driver.ErrInvalidState) {
		t.Errorf("Resume of a running VM: %v, want ErrInvalidState", err)
	}

	// A stopped VM moves no more.
	if err := n1.d.Kill(web, 2); err != nil {
		t.Fatal(err)
	}
	if _, err := n1.d.MigrateOut(t.Context(), web, 2, nil, driver.MigrateOptions{}, nil); !errors.Is(err, driver.ErrInvalidState) {
		t.Errorf("MigrateOut of a stopped VM: %v, want ErrInvalidState", err)
	}
}

// A move cancelled before any memory went, or while the guest is paused
// at its switchover: the guest runs on at the source, and the target
// leaves nothing behind.
func TestLiveMigrationCancelled(t *testing.T) {
	needQEMU(t)
	n1, n2 := twoNodes(t)
	spec := driver.VMSpec{ID: web, Epoch: 1, VCPUs: 1, MemoryBytes: 64 << 20}
	if err := n1.d.Start(context.Background(), spec, lease()); err != nil {
		t.Fatal(err)
	}
	target := spec
	target.Epoch = 2
	for _, phase := range []string{"setup", "switchover"} {
		ctx, cancel := context.WithCancel(t.Context())
		_, err, inErr := moveCtx(t, ctx, n1, n2, target, 1, driver.MigrateOptions{}, func(p driver.Progress) {
			if p.Phase == phase {
				cancel()
			}
		})
		cancel()
		if !errors.Is(err, context.Canceled) || inErr == nil {
			t.Fatalf("cancelled at %s: MigrateOut %v, MigrateIn %v", phase, err, inErr)
		}
		mustStatus(t, n1, web, driver.StateRunning, false)
		if !qemuRuns(t, n1, web) {
			t.Errorf("cancelled at %s: the source stays stopped", phase)
		}
		if l := n2.d.List(); len(l) != 0 {
			t.Errorf("cancelled at %s: the target lists %+v", phase, l)
		}
	}
	// The source moves after all.
	if _, err, inErr := move(t, n1, n2, target, 1, driver.MigrateOptions{}, nil); err != nil || inErr != nil {
		t.Fatalf("MigrateOut: %v; MigrateIn: %v", err, inErr)
	}
}

// The agent's stream between the two ends has no deadlines: a move
// completes, and a refusal ends, over one all the same.
func TestLiveMigrationOverStream(t *testing.T) {
	needQEMU(t)
	n1, n2 := twoNodes(t)
	spec := driver.VMSpec{ID: web, Epoch: 1, VCPUs: 1, MemoryBytes: 64 << 20}
	if err := n1.d.Start(context.Background(), spec, lease()); err != nil {
		t.Fatal(err)
	}
	for _, epoch := range []uint64{1, 2} { // refused, then done
		target := spec
		target.Epoch = epoch
		a, b := streamPair()
		in := make(chan error, 1)
		go func() {
			err := n2.d.MigrateIn(t.Context(), target, b)
			b.Close()
			in <- err
		}()
		_, err := n1.d.MigrateOut(t.Context(), web, 1, a, driver.MigrateOptions{}, nil)
		a.Close()
		inErr := <-in
		switch {
		case epoch == 1 && (!errors.Is(err, driver.ErrStaleEpoch) || !errors.Is(inErr, driver.ErrStaleEpoch)):
			t.Errorf("a move at the source's epoch: MigrateOut %v, MigrateIn %v", err, inErr)
		case epoch == 2 && (err != nil || inErr != nil):
			t.Fatalf("MigrateOut: %v; MigrateIn: %v", err, inErr)
		}
	}
	if err := n2.d.Activate(web, 2, lease()); err != nil {
		t.Fatal(err)
	}
}

// streamPair is two ends of a message stream, as migrate.Conn carries
// the agent's gRPC stream: no deadlines, and a Close that ends the
// sending direction only.
func streamPair() (*migrate.Conn, *migrate.Conn) {
	ab, ba := make(chan []byte, 16), make(chan []byte, 16)
	send := func(c chan []byte) func([]byte) error {
		return func(p []byte) error { c <- slices.Clone(p); return nil }
	}
	recv := func(c chan []byte) func() ([]byte, error) {
		return func() ([]byte, error) {
			if p, ok := <-c; ok {
				return p, nil
			}
			return nil, io.EOF
		}
	}
	end := func(c chan []byte) func() error {
		return func() error { close(c); return nil }
	}
	return migrate.NewConn(send(ab), recv(ba), end(ab)), migrate.NewConn(send(ba), recv(ab), end(ba))
}

// A VM with a disk: the target takes the image's locks only when
// Activate runs it, so that until then a rolled back source takes them
// back, and after a completed move the source has let them go.
func TestLiveMigrationDisk(t *testing.T) {
	needQEMU(t)
	n1, n2 := twoNodes(t)
	shared := n1.d.cfg.SharedDir
	if err := os.MkdirAll(filepath.Join(shared, "web"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(shared, "web", "d0.img"), make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	spec := driver.VMSpec{ID: web, Epoch: 1, VCPUs: 1, MemoryBytes: 64 << 20, Disks: []driver.DiskSpec{{Name: "d0", Path: "web/d0.img"}}}
	if err := n1.d.Start(context.Background(), spec, lease()); err != nil {
		t.Fatal(err)
	}
	target := spec
	target.Epoch = 2
	if _, err, inErr := move(t, n1, n2, target, 1, driver.MigrateOptions{}, nil); err != nil || inErr != nil {
		t.Fatalf("MigrateOut: %v; MigrateIn: %v", err, inErr)
	}
	if err := n1.d.Resume(web, 1, lease()); err != nil {
		t.Fatalf("the source takes its image back while the target waits: %v", err)
	}
	if err := n2.d.Forget(web, 2); err != nil {
		t.Fatal(err)
	}

	if _, err, inErr := move(t, n1, n2, target, 1, driver.MigrateOptions{}, nil); err != nil || inErr != nil {
		t.Fatalf("MigrateOut: %v; MigrateIn: %v", err, inErr)
	}
	if err := n2.d.Activate(web, 2, lease()); err != nil {
		t.Fatalf("the target takes the image the source let go: %v", err)
	}
	if !qemuRuns(t, n2, web) {
		t.Error("the activated target does not run")
	}
	// Were the source resumed by mistake now, the image's lock would
	// stop it: QEMU's last line of defence against two runners.
	if err := n1.d.Resume(web, 1, lease()); err == nil {
		t.Error("the source resumed while the target runs on its image")
	}
}

// An agent that restarts while a move's target waits for its activation
// takes it back as incoming and complete; the activation runs it.
func TestTakeBackIncoming(t *testing.T) {
	needQEMU(t)
	n1, n2 := twoNodes(t)
	spec := driver.VMSpec{ID: web, Epoch: 1, VCPUs: 1, MemoryBytes: 64 << 20}
	if err := n1.d.Start(context.Background(), spec, lease()); err != nil {
		t.Fatal(err)
	}
	target := spec
	target.Epoch = 2
	if _, err, inErr := move(t, n1, n2, target, 1, driver.MigrateOptions{}, nil); err != nil || inErr != nil {
		t.Fatalf("MigrateOut: %v; MigrateIn: %v", err, inErr)
	}
	for _, n := range []node{n1, n2} {
		if err := n.d.Close(); err != nil {
			t.Fatal(err)
		}
	}
	shared := n1.d.cfg.SharedDir
	n1.d = newTestDriver(t, "n1", n1.run, shared)
	n2.d = newTestDriver(t, "n2", n2.run, shared)
	mustStatus(t, n1, web, driver.StatePaused, false)
	mustStatus(t, n2, web, driver.StateIncoming, true)
	if err := n2.d.Activate(web, 2, lease()); err != nil {
		t.Fatal(err)
	}
	if !qemuRuns(t, n2, web) {
		t.Error("the target taken back does not run once activated")
	}
}

// An agent that restarts while its VM moves out finds the move over, the
// target having given up with the stream, or cancels it: the guest runs
// on at the source.
func TestTakeBackMidMove(t *testing.T) {
	needQEMU(t)
	n1, n2 := twoNodes(t)
	spec := driver.VMSpec{ID: web, Epoch: 1, VCPUs: 1, MemoryBytes: 64 << 20}
	if err := n1.d.Start(context.Background(), spec, lease()); err != nil {
		t.Fatal(err)
	}
	target := spec
	target.Epoch = 2
	// The agent goes away once the pre-copy runs, slowly enough to be
	// caught at it.
	_, err, inErr := move(t, n1, n2, target, 1, driver.MigrateOptions{BandwidthLimit: 64 << 10}, func(p driver.Progress) {
		if p.Phase == "precopy" {
			n1.d.Close()
		}
	})
	if err == nil || inErr == nil {
		t.Fatalf("a move whose source's driver closed: MigrateOut %v, MigrateIn %v", err, inErr)
	}
	n1.d = newTestDriver(t, "n1", n1.run, n1.d.cfg.SharedDir)
	mustStatus(t, n1, web, driver.StateRunning, false)
	if !qemuRuns(t, n1, web) {
		t.Error("the source taken back does not run")
	}
	v := n1.d.lookup(web)
	_, mon, _, _ := v.snapshot()
	if info, err := mon.QueryMigrate(t.Context()); err != nil || migrating(info.Status) {
		t.Errorf("the orphan migration is %q (%v)", info.Status, err)
	}
}

// A quick move: the state saved to shared storage, restored on the other
// node, and the guest carries on there once activated.
func TestQuickMigration(t *testing.T) {
	needQEMU(t)
	n1, n2 := twoNodes(t)
	spec := movingGuest(t, 1)
	src := bootGuest(t, n1, spec)
	dst := n2.console(t, web)
	const path = ".moves/op1/vm.state"

	var reports []driver.Progress
	stopped := time.Now()
	res, err := n1.d.SaveState(t.Context(), web, 1, path, func(p driver.Progress) { reports = append(reports, p) })
	if err != nil {
		t.Fatal(err)
	}
	mustStatus(t, n1, web, driver.StatePaused, false)
	if err := src.Poll(); err != nil {
		t.Fatal(err)
	}
	last := src.Last()
	file := filepath.Join(n1.d.cfg.SharedDir, path)
	st, err := os.Stat(file)
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() != stateHeaderSize+res.BytesSent || res.Checksum == 0 || res.Rounds != 1 {
		t.Errorf("result %+v, state file of %d bytes", res, st.Size())
	}
	if len(reports) < 2 || reports[0].Phase != "save" || reports[len(reports)-1].BytesSent != res.BytesSent {
		t.Errorf("reports %+v", reports)
	}
	if leftovers, _ := filepath.Glob(filepath.Join(filepath.Dir(file), ".*")); len(leftovers) != 0 {
		t.Errorf("temporary files left: %v", leftovers)
	}

	target := spec
	target.Epoch = 2
	start := time.Now()
	if err := n2.d.RestoreState(t.Context(), target, path); err != nil {
		t.Fatal(err)
	}
	restored := time.Since(start)
	mustStatus(t, n2, web, driver.StateIncoming, true)
	if err := dst.Poll(); err != nil {
		t.Fatal(err)
	}
	if dst.Ticks() != 0 || qemuRuns(t, n2, web) {
		t.Fatalf("the restored VM ran before Activate: %d ticks", dst.Ticks())
	}
	if err := n2.d.Activate(web, 2, lease()); err != nil {
		t.Fatal(err)
	}
	first := tickAfter(t, dst, 0, 10*time.Second)
	if first.N <= last.N || first.N > last.N+20 {
		t.Errorf("the restored guest's first tick is %d, the saved one's last %d", first.N, last.N)
	}
	dst.Wait(t, 10*time.Second, "the restored guest to tick on", func(s *testguest.Serial) bool { return s.Last().N >= first.N+20 })
	if err := dst.Increasing(); err != nil {
		t.Error(err)
	}
	if err := src.Poll(); err != nil {
		t.Fatal(err)
	}
	if src.Last().N != last.N {
		t.Errorf("the saved source ticked on: %d after %d", src.Last().N, last.N)
	}
	if err := n1.d.Kill(web, 1); err != nil {
		t.Fatal(err)
	}
	t.Logf("saved %d MiB in %s, restored in %s; from SaveState's call to the first tick on the target %s", res.BytesSent>>20,
		res.Paused.Round(time.Millisecond), restored.Round(time.Millisecond), first.Seen.Sub(stopped).Round(time.Millisecond))

	// Refused, and nothing started: a saved VM that is not older, a file
	// changed after it was saved.
	other := node{run: runDir(t)}
	other.d = newTestDriver(t, "n3", other.run, n1.d.cfg.SharedDir)
	if err := other.d.RestoreState(t.Context(), spec, path); !errors.Is(err, driver.ErrStaleEpoch) {
		t.Errorf("RestoreState at the saved epoch: %v, want ErrStaleEpoch", err)
	}
	const bad = ".moves/op1/bad.state"
	corrupt(t, file, filepath.Join(n1.d.cfg.SharedDir, bad))
	if err := other.d.RestoreState(t.Context(), target, bad); err == nil || !strings.Contains(err.Error(), "checksum") {
		t.Errorf("RestoreState of a changed file: %v, want a checksum error", err)
	}
	if l := other.d.List(); len(l) != 0 {
		t.Errorf("refused restores left %+v", l)
	}
}

// corrupt copies a state file to to with one byte of its stream changed.
func corrupt(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0x55
	if err := os.WriteFile(to, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// A save that fails resumes the guest.
func TestSaveStateFailsAndResumes(t *testing.T) {
	needQEMU(t)
	n1, _ := twoNodes(t)
	if err := n1.d.Start(context.Background(), driver.VMSpec{ID: web, Epoch: 1, VCPUs: 1, MemoryBytes: 64 << 20}, lease()); err != nil {
		t.Fatal(err)
	}
	// A file where the state's directory should be.
	if err := os.WriteFile(filepath.Join(n1.d.cfg.SharedDir, "blocked"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := n1.d.SaveState(t.Context(), web, 1, "blocked/vm.state", nil); err == nil {
		t.Fatal("SaveState into a file succeeded")
	}
	mustStatus(t, n1, web, driver.StateRunning, false)
	if !qemuRuns(t, n1, web) {
		t.Error("the guest stays stopped after a failed save")
	}
	// Cancelled once the guest is stopped: resumed all the same.
	ctx, cancel := context.WithCancel(t.Context())
	_, err := n1.d.SaveState(ctx, web, 1, "vm.state", func(driver.Progress) { cancel() })
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("a cancelled save: %v", err)
	}
	mustStatus(t, n1, web, driver.StateRunning, false)
	if !qemuRuns(t, n1, web) {
		t.Error("the guest stays stopped after a cancelled save")
	}
}
