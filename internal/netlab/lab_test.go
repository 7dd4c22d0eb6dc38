//go:build linux

package netlab

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/haven-ha/haven/internal/netlab/wan"
	"github.com/haven-ha/haven/internal/waitfor"
)

// requireEnv, when set to "1", turns "not root" from a skip into a failure,
// as in integration/lab, so that CI can never pass by skipping the lab.
const requireEnv = "HAVEN_REQUIRE_LAB"

// newLab is New for a test: skipped without root (failed with
// HAVEN_REQUIRE_LAB=1), closed by t.Cleanup also when the test fails, its
// delay program this test binary (see TestMain).
func newLab(tb testing.TB) *Lab {
	tb.Helper()
	if euid := os.Geteuid(); euid != 0 {
		if os.Getenv(requireEnv) == "1" {
			tb.Fatalf("network lab needs root (euid %d); %s=1 forbids skipping", euid, requireEnv)
		}
		tb.Skipf("network lab needs root (euid %d); set %s=1 to fail instead of skipping", euid, requireEnv)
	}
	exe, err := os.Executable()
	if err != nil {
		tb.Fatal(err)
	}
	l, err := New(Options{Delayer: []string{exe, "lab-wan"}, Logf: tb.Logf})
	if err != nil {
		tb.Fatalf("network lab: %v", err)
	}
	tb.Cleanup(func() {
		if err := l.Close(); err != nil {
			tb.Errorf("network lab cleanup: %v", err)
		}
	})
	return l
}

func must(tb testing.TB, err error) {
	tb.Helper()
	if err != nil {
		tb.Fatalf("network lab: %v", err)
	}
}

func newSite(tb testing.TB, l *Lab, name string) *Site {
	tb.Helper()
	s, err := l.Site(name)
	must(tb, err)
	return s
}

func newHost(tb testing.TB, s *Site, name string) *Host {
	tb.Helper()
	h, err := s.Host(name)
	must(tb, err)
	return h
}

// The test binary doubles as the programs run inside the namespaces: with
// helperEnv set, TestMain runs a helper instead of the tests; and as the
// delay program, `TESTBINARY lab-wan --netns ...` (wan.Command, as haven
// lab-wan runs it). Re-executing the binary needs no toolchain and no extra
// files at test time.
const (
	helperEnv = "HAVEN_LAB_HELPER"
	echoPort  = "7777"

	// A blocked probe must time out; 300 ms is ample on one machine where
	// a reachable round trip takes well under 1 ms. A probe expected to
	// succeed gets far longer so a loaded machine doesn't make it flaky;
	// it returns as soon as the echo comes back.
	blockedWait   = 300 * time.Millisecond
	reachableWait = 3 * time.Second
)

func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "lab-wan" {
		os.Exit(wan.Command("lab-wan", os.Args[2:], os.Stdout, os.Stderr))
	}
	switch mode := os.Getenv(helperEnv); mode {
	case "":
		os.Exit(m.Run())
	case "echo":
		os.Exit(echoServer())
	case "probe":
		os.Exit(probe(os.Args[1:]))
	default:
		fmt.Fprintf(os.Stderr, "unknown %s=%q\n", helperEnv, mode)
		os.Exit(2)
	}
}

// echoServer echoes TCP streams and UDP datagrams on echoPort on every
// address of its namespace, prints "ready" once both sockets listen, and
// exits when its stdin closes (the test is done or died).
func echoServer() int {
	ln, err := net.Listen("tcp", ":"+echoPort)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	pc, err := net.ListenPacket("udp", ":"+echoPort)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	go func() {
		buf := make([]byte, 2048)
		for {
			n, addr, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], addr)
		}
	}()
	fmt.Println("ready")
	io.Copy(io.Discard, os.Stdin)
	return 0
}

// probe checks each target "PROTO,HOST:PORT,TIMEOUT" concurrently and prints
// one line per target, in order: "ok" or "fail: REASON".
func probe(targets []string) int {
	results := make([]error, len(targets))
	var wg sync.WaitGroup
	for i, spec := range targets {
		wg.Go(func() {
			f := strings.Split(spec, ",")
			if len(f) != 3 {
				results[i] = fmt.Errorf("bad target %q", spec)
				return
			}
			d, err := time.ParseDuration(f[2])
			if err != nil {
				results[i] = err
				return
			}
			results[i] = echoOnce(f[0], f[1], d)
		})
	}
	wg.Wait()
	for _, err := range results {
		if err != nil {
			fmt.Println("fail:", err)
		} else {
			fmt.Println("ok")
		}
	}
	return 0
}

// echoOnce sends a token and waits for it to come back within d. UDP resends
// every 50 ms, since one lost datagram must not read as a partition.
func echoOnce(proto, addr string, d time.Duration) error {
	deadline := time.Now().Add(d)
	token := fmt.Sprintf("haven-lab-%d-%d", os.Getpid(), time.Now().UnixNano())
	c, err := net.DialTimeout(proto, addr, d)
	if err != nil {
		return err
	}
	defer c.Close()
	buf := make([]byte, len(token))
	if proto == "tcp" {
		c.SetDeadline(deadline)
		if _, err := io.WriteString(c, token); err != nil {
			return err
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			return err
		}
	} else {
		for {
			if _, err := io.WriteString(c, token); err != nil {
				return err
			}
			next := time.Now().Add(50 * time.Millisecond)
			if next.After(deadline) {
				next = deadline
			}
			c.SetReadDeadline(next)
			n, err := c.Read(buf)
			if err == nil && n == len(token) {
				break
			}
			var ne net.Error
			if err != nil && !(errors.As(err, &ne) && ne.Timeout()) {
				return err
			}
			if !time.Now().Before(deadline) {
				return err
			}
		}
	}
	if string(buf) != token {
		return fmt.Errorf("echo %q, want %q", buf, token)
	}
	return nil
}

func helperCommand(t *testing.T, h *Host, mode string, args ...string) *exec.Cmd {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := h.Command(exe, args...)
	cmd.Env = append(os.Environ(), helperEnv+"="+mode)
	return cmd
}

// startEcho runs an echo server in h and waits until it listens.
func startEcho(t *testing.T, h *Host) {
	t.Helper()
	cmd := helperCommand(t, h, "echo")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Registered after New's cleanup, so it runs before the lab goes.
	t.Cleanup(func() {
		stdin.Close()
		cmd.Process.Kill()
		cmd.Wait()
	})
	ready := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		ready <- line
	}()
	select {
	case line := <-ready:
		if strings.TrimSpace(line) != "ready" {
			t.Fatalf("echo server in %s: got %q", h.Name(), line)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("echo server in %s not ready after 10s", h.Name())
	}
}

// cut is the set of unordered host pairs expected to be partitioned.
type cut map[[2]*Host]bool

func cutOf(pairs ...[2]*Host) cut {
	c := cut{}
	for _, p := range pairs {
		c[p] = true
		c[[2]*Host{p[1], p[0]}] = true
	}
	return c
}

// expect probes every ordered pair of hosts over TCP and UDP, plus loopback
// and the host's own address in each namespace (never cut), and reports
// every result that differs from c. One probe process per source host, all
// running at once, so a step costs about one blockedWait.
func expect(t *testing.T, step string, hosts []*Host, c cut) {
	t.Helper()
	type probeT struct {
		desc    string
		blocked bool
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []string
	for _, from := range hosts {
		var specs []string
		var probes []probeT
		add := func(desc, addr string, blocked bool) {
			wait := reachableWait
			if blocked {
				wait = blockedWait
			}
			for _, proto := range []string{"tcp", "udp"} {
				specs = append(specs, fmt.Sprintf("%s,%s,%s", proto, net.JoinHostPort(addr, echoPort), wait))
				probes = append(probes, probeT{fmt.Sprintf("%s %s", desc, proto), blocked})
			}
		}
		add(from.Name()+"→lo", "127.0.0.1", false)
		add(from.Name()+"→self", from.IP(), false)
		for _, to := range hosts {
			if to != from {
				add(from.Name()+"→"+to.Name(), to.IP(), c[[2]*Host{from, to}])
			}
		}
		wg.Go(func() {
			out, err := helperCommand(t, from, "probe", specs...).CombinedOutput()
			mu.Lock()
			defer mu.Unlock()
			lines := strings.Split(strings.TrimSpace(string(out)), "\n")
			if err != nil || len(lines) != len(probes) {
				errs = append(errs, fmt.Sprintf("probe from %s: %v: %s", from.Name(), err, out))
				return
			}
			for i, p := range probes {
				gotOK := lines[i] == "ok"
				switch {
				case p.blocked && gotOK:
					errs = append(errs, p.desc+": reachable, want blocked")
				case !p.blocked && !gotOK:
					errs = append(errs, p.desc+": want reachable, "+lines[i])
				}
			}
		})
	}
	wg.Wait()
	for _, e := range errs {
		t.Errorf("%s: %s", step, e)
	}
}

func wantRules(t *testing.T, l *Lab, step string, n int) {
	t.Helper()
	rules, err := l.Rules()
	if err != nil {
		t.Fatal(err)
	}
	if len(rules) != n {
		t.Errorf("%s: %d rules in %s, want %d:\n%s", step, len(rules), chain, n, strings.Join(rules, "\n"))
	}
}

// timed runs a fault operation and logs how long applying it took.
func timed(t *testing.T, what string, f func() error) {
	t.Helper()
	start := time.Now()
	must(t, f())
	d := time.Since(start)
	t.Logf("%s applied in %v", what, d.Round(100*time.Microsecond))
	if d > 2*time.Second {
		t.Errorf("%s took %v; rule changes should take milliseconds", what, d)
	}
}

func TestLab(t *testing.T) {
	// Registered first, so it runs last: after the lab's own cleanup.
	var prefix string
	t.Cleanup(func() {
		if prefix != "" {
			assertGone(t, prefix)
		}
	})
	start := time.Now()
	l := newLab(t)
	prefix = l.Prefix()
	a, b := newSite(t, l, "a"), newSite(t, l, "b")
	a1, a2, b1 := newHost(t, a, "a1"), newHost(t, a, "a2"), newHost(t, b, "b1")
	t.Logf("lab %s with 2 sites and 3 hosts built in %v", prefix, time.Since(start).Round(time.Millisecond))
	if a1.IP() != "10.77.1.2" || a2.IP() != "10.77.1.3" || b1.IP() != "10.77.2.2" {
		t.Fatalf("addresses a1=%s a2=%s b1=%s, want 10.77.1.2 10.77.1.3 10.77.2.2", a1.IP(), a2.IP(), b1.IP())
	}
	hosts := []*Host{a1, a2, b1}
	for _, h := range hosts {
		startEcho(t, h)
	}
	all := func(h ...*Host) []*Host { return h }

	expect(t, "initial", hosts, cutOf())
	wantRules(t, l, "initial", 0)

	timed(t, "Partition(a1|b1)", func() error { return l.Partition(all(a1), all(b1)) })
	expect(t, "Partition(a1|b1)", hosts, cutOf([2]*Host{a1, b1}))
	must(t, l.Partition(all(b1), all(a1))) // same cut, other order: no new rules
	wantRules(t, l, "Partition(a1|b1) twice", 2)

	timed(t, "HealAll", l.HealAll)
	expect(t, "HealAll after a1|b1", hosts, cutOf())
	wantRules(t, l, "HealAll", 0)

	timed(t, "Partition(a1|a2)", func() error { return l.Partition(all(a1), all(a2)) })
	expect(t, "Partition(a1|a2) same site", hosts, cutOf([2]*Host{a1, a2}))

	timed(t, "Heal(a2|a1)", func() error { return l.Heal(all(a2), all(a1)) })
	expect(t, "Heal(a2|a1)", hosts, cutOf())
	wantRules(t, l, "Heal(a2|a1)", 0)

	timed(t, "Isolate(a1)", func() error { return l.Isolate(a1) })
	expect(t, "Isolate(a1)", hosts, cutOf([2]*Host{a1, a2}, [2]*Host{a1, b1}))
	if got, want := l.Cuts(), [][2]*Host{{a1, a2}, {a1, b1}}; !slices.Equal(got, want) {
		t.Errorf("Cuts() after Isolate(a1) = %v, want %v", got, want)
	}
	must(t, l.HealAll())

	timed(t, "IsolateAll", l.IsolateAll)
	expect(t, "IsolateAll", hosts, cutOf([2]*Host{a1, a2}, [2]*Host{a1, b1}, [2]*Host{a2, b1}))
	wantRules(t, l, "IsolateAll", 6)

	// Healing one pair out of IsolateAll leaves the rest cut.
	must(t, l.Heal(all(a2), all(b1)))
	expect(t, "IsolateAll then Heal(a2|b1)", hosts, cutOf([2]*Host{a1, a2}, [2]*Host{a1, b1}))

	timed(t, "HealAll", l.HealAll)
	expect(t, "HealAll after IsolateAll", hosts, cutOf())
	wantRules(t, l, "HealAll after IsolateAll", 0)
}

// assertGone checks that nothing named with prefix is left: no namespace,
// no root-namespace link, no owner record, no rule in the root namespace
// (the lab's rules only ever live in its router namespace).
func assertGone(t *testing.T, prefix string) {
	t.Helper()
	nss, err := labNamespaces()
	if err != nil {
		t.Error(err)
	}
	for _, ns := range nss {
		if strings.HasPrefix(ns, prefix+"-") {
			t.Errorf("namespace %s left after cleanup", ns)
		}
	}
	tl, err := findTools()
	if err != nil {
		t.Fatal(err)
	}
	links, err := labRootLinks(tl)
	if err != nil {
		t.Error(err)
	}
	for _, link := range links {
		if strings.HasPrefix(link, prefix+"-") {
			t.Errorf("link %s left after cleanup", link)
		}
	}
	if _, err := os.Stat(ownerDir + "/" + prefix); err == nil {
		t.Errorf("owner record %s/%s left after cleanup", ownerDir, prefix)
	}
	out, err := run(nil, tl.iptables+"-save")
	if err != nil {
		t.Error(err)
	}
	if strings.Contains(out, chain) || strings.Contains(out, "10.77.") {
		t.Errorf("lab rules in the root namespace:\n%s", out)
	}
}

// TestReapLeftovers fakes a crashed run (a dead owner, namespaces with a
// process inside, a root-namespace link, a delay program) and checks that
// the next New removes all of it while leaving a live lab alone.
func TestReapLeftovers(t *testing.T) {
	live := newLab(t)
	newHost(t, newSite(t, live, "s"), "h")

	tl, err := findTools()
	if err != nil {
		t.Fatal(err)
	}
	// The fake starts out owned by this live process, so that the reaper
	// of a test binary running at the same time leaves it alone until it
	// is complete; then its record is pointed at a dead pid.
	crashed, err := claimPrefix()
	if err != nil {
		t.Fatal(err)
	}
	record := ownerDir + "/" + crashed
	nsR, nsH, veth := crashed+"-r", crashed+"-h-x", crashed+"-v1"
	t.Cleanup(func() { // only matters if the reaper failed
		removeNamespaces(tl, []string{nsR, nsH})
		run(nil, tl.ip, "link", "del", veth)
		os.Remove(record)
	})
	for _, args := range [][]string{
		{"netns", "add", nsR},
		{"netns", "add", nsH},
		{"link", "add", veth, "type", "veth", "peer", "name", crashed + "-v2"},
	} {
		if _, err := run(nil, tl.ip, args...); err != nil {
			t.Fatal(err)
		}
	}
	// A delay program of the crashed run: in the root namespace, found
	// only by its --netns.
	delayer := exec.Command(live.opts.Delayer[0], append(live.opts.Delayer[1:], "--netns", nsR, "--link", "queue=1,delay=1ms")...)
	delayerOut, err := delayer.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := delayer.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { delayer.Process.Kill() })
	if line, _ := bufio.NewReader(delayerOut).ReadString('\n'); line != "ready\n" {
		t.Fatalf("delay program in %s: %q", nsR, line)
	}
	delayerExited := make(chan error, 1)
	go func() {
		io.Copy(io.Discard, delayerOut)
		delayerExited <- delayer.Wait()
	}()
	sleeper := exec.Command(tl.ip, "netns", "exec", nsH, "sleep", "60")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- sleeper.Wait() }()
	waitInNamespace(t, sleeper.Process.Pid, nsH)

	// A pid that has exited: its start time can't match any live process.
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(record, fmt.Appendf(nil, "%d 1\n", dead.Process.Pid), 0o644); err != nil {
		t.Fatal(err)
	}

	next := newLab(t)

	for _, ns := range []string{nsR, nsH} {
		if _, err := os.Stat(netnsDir + "/" + ns); err == nil {
			t.Errorf("leftover namespace %s not reaped", ns)
		}
	}
	links, err := labRootLinks(tl)
	if err != nil {
		t.Fatal(err)
	}
	for _, link := range links {
		if strings.HasPrefix(link, crashed) {
			t.Errorf("leftover link %s not reaped", link)
		}
	}
	if _, err := os.Stat(record); err == nil {
		t.Errorf("owner record of the crashed run not removed")
	}
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		t.Errorf("process inside a leftover namespace not killed")
		sleeper.Process.Kill()
	}
	select {
	case <-delayerExited:
	case <-time.After(5 * time.Second):
		t.Errorf("leftover delay program not killed")
	}
	for _, ns := range []string{live.router, live.Hosts()[0].Namespace(), next.router} {
		if _, err := os.Stat(netnsDir + "/" + ns); err != nil {
			t.Errorf("namespace %s of a live lab: %v", ns, err)
		}
	}
}

// waitInNamespace waits until process pid has entered namespace ns.
func waitInNamespace(t *testing.T, pid int, ns string) {
	t.Helper()
	var want syscall.Stat_t
	if err := syscall.Stat(netnsDir+"/"+ns, &want); err != nil {
		t.Fatal(err)
	}
	waitfor.Cond(t, 5*time.Second, fmt.Sprintf("process %d to enter namespace %s", pid, ns), func() bool {
		var st syscall.Stat_t
		return syscall.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &st) == nil && st.Dev == want.Dev && st.Ino == want.Ino
	})
}
