package sim

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/haven-ha/haven/driver"
	"github.com/haven-ha/haven/internal/waitfor"
)

// clock is a hand-moved clock for the lease gate. The guest loop still
// wakes on a real ticker; only what "now" is comes from here, so a test
// decides exactly when a lease ends.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// Set moves the clock to t (only forwards, like a real one).
func (c *clock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t.After(c.t) {
		c.t = t
	}
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// testGuest is a fast guest that dirties a quarter of testSpec's memory.
var testGuest = Guest{WorkingSetBytes: 256 << 10, DirtyRateBytesPerSec: 4 << 20, Tick: 2 * time.Millisecond}

// newDriver returns a driver for node on dir running testGuest, closed
// when the test ends.
func newDriver(t testing.TB, node, dir string, clk *clock) *Driver {
	t.Helper()
	return newGuestDriver(t, node, dir, clk, testGuest)
}

func newGuestDriver(t testing.TB, node, dir string, clk *clock, guest Guest) *Driver {
	t.Helper()
	cfg := Config{
		Node: node, SharedDir: dir, Guest: guest,
		Logger: slog.New(slog.NewTextHandler(testWriter{t}, nil)).With("node", node),
	}
	if clk != nil {
		cfg.Now = clk.Now
	}
	d := New(cfg)
	t.Cleanup(func() { d.Close() })
	return d
}

var web = driver.VMID{Group: "web", Resource: "vm"}

// testSpec is a small VM with one disk named after its ID.
func testSpec(id driver.VMID, epoch uint64) driver.VMSpec {
	return driver.VMSpec{
		ID: id, Epoch: epoch, VCPUs: 1,
		MemoryBytes: 1 << 20,
		Disks:       []driver.DiskSpec{{Name: "root", Path: filepath.Join("disks", id.Group, id.Resource+".img")}},
	}
}

func diskPath(dir string, spec driver.VMSpec) string {
	return filepath.Join(dir, spec.Disks[0].Path)
}

func start(t testing.TB, d *Driver, spec driver.VMSpec, leaseEnd time.Time) {
	t.Helper()
	if err := d.Start(context.Background(), spec, leaseEnd); err != nil {
		t.Fatalf("Start(%s, epoch %d): %v", spec.ID, spec.Epoch, err)
	}
}

// waitFor polls cond until it holds, failing the test after 10 s.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	waitfor.Cond(t, 10*time.Second, what, cond)
}

func status(t testing.TB, d *Driver, id driver.VMID) driver.Status {
	t.Helper()
	st, err := d.Status(id)
	if err != nil {
		t.Fatalf("Status(%s): %v", id, err)
	}
	return st
}

// waitCounter waits until the guest counter of id reaches at least n.
func waitCounter(t testing.TB, d *Driver, id driver.VMID, n uint64) driver.Status {
	t.Helper()
	var st driver.Status
	waitFor(t, fmt.Sprintf("%s counter >= %d", id, n), func() bool {
		st = status(t, d, id)
		return st.Counter >= n
	})
	return st
}

// waitWakeups waits until id's guest loop has woken n more times, so a
// test that asserts "nothing happened" has given the guest its chances.
func waitWakeups(t testing.TB, d *Driver, id driver.VMID, n uint64) {
	t.Helper()
	v := d.lookup(id)
	read := func() uint64 {
		v.mu.Lock()
		defer v.mu.Unlock()
		return v.wakeups
	}
	target := read() + n
	waitFor(t, fmt.Sprintf("%d wakeups of %s", n, id), func() bool { return read() >= target })
}

func checksum(t testing.TB, d *Driver, id driver.VMID) uint64 {
	t.Helper()
	v := d.lookup(id)
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.mem.checksum()
}

func readDisk(t testing.TB, path string) (Header, []Record) {
	t.Helper()
	h, recs, err := ReadDisk(path)
	if err != nil {
		t.Fatalf("ReadDisk: %v", err)
	}
	return h, recs
}

func readExec(t testing.TB, dir string, id driver.VMID) []Record {
	t.Helper()
	recs, err := ReadExecLog(ExecLogPath(dir, id))
	if err != nil {
		t.Fatalf("ReadExecLog: %v", err)
	}
	return recs
}

// increasing fails unless counters grow strictly along recs: the guest
// never repeats or goes back, whichever node wrote them.
func increasing(t testing.TB, what string, recs []Record) {
	t.Helper()
	for i := 1; i < len(recs); i++ {
		if recs[i].Counter <= recs[i-1].Counter {
			t.Fatalf("%s: record %d has counter %d after %d (%+v after %+v)", what, i, recs[i].Counter, recs[i-1].Counter, recs[i], recs[i-1])
		}
	}
}

// noTracking skips a test of tracked writes where the kernel cannot track
// them, except in CI (CI set), whose kernel can: there a skip would hide
// the loss of the sums a pause relies on.
func noTracking(t *testing.T, err error) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf("CI's kernel must track writes (Linux >= 6.7, userfaultfd): %v", err)
	}
	t.Skipf("no asynchronous userfaultfd write-protection here: %v", err)
}
