//go:build linux

package netlab

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
)

// pair is one direction of traffic between two host addresses.
type pair struct{ src, dst string }

// The lab keeps the set of blocked directions and, on every change, rewrites
// the whole HAVEN_LAB chain in the router namespace with one iptables-restore
// (a single nf_tables transaction, a few ms). Set semantics make every call
// idempotent: partitioning twice adds no duplicate rule, healing what was
// never cut is a no-op, and overlapping faults heal independently.
//
// How the rules cut traffic: the router namespace has
// bridge-nf-call-iptables=1, so packets between hosts of one site (which only
// cross that site's bridge) traverse FORWARD as well as routed cross-site
// packets do; a DROP per direction matched on the two /32 host addresses
// therefore works for same-site and cross-site pairs alike. No protocol is
// named, so TCP, UDP and ICMP are all cut. Loopback inside a namespace never
// reaches the router, so it keeps working. DROP rather than REJECT: a real
// partition makes packets vanish and connections time out, it doesn't send
// errors back. Established connections aren't closed; their packets just
// stop until healed, as on a real network.

// Partition drops all traffic between every host of a and every host of b,
// in both directions. Hosts within a (or within b) can still talk.
func (l *Lab) Partition(a, b []*Host) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.change(func() {
		for _, x := range a {
			for _, y := range b {
				if x != y {
					l.blocked[pair{x.ip, y.ip}] = true
					l.blocked[pair{y.ip, x.ip}] = true
				}
			}
		}
	})
}

// Heal undoes Partition(a, b), and any other cut between a host of a and a
// host of b (an Isolate or IsolateAll included).
func (l *Lab) Heal(a, b []*Host) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.change(func() {
		for _, x := range a {
			for _, y := range b {
				delete(l.blocked, pair{x.ip, y.ip})
				delete(l.blocked, pair{y.ip, x.ip})
			}
		}
	})
}

// Isolate cuts h off from every other host that exists now (hosts added
// later are not cut from it).
func (l *Lab) Isolate(h *Host) error {
	return l.Partition([]*Host{h}, l.Hosts())
}

// IsolateAll cuts every host that exists now off from every other one: the
// "network blip everywhere" case.
func (l *Lab) IsolateAll() error {
	hosts := l.Hosts()
	return l.Partition(hosts, hosts)
}

// HealAll removes every partition. WAN links (SetWAN) stay: they are the
// network's shape, not a fault; ClearWAN removes them.
func (l *Lab) HealAll() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.change(func() { clear(l.blocked) })
}

// Cuts lists the pairs of hosts that cannot reach each other, each pair
// once, in the order the hosts were added.
func (l *Lab) Cuts() [][2]*Host {
	l.mu.Lock()
	defer l.mu.Unlock()
	var cuts [][2]*Host
	for i, x := range l.hosts {
		for _, y := range l.hosts[i+1:] {
			if l.blocked[pair{x.ip, y.ip}] || l.blocked[pair{y.ip, x.ip}] {
				cuts = append(cuts, [2]*Host{x, y})
			}
		}
	}
	return cuts
}

// change applies edit to l.blocked and the rules to the router; when the
// rules cannot be applied it puts l.blocked back, so the set always says
// what the chain holds. Called with l.mu held.
func (l *Lab) change(edit func()) error {
	if err := l.usable(); err != nil {
		return err
	}
	before := maps.Clone(l.blocked)
	edit()
	if err := l.apply(); err != nil {
		l.blocked = before
		return err
	}
	return nil
}

// apply replaces the chain's content with the rules for l.blocked and
// l.wans. Declaring the chain in iptables-restore input flushes it, and
// --noflush leaves the rest of the table (the FORWARD jump) alone. Called
// with l.mu held.
func (l *Lab) apply() error {
	return l.restore(rulesFor(l.blocked, l.wans))
}

// rulesFor renders the iptables-restore input for a set of blocked
// directions and the WAN links, sorted so the same state always gives the
// same chain. Partitions come first: a DROP must win over a WAN's NFQUEUE,
// whose verdict ends the packet's walk through the chain.
func rulesFor(blocked map[pair]bool, wans map[[2]int]*wanLink) string {
	pairs := make([]pair, 0, len(blocked))
	for p := range blocked {
		pairs = append(pairs, p)
	}
	slices.SortFunc(pairs, func(x, y pair) int {
		if c := strings.Compare(x.src, y.src); c != 0 {
			return c
		}
		return strings.Compare(x.dst, y.dst)
	})
	var b strings.Builder
	fmt.Fprintf(&b, "*filter\n:%s - [0:0]\n", chain)
	for _, p := range pairs {
		fmt.Fprintf(&b, "-A %s -s %s/32 -d %s/32 -j DROP\n", chain, p.src, p.dst)
	}
	keys := make([][2]int, 0, len(wans))
	for k := range wans {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(x, y [2]int) int {
		if c := cmp.Compare(x[0], y[0]); c != 0 {
			return c
		}
		return cmp.Compare(x[1], y[1])
	})
	for _, key := range keys {
		k := wans[key]
		for _, dir := range [][2]int{{k.a.index, k.b.index}, {k.b.index, k.a.index}} {
			match := fmt.Sprintf("-A %s -s 10.77.%d.0/24 -d 10.77.%d.0/24", chain, dir[0], dir[1])
			if k.wan.Loss > 0 {
				fmt.Fprintf(&b, "%s -m statistic --mode random --probability %s -j DROP\n",
					match, strconv.FormatFloat(k.wan.Loss, 'f', -1, 64))
			}
			if k.queue != 0 {
				fmt.Fprintf(&b, "%s -j NFQUEUE --queue-num %d --queue-bypass\n", match, k.queue)
			}
		}
	}
	b.WriteString("COMMIT\n")
	return b.String()
}

// Rules lists the rules now in the lab's chain, as `iptables -S` prints
// them, for tests and debugging.
func (l *Lab) Rules() ([]string, error) {
	out, err := run(nil, l.tools.ip, "netns", "exec", l.router, l.tools.iptables, "-S", chain)
	if err != nil {
		return nil, err
	}
	var rules []string
	for line := range strings.Lines(out) {
		if line = strings.TrimSpace(line); strings.HasPrefix(line, "-A ") {
			rules = append(rules, line)
		}
	}
	return rules, nil
}
