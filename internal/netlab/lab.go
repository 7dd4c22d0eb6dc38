//go:build linux

package netlab

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

	"github.com/haven-ha/haven/internal/netlab/wan"
)

const (
	// GlobalPrefix starts the name of every namespace and link any lab
	// creates; New reaps leftovers carrying it whose owner is gone.
	GlobalPrefix = "hv"

	// ownerDir holds one file per live lab, named after its prefix, that
	// records the creating process so a later run can tell leftovers of a
	// crashed run from a lab another process is using right now.
	ownerDir = "/run/haven-lab"
	// netnsDir is where `ip netns add` mounts named namespaces.
	netnsDir = "/run/netns"
	// chain is the custom iptables chain in the router namespace; all fault
	// rules live here so that replacing its content heals everything.
	chain = "HAVEN_LAB"
	// nfqueueProc exists once the kernel can queue packets to user space
	// (nfnetlink_queue, built in or loaded).
	nfqueueProc = "/proc/net/netfilter/nfnetlink_queue"

	maxSites        = 254
	maxHostsPerSite = 253 // .2 to .254; .1 is the router
)

// prefixRE matches names made by some lab: the global prefix, 5 random
// characters, then a dash. The first 7 characters are the run's prefix.
var prefixRE = regexp.MustCompile(`^` + GlobalPrefix + `[a-z0-9]{5}-`)

// nameRE is what a site or host name may be: it becomes part of a
// namespace's name.
var nameRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_-]{0,31}$`)

// Options say how a lab runs what it does not do itself.
type Options struct {
	// Delayer is the command line of the delay program (wan.Command)
	// before its own flags: {"/usr/bin/haven", "lab-wan"}, or a havenwan
	// build. The reaper recognises a leftover one by a program named
	// havenwan or a first argument lab-wan. Only SetWAN with a delay
	// needs it.
	Delayer []string
	// Logf reports what does not fail a call: a delayer's counters when
	// it stops, leftovers of earlier runs that could not be removed. Nil
	// drops them.
	Logf func(format string, args ...any)
}

// Lab is one network: a router namespace and the sites and hosts added to
// it. Its methods are safe to call concurrently; Close removes it all.
type Lab struct {
	prefix string
	router string // router namespace name
	tools  tools
	opts   Options

	mu      sync.Mutex
	closed  bool
	sites   []*Site
	hosts   []*Host
	names   map[string]bool
	blocked map[pair]bool       // directed: packets from src to dst are dropped
	wans    map[[2]int]*wanLink // by the two sites' indexes, lower first
	// lastQueue is the NFQUEUE queue number given out last; numbers are
	// never reused within a lab, so a new delayer binds while the old one
	// still holds packets.
	lastQueue uint16
	delayers  map[delayer]bool // running, stopped by Close at the latest
	// newDelayer, when set, starts delayers instead of Options.Delayer.
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
// so a missing one fails New with a clear message instead of a call midway.
type tools struct {
	ip, iptables, iptablesRestore, sysctl string
}

// Check says what this machine lacks to build a lab, all of it at once:
// root, the commands ip, iptables, iptables-restore and sysctl, and, when
// queue is set (a WAN with a delay), the kernel's NFQUEUE support
// (nfnetlink_queue). Nil means nothing is missing.
func Check(queue bool) error {
	var missing []string
	if euid := os.Geteuid(); euid != 0 {
		missing = append(missing, fmt.Sprintf("root (it creates network namespaces, veths, bridges and iptables rules; euid is %d)", euid))
	}
	if _, err := findTools(); err != nil {
		missing = append(missing, err.Error())
	}
	if queue {
		if err := checkNFQueue(); err != nil {
			missing = append(missing, err.Error())
		}
	}
	if len(missing) > 0 {
		return errors.New("network lab: needs " + strings.Join(missing, "; and "))
	}
	return nil
}

// checkNFQueue reports whether the kernel can hand packets to a delay
// program. A kernel with nfnetlink_queue as a module that is not loaded yet
// would load it on first use; with modprobe at hand it is loaded now so the
// answer is certain.
func checkNFQueue() error {
	if _, err := os.Stat(nfqueueProc); err == nil {
		return nil
	}
	if mp, err := exec.LookPath("modprobe"); err == nil {
		if _, err := run(nil, mp, "-q", "nfnetlink_queue"); err == nil {
			if _, err := os.Stat(nfqueueProc); err == nil {
				return nil
			}
		}
	}
	return fmt.Errorf("the nfqueue module (nfnetlink_queue: %s is missing) for the WAN's delay", nfqueueProc)
}

// New creates a lab: a router namespace and nothing else yet. It first
// removes leftovers of earlier runs whose process is gone (a process killed
// by SIGKILL or a test timeout never cleans up). On error nothing of the
// new lab is left. The caller must Close the lab.
func New(opts Options) (*Lab, error) {
	if euid := os.Geteuid(); euid != 0 {
		return nil, fmt.Errorf("network lab needs root: it creates network namespaces, veths, bridges and iptables rules (euid %d)", euid)
	}
	tl, err := findTools()
	if err != nil {
		return nil, fmt.Errorf("running as root but %w", err)
	}
	l := &Lab{
		tools:    tl,
		opts:     opts,
		names:    map[string]bool{},
		blocked:  map[pair]bool{},
		wans:     map[[2]int]*wanLink{},
		delayers: map[delayer]bool{},
	}
	if err := reapLeftovers(tl); err != nil {
		// Leftovers use other prefixes, so they cannot clash with this
		// lab; report them and go on.
		l.logf("network lab: removing leftovers of earlier runs: %v", err)
	}
	if l.prefix, err = claimPrefix(); err != nil {
		return nil, err
	}
	l.router = l.prefix + "-r"
	err = l.ip("netns", "add", l.router)
	if err == nil {
		err = l.ipBatch(l.router, "link set lo up")
	}
	if err == nil {
		// bridge-nf-call-iptables=1 on purpose (NETWORK.md suggests 0):
		// frames between two hosts of one site only cross the bridge, and
		// this makes them traverse FORWARD too, so one chain here cuts
		// same-site and cross-site pairs alike, matched on host addresses.
		// The alternative, DROP rules inside each host's namespace, would
		// make a cut peer's sends fail at once with EPERM, which no real
		// partition does.
		_, err = run(nil, tl.ip, "netns", "exec", l.router, tl.sysctl, "-q", "-w",
			"net.ipv4.ip_forward=1", "net.bridge.bridge-nf-call-iptables=1")
	}
	if err == nil {
		err = l.restore(fmt.Sprintf("*filter\n:%s - [0:0]\n-I FORWARD -j %s\nCOMMIT\n", chain, chain))
	}
	if err != nil {
		return nil, errors.Join(err, l.Close())
	}
	return l, nil
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
		return tl, fmt.Errorf("%s not found in PATH (Debian: apt-get install -y iproute2 iptables procps)", strings.Join(missing, ", "))
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
	start, err := StartTime(os.Getpid())
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

func (l *Lab) logf(format string, args ...any) {
	if l.opts.Logf != nil {
		l.opts.Logf(format, args...)
	}
}

// Prefix is this run's name prefix: every namespace and link of the lab
// starts with it followed by a dash.
func (l *Lab) Prefix() string { return l.prefix }

// Router is the name of the router namespace, which reaches every host
// (`ip netns exec ROUTER ...`; DialContext dials from it).
func (l *Lab) Router() string { return l.router }

// Sites returns every site added so far, in creation order.
func (l *Lab) Sites() []*Site {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]*Site(nil), l.sites...)
}

// Hosts returns every host added so far, in creation order.
func (l *Lab) Hosts() []*Host {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]*Host(nil), l.hosts...)
}

// Site adds a routed subnet 10.77.S.0/24 (S counts sites from 1) whose
// router address 10.77.S.1 sits on a new bridge in the router namespace.
func (l *Lab) Site(name string) (*Site, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.usable(); err != nil {
		return nil, err
	}
	if err := l.checkName("site", name); err != nil {
		return nil, err
	}
	if len(l.sites) >= maxSites {
		return nil, fmt.Errorf("more than %d sites", maxSites)
	}
	s := &Site{lab: l, name: name, index: len(l.sites) + 1}
	s.bridge = fmt.Sprintf("%s-b%d", l.prefix, s.index)
	// A fixed MAC: a bridge without one takes the lowest MAC of its ports
	// and changes it as hosts join, leaving hosts with a stale ARP entry
	// for their router (cross-site traffic then stalls for seconds).
	mac := fmt.Sprintf("02:68:76:00:%02x:01", s.index)
	if err := l.ipBatch(l.router,
		fmt.Sprintf("link add %s address %s type bridge", s.bridge, mac),
		fmt.Sprintf("addr add 10.77.%d.1/24 dev %s", s.index, s.bridge),
		fmt.Sprintf("link set %s up", s.bridge)); err != nil {
		return nil, err
	}
	l.names["site/"+name] = true
	l.sites = append(l.sites, s)
	return s, nil
}

// Name is the name given to Lab.Site.
func (s *Site) Name() string { return s.name }

// Subnet is the site's IPv4 subnet, 10.77.S.0/24.
func (s *Site) Subnet() string { return fmt.Sprintf("10.77.%d.0/24", s.index) }

// Hosts returns the site's hosts, in creation order.
func (s *Site) Hosts() []*Host {
	s.lab.mu.Lock()
	defer s.lab.mu.Unlock()
	return append([]*Host(nil), s.hosts...)
}

// Host adds a host namespace on the site: eth0 with 10.77.S.H/24 (H from 2),
// default route via 10.77.S.1, lo up.
func (s *Site) Host(name string) (*Host, error) {
	l := s.lab
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.usable(); err != nil {
		return nil, err
	}
	if err := l.checkName("host", name); err != nil {
		return nil, err
	}
	if len(s.hosts) >= maxHostsPerSite {
		return nil, fmt.Errorf("more than %d hosts on site %s", maxHostsPerSite, s.name)
	}
	h := &Host{
		site: s,
		name: name,
		ns:   l.prefix + "-h-" + name,
		ip:   fmt.Sprintf("10.77.%d.%d", s.index, len(s.hosts)+2),
	}
	veth := fmt.Sprintf("%s-v%d", l.prefix, len(l.hosts)+1) // <= 15 chars up to v99999
	if err := l.ip("netns", "add", h.ns); err != nil {
		return nil, err
	}
	// Listed at once, so that Close removes it whatever fails below.
	s.hosts = append(s.hosts, h)
	l.hosts = append(l.hosts, h)
	l.names["host/"+name] = true
	// Both ends are created straight inside their namespaces, so nothing
	// of the lab ever appears in the root namespace.
	err := l.ip("link", "add", "eth0", "netns", h.ns, "type", "veth", "peer", "name", veth, "netns", l.router)
	if err == nil {
		err = l.ipBatch(l.router, fmt.Sprintf("link set %s master %s up", veth, s.bridge))
	}
	if err == nil {
		err = l.ipBatch(h.ns,
			"link set lo up",
			// No IPv6 link-local address: partitions cut IPv4 only, so
			// no IPv6 path may exist between hosts, and no DAD or router
			// solicitations add noise.
			"link set eth0 addrgenmode none",
			fmt.Sprintf("addr add %s/24 dev eth0", h.ip),
			"link set eth0 up",
			fmt.Sprintf("route add default via 10.77.%d.1", s.index))
	}
	if err != nil {
		return nil, err
	}
	return h, nil
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
// caller even when it never cleans up (a caller may set another signal).
// (Go delivers Pdeathsig when the OS thread that started the child exits,
// which only happens when a goroutine exits while locked to its thread:
// don't start these from such a goroutine.) Whatever still runs in the
// lab's namespaces is killed by Close.
func (h *Host) Command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(h.site.lab.tools.ip, append([]string{"netns", "exec", h.ns, name}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd
}

// checkName is called with l.mu held.
func (l *Lab) checkName(kind, name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("%s name %q: want 1-32 of [A-Za-z0-9_-], not starting with '-'", kind, name)
	}
	if l.names[kind+"/"+name] {
		return fmt.Errorf("duplicate %s name %q", kind, name)
	}
	return nil
}

// usable is called with l.mu held.
func (l *Lab) usable() error {
	if l.closed {
		return errors.New("network lab: closed")
	}
	return nil
}

// Close stops the lab's delayers, kills whatever runs in its namespaces,
// deletes them (which deletes every link and rule with them) and drops the
// owner record last, so a concurrent reaper never sees a namespace of a
// live lab without owner. A delayer that failed is reported in the error,
// but does not stop the rest. Close again does nothing; other calls fail
// once it has begun.
func (l *Lab) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	l.closed = true
	var errs []error
	for k, link := range l.wans {
		delete(l.wans, k)
		if link.d != nil {
			errs = append(errs, l.stopDelayer(link.name(), link.d))
		}
	}
	for d := range l.delayers { // started by a SetWAN that failed midway
		errs = append(errs, l.stopDelayer("(unlinked)", d))
	}
	var nss []string
	for _, h := range l.hosts {
		nss = append(nss, h.ns)
	}
	if l.router != "" {
		nss = append(nss, l.router)
	}
	if err := removeNamespaces(l.tools, nss); err != nil {
		// Keep the owner record: the next run's reaper retries.
		return errors.Join(append(errs, err)...)
	}
	if l.prefix != "" {
		if err := os.Remove(ownerDir + "/" + l.prefix); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// ip runs the ip command in the root namespace.
func (l *Lab) ip(args ...string) error {
	_, err := run(nil, l.tools.ip, args...)
	return err
}

// ipBatch runs several ip commands inside namespace ns with one exec.
func (l *Lab) ipBatch(ns string, lines ...string) error {
	_, err := run([]byte(strings.Join(lines, "\n")+"\n"), l.tools.ip, "-n", ns, "-batch", "-")
	return err
}

// restore feeds iptables-restore input to the router namespace. --noflush
// keeps what the input doesn't mention; the input replaces whole chains.
func (l *Lab) restore(input string) error {
	_, err := run([]byte(input), l.tools.ip, "netns", "exec", l.router, l.tools.iptablesRestore, "--noflush")
	return err
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
