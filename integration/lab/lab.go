// Package lab builds a small routed network out of Linux network namespaces
// for haven's integration tests, and cuts it into partitions on demand.
//
// Layout of one lab (P is the per-run prefix, e.g. "hvk3x9q"):
//
//	P-r        router namespace: one bridge P-bS per site (10.77.S.1/24),
//	           ip_forward=1, and the iptables chain HAVEN_LAB hooked into
//	           FORWARD that holds every fault rule
//	P-h-NAME   one namespace per host: eth0 = 10.77.S.H/24, default route
//	           via 10.77.S.1; the other end of its veth (P-vN) is a port of
//	           its site's bridge in the router namespace
//	havenwan   one process per WAN link with a delay (SetWAN), in the root
//	           namespace, bound to an NFQUEUE queue of P-r (--netns P-r)
//
// Every link is created directly inside a lab namespace, never in the root
// namespace, so deleting the namespaces removes everything but the havenwan
// processes, which the cleanup stops and the reaper finds by their --netns.
// Only addresses inside these namespaces, or loopback, are ever contacted.
//
// The lab needs root; see New for what happens without it.
package lab

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/haven-ha/haven/internal/netlab/wan"
)

const (
	// GlobalPrefix starts the name of every namespace and link any lab
	// creates; New reaps leftovers carrying it whose owner is gone.
	GlobalPrefix = "hv"
	// RequireEnv, when set to "1", turns "not root" from a skip into a
	// failure, so that CI can never pass by skipping the lab.
	RequireEnv = "HAVEN_REQUIRE_LAB"

	// ownerDir holds one file per live lab, named after its prefix, that
	// records the creating process so a later run can tell leftovers of a
	// crashed run from a lab another test binary is using right now.
	ownerDir = "/run/haven-lab"
	// netnsDir is where `ip netns add` mounts named namespaces.
	netnsDir = "/run/netns"
	// chain is the custom iptables chain in the router namespace; all fault
	// rules live here so that replacing its content heals everything.
	chain = "HAVEN_LAB"

	maxSites        = 254
	maxHostsPerSite = 253 // .2 to .254; .1 is the router
)

// prefixRE matches names made by some lab: the global prefix, 5 random
// characters, then a dash. The first 7 characters are the run's prefix.
var prefixRE = regexp.MustCompile(`^` + GlobalPrefix + `[a-z0-9]{5}-`)

var nameRE = regexp.MustCompile(`^[A-Za-z0-9_]{1,32}$`)

// Lab is one test's network: a router namespace and the sites and hosts added
// to it. Its methods fail the test (t.Fatal) on error, so call them from the
// test's goroutine; they are safe to call concurrently with each other.
type Lab struct {
	t      testing.TB
	prefix string
	router string // router namespace name
	tools  tools

	mu      sync.Mutex
	sites   []*Site
	hosts   []*Host
	names   map[string]bool
	blocked map[pair]bool       // directed: packets from src to dst are dropped
	wans    map[[2]int]*wanLink // by the two sites' indexes, lower first
	// lastQueue is the NFQUEUE queue number given out last; numbers are
	// never reused within a lab, so a new delayer binds while the old one
	// still holds packets.
	lastQueue uint16
	delayers  map[delayer]bool // running, stopped by destroy at the latest
	// newDelayer, when set, starts delayers instead of havenwan.
	newDelayer func(name string, k wan.Link) (delayer, error)
}

// Site is a routed subnet 10.77.S.0/24: a bridge in the router namespace.
type Site struct {
	lab    *Lab
	name   string
	index  int // S, from 1
	bridge string
	hosts  []*Host
}

// Host is a network namespace with one interface on its site's subnet.
type Host struct {
	site *Site
	name string
	ns   string
	ip   string
}

// tools are the absolute paths of the commands the lab runs, looked up once
// so a missing one fails New with a clear message instead of a test midway.
type tools struct {
	ip, iptables, iptablesRestore, sysctl string
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
	tl, err := findTools()
	if err != nil {
		t.Fatalf("network lab: %v", err)
	}
	l := &Lab{
		t:        t,
		tools:    tl,
		names:    map[string]bool{},
		blocked:  map[pair]bool{},
		wans:     map[[2]int]*wanLink{},
		delayers: map[delayer]bool{},
	}
	if err := reapLeftovers(tl); err != nil {
		// Leftovers use other prefixes, so they cannot clash with this
		// lab; report them and go on.
		t.Logf("network lab: removing leftovers of earlier runs: %v", err)
	}
	if l.prefix, err = claimPrefix(); err != nil {
		t.Fatalf("network lab: %v", err)
	}
	l.router = l.prefix + "-r"
	// Registered before anything exists so that a failure halfway through
	// New still removes what was made.
	t.Cleanup(l.destroy)

	l.ip("netns", "add", l.router)
	l.ipBatch(l.router, "link set lo up")
	// bridge-nf-call-iptables=1 on purpose (NETWORK.md suggests 0): frames
	// between two hosts of one site only cross the bridge, and this makes
	// them traverse FORWARD too, so one chain here cuts same-site and
	// cross-site pairs alike, matched on host addresses. The alternative,
	// DROP rules inside each host's namespace, would make a cut peer's
	// sends fail at once with EPERM, which no real partition does.
	l.run(nil, tl.ip, "netns", "exec", l.router, tl.sysctl, "-q", "-w",
		"net.ipv4.ip_forward=1", "net.bridge.bridge-nf-call-iptables=1")
	l.restore(fmt.Sprintf("*filter\n:%s - [0:0]\n-I FORWARD -j %s\nCOMMIT\n", chain, chain))
	return l
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

func findTools() (tools, error) {
	var tl tools
	var missing []string
	for _, c := range []struct {
		dst  *string
		name string
	}{{&tl.ip, "ip"}, {&tl.iptables, "iptables"}, {&tl.iptablesRestore, "iptables-restore"}, {&tl.sysctl, "sysctl"}} {
		p, err := exec.LookPath(c.name)
		if err != nil {
			missing = append(missing, c.name)
			continue
		}
		*c.dst = p
	}
	if len(missing) > 0 {
		return tl, fmt.Errorf("running as root but %s not found in PATH (Debian: apt-get install -y iproute2 iptables procps)", strings.Join(missing, ", "))
	}
	return tl, nil
}

// claimPrefix picks a random unused prefix and records this process as its
// owner. The record appears atomically (link of a complete file) so a reaper
// never reads a half-written one.
func claimPrefix() (string, error) {
	if err := os.MkdirAll(ownerDir, 0o755); err != nil {
		return "", err
	}
	start, err := startTime(os.Getpid())
	if err != nil {
		return "", err
	}
	const chars = "abcdefghijklmnopqrstuvwxyz0123456789"
	for range 100 {
		b := []byte(GlobalPrefix + "xxxxx")
		for i := len(GlobalPrefix); i < len(b); i++ {
			b[i] = chars[rand.IntN(len(chars))]
		}
		prefix := string(b)
		if _, err := os.Stat(netnsDir + "/" + prefix + "-r"); err == nil {
			continue // a leftover we could not reap
		}
		tmp := fmt.Sprintf("%s/.tmp-%d-%s", ownerDir, os.Getpid(), prefix)
		if err := os.WriteFile(tmp, fmt.Appendf(nil, "%d %d\n", os.Getpid(), start), 0o644); err != nil {
			return "", err
		}
		err := os.Link(tmp, ownerDir+"/"+prefix)
		os.Remove(tmp)
		if err == nil {
			return prefix, nil
		}
		if !errors.Is(err, os.ErrExist) {
			return "", err
		}
	}
	return "", errors.New("no free lab prefix after 100 tries")
}

// Prefix is this run's name prefix: every namespace and link of the lab
// starts with it followed by a dash.
func (l *Lab) Prefix() string { return l.prefix }

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
	l.mu.Lock()
	defer l.mu.Unlock()
	l.checkName("site", name)
	if len(l.sites) >= maxSites {
		l.t.Fatalf("network lab: more than %d sites", maxSites)
	}
	s := &Site{lab: l, name: name, index: len(l.sites) + 1}
	s.bridge = fmt.Sprintf("%s-b%d", l.prefix, s.index)
	// A fixed MAC: a bridge without one takes the lowest MAC of its ports
	// and changes it as hosts join, leaving hosts with a stale ARP entry
	// for their router (cross-site traffic then stalls for seconds).
	mac := fmt.Sprintf("02:68:76:00:%02x:01", s.index)
	l.ipBatch(l.router,
		fmt.Sprintf("link add %s address %s type bridge", s.bridge, mac),
		fmt.Sprintf("addr add 10.77.%d.1/24 dev %s", s.index, s.bridge),
		fmt.Sprintf("link set %s up", s.bridge))
	l.sites = append(l.sites, s)
	return s
}

// Name is the name given to Lab.Site.
func (s *Site) Name() string { return s.name }

// Host adds a host namespace on the site: eth0 with 10.77.S.H/24 (H from 2),
// default route via 10.77.S.1, lo up.
func (s *Site) Host(name string) *Host {
	l := s.lab
	l.t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.checkName("host", name)
	if len(s.hosts) >= maxHostsPerSite {
		l.t.Fatalf("network lab: more than %d hosts on site %s", maxHostsPerSite, s.name)
	}
	h := &Host{
		site: s,
		name: name,
		ns:   l.prefix + "-h-" + name,
		ip:   fmt.Sprintf("10.77.%d.%d", s.index, len(s.hosts)+2),
	}
	veth := fmt.Sprintf("%s-v%d", l.prefix, len(l.hosts)+1) // <= 15 chars up to v99999
	l.ip("netns", "add", h.ns)
	// Both ends are created straight inside their namespaces, so nothing
	// of the lab ever appears in the root namespace.
	l.ip("link", "add", "eth0", "netns", h.ns, "type", "veth", "peer", "name", veth, "netns", l.router)
	l.ipBatch(l.router, fmt.Sprintf("link set %s master %s up", veth, s.bridge))
	l.ipBatch(h.ns,
		"link set lo up",
		// No IPv6 link-local address: partitions cut IPv4 only, so no
		// IPv6 path may exist between hosts, and no DAD or router
		// solicitations add noise.
		"link set eth0 addrgenmode none",
		fmt.Sprintf("addr add %s/24 dev eth0", h.ip),
		"link set eth0 up",
		fmt.Sprintf("route add default via 10.77.%d.1", s.index))
	s.hosts = append(s.hosts, h)
	l.hosts = append(l.hosts, h)
	return h
}

// Name is the name given to Site.Host.
func (h *Host) Name() string { return h.name }

// Site is the site the host was added to.
func (h *Host) Site() *Site { return h.site }

// IP is the host's IPv4 address, without mask.
func (h *Host) IP() string { return h.ip }

// Namespace is the name of the host's network namespace (for `ip netns`).
func (h *Host) Namespace() string { return h.ns }

// Command returns a command that runs argv inside the host's namespace; the
// caller starts and waits for it. Pdeathsig SIGKILL makes it die with the
// test binary even when cleanups never run. (Go delivers Pdeathsig when the
// OS thread that started the child exits, which only happens when a
// goroutine exits while locked to its thread: don't start these from such a
// goroutine.) Whatever still runs in the lab's namespaces is killed by the
// lab's cleanup.
func (h *Host) Command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(h.site.lab.tools.ip, append([]string{"netns", "exec", h.ns, name}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd
}

func (l *Lab) checkName(kind, name string) {
	l.t.Helper()
	if !nameRE.MatchString(name) {
		l.t.Fatalf("network lab: %s name %q: want 1-32 of [A-Za-z0-9_]", kind, name)
	}
	key := kind + "/" + name
	if l.names[key] {
		l.t.Fatalf("network lab: duplicate %s name %q", kind, name)
	}
	l.names[key] = true
}

// destroy stops the lab's delayers, kills whatever runs in its namespaces,
// deletes them (which deletes every link and rule with them) and drops the
// owner record last, so a concurrent reaper never sees a namespace of a live
// lab without owner.
func (l *Lab) destroy() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for k, link := range l.wans {
		delete(l.wans, k)
		if link.d != nil {
			l.stopDelayer(link.name(), link.d)
		}
	}
	for d := range l.delayers { // started by a SetWAN that failed midway
		l.stopDelayer("(unlinked)", d)
	}
	var nss []string
	for _, h := range l.hosts {
		nss = append(nss, h.ns)
	}
	nss = append(nss, l.router)
	if err := removeNamespaces(l.tools, nss); err != nil {
		l.t.Errorf("network lab cleanup: %v", err)
		return // keep the owner record: the next run's reaper retries
	}
	if err := os.Remove(ownerDir + "/" + l.prefix); err != nil {
		l.t.Errorf("network lab cleanup: %v", err)
	}
}

// ip runs the ip command in the root namespace.
func (l *Lab) ip(args ...string) {
	l.t.Helper()
	l.run(nil, l.tools.ip, args...)
}

// ipBatch runs several ip commands inside namespace ns with one exec.
func (l *Lab) ipBatch(ns string, lines ...string) {
	l.t.Helper()
	l.run([]byte(strings.Join(lines, "\n")+"\n"), l.tools.ip, "-n", ns, "-batch", "-")
}

// restore feeds iptables-restore input to the router namespace. --noflush
// keeps what the input doesn't mention; the input replaces whole chains.
func (l *Lab) restore(input string) {
	l.t.Helper()
	l.run([]byte(input), l.tools.ip, "netns", "exec", l.router, l.tools.iptablesRestore, "--noflush")
}

func (l *Lab) run(stdin []byte, name string, args ...string) {
	l.t.Helper()
	if _, err := run(stdin, name, args...); err != nil {
		l.t.Fatalf("network lab: %v", err)
	}
}

// run executes a command and returns its stdout; the error carries the
// command line and its output.
func run(stdin []byte, name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s %s: %v: %s%s", name, strings.Join(args, " "), err,
			strings.TrimSpace(stderr.String()), strings.TrimSpace(stdout.String()))
	}
	return stdout.String(), nil
}
