package lab

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The lab itself (namespaces, rules, WAN links, the reaper) is tested in
// internal/netlab; these tests cover what the wrapper adds: the gate, the
// havenwan build and its reaper, and that havenwan is the delay program.

func TestMain(m *testing.M) {
	code := m.Run()
	removeBuild()
	os.Exit(code)
}

// TestHavenwan puts a WAN of a fixed 20 ms each way between two sites
// through the wrapper, so through a havenwan build, and times UDP round
// trips across it before and after ClearWAN.
func TestHavenwan(t *testing.T) {
	l := New(t)
	a, b := l.Site("a"), l.Site("b")
	a1, b1 := a.Host("a1"), b.Host("b1")
	pc, err := b1.ListenPacket("udp", net.JoinHostPort(b1.IP(), "0"))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { pc.Close(); <-done }) // before the lab goes
	go func() {
		defer close(done)
		buf := make([]byte, 64)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], from)
		}
	}()
	c, err := a1.DialContext(t.Context(), "udp", pc.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// rtt is the fastest of 5 round trips: a late scheduler only adds.
	rtt := func() time.Duration {
		t.Helper()
		best := time.Hour
		buf := make([]byte, 64)
		for i := range 5 {
			start := time.Now()
			if _, err := fmt.Fprintf(c, "probe %d", i); err != nil {
				t.Fatal(err)
			}
			c.SetReadDeadline(start.Add(2 * time.Second))
			if _, err := c.Read(buf); err != nil {
				t.Fatalf("probe %d: %v", i, err)
			}
			best = min(best, time.Since(start))
		}
		return best
	}
	const delay = 20 * time.Millisecond
	l.SetWAN(a, b, WAN{Delay: delay})
	if pids := l.l.DelayerPids(); len(pids) != 1 {
		t.Errorf("delay programs running: %v, want one", pids)
	} else if argv0, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pids[0])); err != nil || filepath.Base(argv0) != "havenwan" {
		t.Errorf("delay program is %q (%v), want havenwan", argv0, err)
	}
	if d := rtt(); d < 2*delay-time.Millisecond {
		t.Errorf("rtt across the WAN %v, want at least %v", d, 2*delay)
	}
	l.ClearWAN(a, b)
	if d := rtt(); d > delay {
		t.Errorf("rtt after ClearWAN %v: still delayed", d)
	}
	if pids := l.l.DelayerPids(); len(pids) != 0 {
		t.Errorf("delay programs after ClearWAN: %v", pids)
	}
}

// TestReapBuilds: the havenwan build of a test binary that is gone is
// removed by the next New; this binary's own stays.
func TestReapBuilds(t *testing.T) {
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	// A pid that has exited: its start time can't match any live process.
	deadBuild := filepath.Join(os.TempDir(), fmt.Sprintf("%s%d-1-x", binDirPrefix, dead.Process.Pid))
	if err := os.MkdirAll(deadBuild, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(deadBuild) })
	New(t)
	if _, err := os.Stat(deadBuild); err == nil {
		t.Errorf("havenwan build of a dead test binary not removed")
	}
	bin, err := havenwan()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(bin); err != nil {
		t.Errorf("this test binary's havenwan build: %v", err)
	}
}

// fakeTB records Skip and Fatal instead of stopping the goroutine.
type fakeTB struct {
	testing.TB
	skipped, failed string
}

func (f *fakeTB) Helper()             {}
func (f *fakeTB) Skip(args ...any)    { f.skipped = fmt.Sprint(args...) }
func (f *fakeTB) Fatal(args ...any)   { f.failed = fmt.Sprint(args...) }
func (f *fakeTB) Logf(string, ...any) {}

func TestGate(t *testing.T) {
	for _, tc := range []struct {
		name            string
		euid            int
		require         bool
		ok, skip, fatal bool
	}{
		{"root", 0, false, true, false, false},
		{"root required", 0, true, true, false, false},
		{"user skips", 1000, false, false, true, false},
		{"user required fails", 1000, true, false, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeTB{}
			ok := gate(f, tc.euid, tc.require)
			if ok != tc.ok || (f.skipped != "") != tc.skip || (f.failed != "") != tc.fatal {
				t.Errorf("gate(%d, %v) = %v, skipped %q, failed %q", tc.euid, tc.require, ok, f.skipped, f.failed)
			}
			for _, msg := range []string{f.skipped, f.failed} {
				if msg != "" && !strings.HasPrefix(msg, "network lab needs root: ") {
					t.Errorf("message %q", msg)
				}
			}
		})
	}
}
