package sim

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/haven-ha/haven/driver"
)

// A post-copy move is refused before anything is sent: the sim has no
// post-copy (it does not report it), and the VM runs on at the source.
func TestMigrationPostcopyUnsupported(t *testing.T) {
	dir, clk := t.TempDir(), newClock()
	n1, n2 := newDriver(t, "n1", dir, clk), newDriver(t, "n2", dir, clk)
	if n1.Capabilities().Postcopy {
		t.Fatal("the sim reports post-copy")
	}
	start(t, n1, bigSpec(web, 1), clk.Now().Add(time.Minute))
	a, b := connPair(t, "pipe")
	mig := migrate(context.Background(), t, n1, n2, 1, bigSpec(web, 2), a, b, driver.MigrateOptions{Postcopy: true}, nil)
	if !errors.Is(mig.outErr, driver.ErrUnsupported) || mig.inErr == nil {
		t.Fatalf("MigrateOut: %v, want ErrUnsupported; MigrateIn: %v, want an error", mig.outErr, mig.inErr)
	}
	if st := status(t, n1, web); st.State != driver.StateRunning || st.Epoch != 1 {
		t.Errorf("the source after the refusal: %+v, want running at epoch 1", st)
	}
	if _, err := n2.Status(web); !errors.Is(err, driver.ErrNotFound) {
		t.Errorf("the target after the refusal: %v, want no vm", err)
	}
}

// busyGuest dirties a quarter of bigSpec's memory fast enough that a
// pre-copy needs several rounds.
var busyGuest = Guest{WorkingSetBytes: 4 << 20, DirtyRateBytesPerSec: 64 << 20, Tick: 2 * time.Millisecond}

// bigSpec is testSpec with 16 MiB of memory.
func bigSpec(id driver.VMID, epoch uint64) driver.VMSpec {
	spec := testSpec(id, epoch)
	spec.MemoryBytes = 16 << 20
	return spec
}

// A move with a guest that dirties memory throughout: the target's memory
// is the source's at the pause, bit for bit; the source never ticks after
// the pause nor the target before Activate; the target's first tick is
// the source's last plus one; and Activate's claims fence the source.
func TestLiveMigration(t *testing.T) {
	for _, kind := range connKinds {
		for _, tc := range []struct {
			name  string
			guest Guest
			opts  driver.MigrateOptions
		}{
			{"idle guest", Guest{Tick: 2 * time.Millisecond}, driver.MigrateOptions{}},
			{"dirtying guest", busyGuest, driver.MigrateOptions{DowntimeTarget: time.Millisecond}},
			// One stream whatever is asked: the option changes nothing.
			{"channels ignored", busyGuest, driver.MigrateOptions{DowntimeTarget: time.Millisecond, Channels: 4}},
		} {
			t.Run(kind+"/"+tc.name, func(t *testing.T) {
				testLiveMigration(t, kind, tc.guest, tc.opts)
			})
		}
	}
}

func testLiveMigration(t *testing.T, kind string, guest Guest, opts driver.MigrateOptions) {
	dir, clk := t.TempDir(), newClock()
	n1, n2 := newGuestDriver(t, "n1", dir, clk, guest), newGuestDriver(t, "n2", dir, clk, guest)
	lease := clk.Now().Add(time.Minute)
	start(t, n1, bigSpec(web, 1), lease)
	fill(t, n1, web)
	waitCounter(t, n1, web, 5)

	a, b := connPair(t, kind)
	mig := migrate(context.Background(), t, n1, n2, 1, bigSpec(web, 2), a, b, opts, nil)
	if mig.outErr != nil || mig.inErr != nil {
		t.Fatalf("MigrateOut: %v; MigrateIn: %v", mig.outErr, mig.inErr)
	}
	t.Logf("%+v", mig.res)
	src, dst := status(t, n1, web), status(t, n2, web)
	if src.State != driver.StatePaused || dst.State != driver.StateIncoming || dst.Epoch != 2 || dst.Counter != src.Counter || !dst.Complete || src.Complete {
		t.Fatalf("after the move: source %+v, target %+v; want paused and incoming (complete) at epoch 2, same counter", src, dst)
	}
	srcMem, srcSum := memoryOf(t, n1, web)
	dstMem, dstSum := memoryOf(t, n2, web)
	if !bytes.Equal(srcMem, dstMem) {
		t.Fatal("the target's memory differs from the source's at the pause")
	}
	if srcSum != mig.res.Checksum || dstSum != mig.res.Checksum {
		t.Errorf("checksums: source %#x, target %#x, result %#x", srcSum, dstSum, mig.res.Checksum)
	}
	for _, n := range []*Driver{n1, n2} {
		if sum, err := n.MemoryChecksum(web); err != nil || sum != mig.res.Checksum {
			t.Errorf("%s: MemoryChecksum %#x, %v; want the result's %#x", n.cfg.Node, sum, err, mig.res.Checksum)
		}
	}
	checkProgress(t, mig)

	// Both stand still: the source has its chances to tick and takes none.
	waitWakeups(t, n1, web, 5)
	exec := readExec(t, dir, web)
	if by1 := recordsBy(exec, "n1"); len(by1) == 0 || by1[len(by1)-1].Counter != src.Counter {
		t.Fatalf("source's last record %+v, want counter %d (its count at the pause)", by1[len(by1)-1], src.Counter)
	}
	if by2 := recordsBy(exec, "n2"); len(by2) != 0 {
		t.Fatalf("the target ran before Activate: %+v", by2)
	}
	if st := status(t, n1, web); st.State != driver.StatePaused || st.Counter != src.Counter {
		t.Fatalf("source after the move: %+v", st)
	}

	if err := n2.Activate(web, 2, lease); err != nil {
		t.Fatalf("Activate: %v", err)
	}
	waitCounter(t, n2, web, src.Counter+3)
	exec = readExec(t, dir, web)
	increasing(t, "exec log", exec)
	if by2 := recordsBy(exec, "n2"); by2[0].Counter != src.Counter+1 || by2[0].Epoch != 2 {
		t.Errorf("target's first record %+v, want counter %d at epoch 2", by2[0], src.Counter+1)
	}
	h, disk := readDisk(t, diskPath(dir, bigSpec(web, 1)))
	if h.Epoch != 2 || h.Node != "n2" {
		t.Errorf("disk header %+v, want claimed by n2 at epoch 2", h)
	}
	increasing(t, "disk", disk)

	// A source resumed by mistake now is fenced at its first write.
	if err := AppendRecord(diskPath(dir, bigSpec(web, 1)), Record{Node: "n1", Group: web.Group, VM: web.Resource, Epoch: 1}); !errors.Is(err, driver.ErrStaleEpoch) {
		t.Errorf("a write at epoch 1 after Activate: %v, want ErrStaleEpoch", err)
	}
	if err := n1.Resume(web, 1, lease); err != nil {
		t.Fatalf("Resume: %v", err)
	}
	var st driver.Status
	waitFor(t, "the resumed source to be fenced", func() bool {
		st = status(t, n1, web)
		return st.State == driver.StateCrashed
	})
	if st.Reason != "fenced: disk claimed by epoch 2" {
		t.Errorf("resumed source: %+v, want fenced by epoch 2", st)
	}
}

// checkProgress checks the reports of a successful move: the setup, with
// nothing sent, pre-copy rounds counted from 1, bytes only growing, then
// the switchover's two, at the pause and once everything went: the last
// counts every byte.
func checkProgress(t *testing.T, mig migration) {
	t.Helper()
	ps := mig.progress
	if len(ps) < 4 {
		t.Fatalf("progress %+v, want the setup, pre-copy rounds, then two switchover reports", ps)
	}
	if p := ps[0]; p.Phase != "setup" || p.Round != 0 || p.MemoryBytes != 16<<20 || p.RemainingBytes != 16<<20 {
		t.Errorf("first report %+v, want the setup of 16 MiB, all of it left", p)
	}
	ps = ps[1:]
	n := len(ps)
	if ps[n-2].Phase != "switchover" || ps[n-1].Phase != "switchover" || ps[n-2].Round != mig.res.Rounds || ps[n-1].Round != mig.res.Rounds {
		t.Fatalf("progress %+v, want the setup, pre-copy rounds, then two switchover reports as round %d", mig.progress, mig.res.Rounds)
	}
	for i, p := range ps[:n-2] {
		if p.Phase != "precopy" || p.Round != i+1 || p.MemoryBytes != 16<<20 || p.RateBytesPerSec <= 0 {
			t.Errorf("report %d: %+v", i, p)
		}
	}
	for i, p := range ps[:n-1] {
		if next := ps[i+1]; next.BytesSent < p.BytesSent {
			t.Errorf("bytes sent went back: %+v after %+v", next, p)
		}
	}
	if last := ps[n-1]; last.BytesSent != mig.res.BytesSent || last.RemainingBytes != 0 || last.ExpectedDowntime != 0 {
		t.Errorf("result sent %d bytes; the last report %+v, want as many and nothing left", mig.res.BytesSent, last)
	}
}

// A move whose target was never activated rolls back with Resume: the
// source runs on from where it paused.
func TestResumeAfterMigration(t *testing.T) {
	dir, clk := t.TempDir(), newClock()
	n1, n2 := newGuestDriver(t, "n1", dir, clk, busyGuest), newGuestDriver(t, "n2", dir, clk, busyGuest)
	lease := clk.Now().Add(time.Minute)
	start(t, n1, bigSpec(web, 1), lease)
	waitCounter(t, n1, web, 3)
	a, b := connPair(t, "tcp")
	mig := migrate(context.Background(), t, n1, n2, 1, bigSpec(web, 2), a, b, driver.MigrateOptions{}, nil)
	if mig.outErr != nil || mig.inErr != nil {
		t.Fatalf("MigrateOut: %v; MigrateIn: %v", mig.outErr, mig.inErr)
	}
	paused := status(t, n1, web).Counter
	if err := n2.Kill(web, 2); err != nil {
		t.Fatal(err)
	}
	if err := n1.Resume(web, 1, lease); err != nil {
		t.Fatalf("Resume: %v", err)
	}
	waitCounter(t, n1, web, paused+3)
	exec := readExec(t, dir, web)
	increasing(t, "exec log", exec)
	if len(recordsBy(exec, "n2")) != 0 {
		t.Error("the killed target ran")
	}
}

// A link that breaks at any stage leaves the source running (or frozen,
// if its lease ran out meanwhile) and the target without the VM.
func TestMigrationBrokenLink(t *testing.T) {
	for _, kind := range connKinds {
		for _, tc := range []struct {
			name string
			// cut says whether to break the source's end (the target's
			// with target set) at a write of p, after sent bytes and the
			// source's last report; expire moves the clock past the lease
			// before the break.
			cut    func(sent int64, last *driver.Progress, p []byte) bool
			target bool
			expire bool
		}{
			{name: "during round 1", cut: func(sent int64, _ *driver.Progress, _ []byte) bool { return sent > 1<<20 }},
			// Round 1 (16 MiB) leaves dirty pages, so round 2 always comes.
			{name: "mid pre-copy", cut: func(_ int64, last *driver.Progress, _ []byte) bool {
				return last != nil && last.Phase == "precopy" && last.Round == 1
			}},
			{name: "after the pause", cut: func(_ int64, last *driver.Progress, _ []byte) bool { return last != nil && last.Phase == "switchover" }},
			{name: "after the pause, lease ended", expire: true, cut: func(_ int64, last *driver.Progress, _ []byte) bool {
				return last != nil && last.Phase == "switchover"
			}},
			{name: "the target's last ack", target: true, cut: func(_ int64, _ *driver.Progress, p []byte) bool {
				return len(p) >= 9 && p[0] == frameAck && bytes.Equal(p[5:9], le32(ackDone))
			}},
		} {
			t.Run(kind+"/"+tc.name, func(t *testing.T) {
				dir, clk := t.TempDir(), newClock()
				n1, n2 := newGuestDriver(t, "n1", dir, clk, busyGuest), newGuestDriver(t, "n2", dir, clk, busyGuest)
				lease := clk.Now().Add(time.Minute)
				start(t, n1, bigSpec(web, 1), lease)
				fill(t, n1, web) // round 1 is 16 MiB
				waitCounter(t, n1, web, 3)
				a, b := connPair(t, kind)
				// last is the source's: its reports come on the goroutine
				// that writes its end.
				var last *driver.Progress
				br := &breaker{cut: func(sent int64, p []byte) bool {
					seen := last
					if tc.target {
						seen = nil
					}
					if !tc.cut(sent, seen, p) {
						return false
					}
					if tc.expire {
						clk.Set(lease)
					}
					return true
				}}
				if tc.target {
					br.Conn, b = b, br
				} else {
					br.Conn, a = a, br
				}
				// A target of 1 ns keeps the pre-copy going while the
				// guest dirties anything.
				opts := driver.MigrateOptions{DowntimeTarget: time.Nanosecond}
				mig := migrate(context.Background(), t, n1, n2, 1, bigSpec(web, 2), a, b, opts, func(p driver.Progress) { last = &p })
				var gu *driver.GiveUpError
				if mig.outErr == nil || mig.inErr == nil || errors.As(mig.outErr, &gu) {
					t.Fatalf("MigrateOut: %v; MigrateIn: %v; want both to fail on the broken link", mig.outErr, mig.inErr)
				}
				t.Logf("source: %v\ntarget: %v", mig.outErr, mig.inErr)
				if _, err := n2.Status(web); !errors.Is(err, driver.ErrNotFound) {
					t.Errorf("target still has the VM: %v", err)
				}
				if tc.expire {
					if st := status(t, n1, web); st.State != driver.StateFrozen {
						t.Errorf("source %s, want frozen by its lease", st.State)
					}
					return
				}
				st := status(t, n1, web)
				if st.State != driver.StateRunning {
					t.Fatalf("source %s, want running", st.State)
				}
				waitCounter(t, n1, web, st.Counter+3)
			})
		}
	}
}

// breaker is a conn that breaks, closing itself, at the first write cut
// approves, given the bytes written before it.
type breaker struct {
	net.Conn
	cut  func(sent int64, p []byte) bool
	sent int64
}

func (b *breaker) Write(p []byte) (int, error) {
	if b.cut(b.sent, p) {
		b.Conn.Close()
		return 0, errors.New("link cut by the test")
	}
	n, err := b.Conn.Write(p)
	b.sent += int64(n)
	return n, err
}

// A memory that ends in a partial page moves whole: the last page is sent,
// copied and hashed at its own length.
func TestMigrationOddMemory(t *testing.T) {
	guest := Guest{WorkingSetBytes: 1 << 20, DirtyRateBytesPerSec: 64 << 20, Tick: 2 * time.Millisecond}
	dir, clk := t.TempDir(), newClock()
	n1, n2 := newGuestDriver(t, "n1", dir, clk, guest), newGuestDriver(t, "n2", dir, clk, guest)
	odd := func(epoch uint64) driver.VMSpec {
		s := testSpec(web, epoch)
		s.MemoryBytes = 3*PageSize + 100
		return s
	}
	lease := clk.Now().Add(time.Minute)
	start(t, n1, odd(1), lease)
	fill(t, n1, web)
	waitCounter(t, n1, web, 3)
	a, b := connPair(t, "pipe")
	mig := migrate(context.Background(), t, n1, n2, 1, odd(2), a, b, driver.MigrateOptions{}, nil)
	if mig.outErr != nil || mig.inErr != nil {
		t.Fatalf("MigrateOut: %v; MigrateIn: %v", mig.outErr, mig.inErr)
	}
	srcMem, _ := memoryOf(t, n1, web)
	dstMem, sum := memoryOf(t, n2, web)
	if len(dstMem) != 3*PageSize+100 || !bytes.Equal(srcMem, dstMem) || sum != mig.res.Checksum {
		t.Errorf("target holds %d bytes, equal to the source's: %v, checksum %#x, want %#x", len(dstMem), bytes.Equal(srcMem, dstMem), sum, mig.res.Checksum)
	}
}

// A guest write the dirty log misses is caught by the checksum, whether
// the source keeps its page sums by the kernel's record of writes or
// hashes all of its memory in the pause: the target refuses the copy and
// the source runs on. (Sums kept by the dirty log would agree with the
// stale copy and let it through.)
func TestChecksumCatchesAMissedWrite(t *testing.T) {
	for _, tracked := range []bool{true, false} {
		t.Run(map[bool]string{true: "sums kept", false: "all hashed in the pause"}[tracked], func(t *testing.T) {
			if !tracked {
				orig := trackGuestWrites
				trackGuestWrites = func([]byte) (*writeTracker, error) { return nil, errors.ErrUnsupported }
				t.Cleanup(func() { trackGuestWrites = orig })
			} else {
				m, err := newMemory(PageSize)
				if err != nil {
					t.Fatal(err)
				}
				w, err := trackWrites(m.buf)
				if err != nil {
					m.free()
					noTracking(t, err)
				}
				w.close()
				m.free()
			}
			dir, clk := t.TempDir(), newClock()
			guest := Guest{Tick: 2 * time.Millisecond}
			n1, n2 := newGuestDriver(t, "n1", dir, clk, guest), newGuestDriver(t, "n2", dir, clk, guest)
			lease := clk.Now().Add(time.Minute)
			start(t, n1, bigSpec(web, 1), lease)
			fill(t, n1, web)
			waitCounter(t, n1, web, 3)
			missed := false
			a, b := connPair(t, "tcp")
			mig := migrate(context.Background(), t, n1, n2, 1, bigSpec(web, 2), a, b, driver.MigrateOptions{}, func(p driver.Progress) {
				if p.Phase != "precopy" || missed {
					return
				}
				// After round 1 sent page 3: a write behind the log's back.
				v := n1.lookup(web)
				v.mu.Lock()
				v.mem.buf[3*PageSize+100] ^= 0xff
				v.mu.Unlock()
				missed = true
			})
			if !missed {
				t.Fatal("the move reported no pre-copy round")
			}
			if mig.inErr == nil || !strings.Contains(mig.inErr.Error(), "checksum") || mig.outErr == nil {
				t.Fatalf("MigrateIn: %v; MigrateOut: %v; want the target to refuse the copy by its checksum", mig.inErr, mig.outErr)
			}
			waitCounter(t, n1, web, status(t, n1, web).Counter+3) // the source runs on
		})
	}
}

// A move that ended ready leaves the source's write tracking on, since
// lifting it stalls the whole process while the paused guest waits for
// the commit; the guest's end lifts it: the resume of a rollback, beside
// the running guest, or the kill after a commit. Either way none is left
// open, and a move after a rollback tracks writes again.
func TestTrackingLiftedAtTheGuestsEnd(t *testing.T) {
	probe, err := newSourceSums(&memory{buf: make([]byte, PageSize)})
	if err != nil {
		noTracking(t, err)
	}
	probe.close()
	dir, clk := t.TempDir(), newClock()
	n1, n2 := newGuestDriver(t, "n1", dir, clk, busyGuest), newGuestDriver(t, "n2", dir, clk, busyGuest)
	lease := clk.Now().Add(time.Minute)
	start(t, n1, bigSpec(web, 1), lease)
	waitCounter(t, n1, web, 3)
	moveOut := func(epoch uint64) {
		t.Helper()
		a, b := connPair(t, "tcp")
		if mig := migrate(context.Background(), t, n1, n2, 1, bigSpec(web, epoch), a, b, driver.MigrateOptions{}, nil); mig.outErr != nil || mig.inErr != nil {
			t.Fatalf("MigrateOut: %v; MigrateIn: %v", mig.outErr, mig.inErr)
		}
		if n := userfaultfds(t); n != 1 {
			t.Fatalf("%d write trackers open after a move that ended ready, want its 1 kept", n)
		}
	}
	moveOut(2)
	if err := n2.Kill(web, 2); err != nil {
		t.Fatal(err)
	}
	if err := n1.Resume(web, 1, lease); err != nil {
		t.Fatalf("Resume: %v", err)
	}
	waitFor(t, "the resume to lift the tracking", func() bool { return userfaultfds(t) == 0 })
	moveOut(3)
	if err := n1.Kill(web, 1); err != nil {
		t.Fatal(err)
	}
	if n := userfaultfds(t); n != 0 {
		t.Fatalf("%d write trackers open after the source's kill", n)
	}
}

// userfaultfds counts this process's open userfaultfd descriptors.
func userfaultfds(t *testing.T) int {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc/self/fd: %v", err)
	}
	n := 0
	for _, fd := range fds {
		if l, _ := os.Readlink("/proc/self/fd/" + fd.Name()); l == "anon_inode:[userfaultfd]" {
			n++
		}
	}
	return n
}
