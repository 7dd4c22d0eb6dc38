// Package lab is the integration tests' hold on the network lab of
// internal/netlab: network namespaces, one router namespace with a bridge
// per site, partitions as iptables rules, WAN links with delay, jitter and
// loss between sites. Its calls fail the test (t.Fatal) where netlab's
// return errors, and everything is removed by t.Cleanup, also when the test
// fails or panics. See netlab for the layout and how faults are made.
//
// The delay program of its WAN links is havenwan (cmd/havenwan, built once
// per test binary: quicker than building haven, whose `haven lab-wan` runs
// the same wan.Command).
//
// The lab needs root; see New for what happens without it.
package lab

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/haven-ha/haven/internal/netlab"
)

const (
	// GlobalPrefix starts the name of every namespace and link any lab
	// creates; New reaps leftovers carrying it whose owner is gone.
	GlobalPrefix = netlab.GlobalPrefix
	// RequireEnv, when set to "1", turns "not root" from a skip into a
	// failure, so that CI can never pass by skipping the lab.
	RequireEnv = "HAVEN_REQUIRE_LAB"

	havenwanPkg = "github.com/haven-ha/haven/integration/lab/cmd/havenwan"
	// binDirPrefix starts the name of the temporary directory (under
	// os.TempDir) that holds this process's havenwan build, followed by
	// the pid and start time of the process, so the reaper can tell a dead
	// run's directory from a live one's.
	binDirPrefix = "haven-lab-bin-"
)

// WAN is what the link between two sites does to every packet crossing it,
// in each direction (netlab.WAN).
type WAN = netlab.WAN

// Lab is one test's network. Its methods fail the test (t.Fatal) on error,
// so call them from the test's goroutine; they are safe to call
// concurrently with each other.
type Lab struct {
	t testing.TB
	l *netlab.Lab

	mu    sync.Mutex
	hosts []*Host
}

// Site is a routed subnet 10.77.S.0/24: a bridge in the router namespace.
type Site struct {
	lab *Lab
	s   *netlab.Site
}

// Host is a network namespace with one interface on its site's subnet.
type Host struct {
	site *Site
	h    *netlab.Host
}

// New creates a lab for one test: a router namespace and nothing else yet.
// Everything is removed by t.Cleanup, also when the test fails or panics.
// New first removes leftovers of earlier runs whose process is gone (a test
// binary killed by a timeout never runs its cleanups).
//
// Without root, New skips the test, or fails it when HAVEN_REQUIRE_LAB=1.
// As root, missing commands fail the test: the suite must not silently lose
// its network tests on a machine that could run them.
func New(t testing.TB) *Lab {
	t.Helper()
	if !gate(t, os.Geteuid(), os.Getenv(RequireEnv) == "1") {
		return nil
	}
	reapBuilds()
	bin, err := havenwan()
	if err != nil {
		t.Fatalf("network lab: %v", err)
	}
	l, err := netlab.New(netlab.Options{Delayer: []string{bin}, Logf: t.Logf})
	if err != nil {
		t.Fatalf("network lab: %v", err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("network lab cleanup: %v", err)
		}
	})
	return &Lab{t: t, l: l}
}

// RequireRoot is New's gate alone, for a test that builds its lab by other
// means (haven dev --sites): it skips the test without root, or fails it
// when HAVEN_REQUIRE_LAB=1.
func RequireRoot(t testing.TB) {
	t.Helper()
	gate(t, os.Geteuid(), os.Getenv(RequireEnv) == "1")
}

// gate decides whether the lab may run with this effective uid; it reports
// false after skipping or failing tb.
func gate(tb testing.TB, euid int, require bool) bool {
	tb.Helper()
	if euid == 0 {
		return true
	}
	reason := fmt.Sprintf("network lab needs root: it creates network namespaces, veths, bridges and iptables rules (euid %d)", euid)
	if require {
		tb.Fatal(reason + "; " + RequireEnv + "=1 forbids skipping")
	} else {
		tb.Skip(reason + "; set " + RequireEnv + "=1 to fail instead of skipping")
	}
	return false
}

func (l *Lab) check(err error) {
	l.t.Helper()
	if err != nil {
		l.t.Fatalf("network lab: %v", err)
	}
}

// Prefix is this run's name prefix: every namespace and link of the lab
// starts with it followed by a dash.
func (l *Lab) Prefix() string { return l.l.Prefix() }

// Router is the router namespace, which holds the fault rules.
func (l *Lab) Router() string { return l.l.Router() }

// DelayerCPU is the CPU time the WAN's delay programs have used so far.
func (l *Lab) DelayerCPU() time.Duration {
	l.t.Helper()
	d, err := l.l.DelayerCPU()
	l.check(err)
	return d
}

// Hosts returns every host added so far, in creation order.
func (l *Lab) Hosts() []*Host {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]*Host(nil), l.hosts...)
}

// Site adds a routed subnet 10.77.S.0/24 (S counts sites from 1) whose
// router address 10.77.S.1 sits on a new bridge in the router namespace.
func (l *Lab) Site(name string) *Site {
	l.t.Helper()
	s, err := l.l.Site(name)
	l.check(err)
	return &Site{lab: l, s: s}
}

// Name is the name given to Lab.Site.
func (s *Site) Name() string { return s.s.Name() }

// Host adds a host namespace on the site: eth0 with 10.77.S.H/24 (H from 2),
// default route via 10.77.S.1, lo up.
func (s *Site) Host(name string) *Host {
	s.lab.t.Helper()
	nh, err := s.s.Host(name)
	s.lab.check(err)
	h := &Host{site: s, h: nh}
	s.lab.mu.Lock()
	s.lab.hosts = append(s.lab.hosts, h)
	s.lab.mu.Unlock()
	return h
}

// Name is the name given to Site.Host.
func (h *Host) Name() string { return h.h.Name() }

// Site is the site the host was added to.
func (h *Host) Site() *Site { return h.site }

// IP is the host's IPv4 address, without mask.
func (h *Host) IP() string { return h.h.IP() }

// Namespace is the name of the host's network namespace (for `ip netns`).
func (h *Host) Namespace() string { return h.h.Namespace() }

// Command returns a command that runs argv inside the host's namespace; the
// caller starts and waits for it. Pdeathsig SIGKILL makes it die with the
// test binary even when cleanups never run (see netlab.Host.Command).
// Whatever still runs in the lab's namespaces is killed by the lab's
// cleanup.
func (h *Host) Command(name string, args ...string) *exec.Cmd { return h.h.Command(name, args...) }

// DialContext opens a connection from inside the host's namespace, as a
// program running on the host would, so its packets take the host's path
// through the lab (partitions and WAN links included).
func (h *Host) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	return h.h.DialContext(ctx, network, addr)
}

// ListenPacket opens a packet socket (e.g. "udp", "10.77.1.2:9000") inside
// the host's namespace; the caller serves it from any goroutine.
func (h *Host) ListenPacket(network, addr string) (net.PacketConn, error) {
	return h.h.ListenPacket(network, addr)
}

// DialContext opens a TCP connection from inside the router namespace, which
// routes to every site, and is never cut by a partition nor delayed by a
// WAN. Use it as a gRPC context dialer.
func (l *Lab) DialContext(ctx context.Context, addr string) (net.Conn, error) {
	return l.l.DialContext(ctx, addr)
}

func hostsOf(hs []*Host) []*netlab.Host {
	out := make([]*netlab.Host, len(hs))
	for i, h := range hs {
		out[i] = h.h
	}
	return out
}

// Partition drops all traffic between every host of a and every host of b,
// in both directions. Hosts within a (or within b) can still talk.
func (l *Lab) Partition(a, b []*Host) {
	l.t.Helper()
	l.check(l.l.Partition(hostsOf(a), hostsOf(b)))
}

// Heal undoes Partition(a, b), and any other cut between a host of a and a
// host of b (an Isolate or IsolateAll included).
func (l *Lab) Heal(a, b []*Host) {
	l.t.Helper()
	l.check(l.l.Heal(hostsOf(a), hostsOf(b)))
}

// Isolate cuts h off from every other host that exists now (hosts added
// later are not cut from it).
func (l *Lab) Isolate(h *Host) {
	l.t.Helper()
	l.check(l.l.Isolate(h.h))
}

// IsolateAll cuts every host that exists now off from every other one: the
// "network blip everywhere" case.
func (l *Lab) IsolateAll() {
	l.t.Helper()
	l.check(l.l.IsolateAll())
}

// HealAll removes every partition. WAN links (SetWAN) stay: they are the
// network's shape, not a fault; ClearWAN removes them.
func (l *Lab) HealAll() {
	l.t.Helper()
	l.check(l.l.HealAll())
}

// SetWAN makes the link between sites a and b (either order) delay and drop
// packets as w says, in both directions, replacing what SetWAN set before.
// The delay is in force when SetWAN returns. SetWAN(a, b, WAN{}) is
// ClearWAN(a, b). Everything is undone by the lab's cleanup.
func (l *Lab) SetWAN(a, b *Site, w WAN) {
	l.t.Helper()
	l.check(l.l.SetWAN(a.s, b.s, w))
}

// ClearWAN removes the delay and loss between sites a and b; held packets
// are let go, not dropped. Clearing a link without a WAN is a no-op.
func (l *Lab) ClearWAN(a, b *Site) {
	l.t.Helper()
	l.check(l.l.ClearWAN(a.s, b.s))
}

// havenwanBuild is the havenwan binary, built once per test binary.
var havenwanBuild struct {
	once      sync.Once
	dir, path string
	err       error
}

// havenwan builds the havenwan command (once per process) into a directory
// named after this process, and returns its path. The go command's cache
// makes a build after the first one on a machine take about a second. The
// directory stays until the reaper of a later run finds its process gone
// (removeBuild removes it earlier).
func havenwan() (string, error) {
	b := &havenwanBuild
	b.once.Do(func() {
		var start uint64
		if start, b.err = netlab.StartTime(os.Getpid()); b.err != nil {
			return
		}
		if b.dir, b.err = os.MkdirTemp("", fmt.Sprintf("%s%d-%d-", binDirPrefix, os.Getpid(), start)); b.err != nil {
			return
		}
		b.path = filepath.Join(b.dir, "havenwan")
		cmd := exec.Command("go", "build", "-o", b.path, havenwanPkg)
		if out, err := cmd.CombinedOutput(); err != nil {
			b.err = fmt.Errorf("go build %s: %v\n%s", havenwanPkg, err, out)
		}
	})
	return b.path, b.err
}

// removeBuild deletes the havenwan binary this process built, if any; a
// TestMain calls it after m.Run. A test binary that never calls it leaves
// the directory to the reaper of the next lab.
func removeBuild() {
	if havenwanBuild.dir != "" {
		os.RemoveAll(havenwanBuild.dir)
	}
}

// reapBuilds removes the havenwan builds of test binaries that are gone.
func reapBuilds() {
	entries, err := os.ReadDir(os.TempDir())
	if err != nil {
		return
	}
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), binDirPrefix)
		if !ok || !e.IsDir() {
			continue
		}
		var pid int
		var start uint64
		if _, err := fmt.Sscanf(rest, "%d-%d-", &pid, &start); err != nil {
			continue
		}
		if got, err := netlab.StartTime(pid); err != nil || got != start {
			os.RemoveAll(filepath.Join(os.TempDir(), e.Name()))
		}
	}
}
