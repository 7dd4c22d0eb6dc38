package lab

import (
	"fmt"
	"math"
	"time"

	"github.com/haven-ha/haven/internal/netlab/wan"
)

// WAN is what the link between two sites does to every packet crossing it,
// in each direction.
type WAN struct {
	// Delay is the one-way delay; each packet's is uniform in
	// [Delay-Jitter, Delay+Jitter], and packets of one flow (IPv4
	// 5-tuple) are never reordered.
	Delay, Jitter time.Duration
	// Loss is the probability that a packet is dropped, each way.
	Loss float64
}

func (w WAN) String() string {
	return fmt.Sprintf("%v±%v,%g%%", w.Delay, w.Jitter, 100*w.Loss)
}

// wanLink is the WAN between two sites, a before b in creation order.
type wanLink struct {
	a, b  *Site
	wan   WAN
	queue uint16 // the NFQUEUE queue of its delayer; 0 when nothing delays
	d     delayer
}

func (k *wanLink) name() string { return k.a.name + "|" + k.b.name }

// How the lab delays packets: cross-site packets traverse the router
// namespace's FORWARD chain once, so per WAN link and direction HAVEN_LAB
// gets, after every partition DROP (a cut link stays cut whatever its WAN):
//
//	-s A/24 -d B/24 -m statistic --mode random --probability P -j DROP
//	-s A/24 -d B/24 -j NFQUEUE --queue-num Q --queue-bypass
//
// Matching site subnets, not hosts, leaves same-site traffic alone (it
// crosses FORWARD too, see New) and covers hosts added later. A havenwan
// process bound to queue Q in the router namespace holds each packet for its
// delay; --queue-bypass lets packets through undelayed whenever no program is
// bound, so a crashed havenwan leaves a fast network, not a dead one.
//
// Changing a link's delay starts a new havenwan on a fresh queue, points the
// rules at it, then stops the old one, which lets what it holds go: no
// packet is dropped and none leaves undelayed. Clearing a link takes the
// rules away first, then stops its havenwan for the same reason.

// SetWAN makes the link between sites a and b (either order) delay and drop
// packets as w says, in both directions, replacing what SetWAN set before.
// The delay is in force when SetWAN returns. SetWAN(a, b, WAN{}) is
// ClearWAN(a, b). Everything is undone by the lab's cleanup.
func (l *Lab) SetWAN(a, b *Site, w WAN) {
	l.t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	key := l.linkKey(a, b)
	if err := w.validate(); err != nil {
		l.t.Fatalf("network lab: WAN %s|%s: %v", a.name, b.name, err)
	}
	old := l.wans[key]
	if old != nil && old.wan == w {
		return
	}
	if w == (WAN{}) {
		l.clearWAN(key)
		return
	}
	k := &wanLink{a: a, b: b, wan: w}
	if k.a.index > k.b.index {
		k.a, k.b = k.b, k.a
	}
	if old != nil && old.wan.Delay == w.Delay && old.wan.Jitter == w.Jitter {
		// Only the loss changes: the running delayer stays.
		k.queue, k.d = old.queue, old.d
		l.wans[key] = k
		l.apply()
		return
	}
	if w.Delay > 0 {
		if l.lastQueue == math.MaxUint16 {
			l.t.Fatalf("network lab: no NFQUEUE queue numbers left")
		}
		l.lastQueue++
		k.queue = l.lastQueue
		d, err := l.startDelayer(k.name(), wan.Link{Queue: k.queue, Delay: w.Delay, Jitter: w.Jitter})
		if err != nil {
			l.t.Fatalf("network lab: WAN %s: %v", k.name(), err)
		}
		k.d = d
		l.delayers[d] = true
	}
	l.wans[key] = k
	l.apply()
	if old != nil && old.d != nil {
		l.stopDelayer(old.name(), old.d)
	}
}

// ClearWAN removes the delay and loss between sites a and b; held packets
// are let go, not dropped. Clearing a link without a WAN is a no-op.
func (l *Lab) ClearWAN(a, b *Site) {
	l.t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.clearWAN(l.linkKey(a, b))
}

// clearWAN is ClearWAN with l.mu held.
func (l *Lab) clearWAN(key [2]int) {
	l.t.Helper()
	k := l.wans[key]
	if k == nil {
		return
	}
	delete(l.wans, key)
	l.apply()
	if k.d != nil {
		l.stopDelayer(k.name(), k.d)
	}
}

// linkKey names the link between two distinct sites of this lab.
func (l *Lab) linkKey(a, b *Site) [2]int {
	l.t.Helper()
	switch {
	case a == nil || b == nil || a.lab != l || b.lab != l:
		l.t.Fatalf("network lab: WAN between sites of another lab")
	case a == b:
		l.t.Fatalf("network lab: WAN from site %s to itself", a.name)
	}
	return [2]int{min(a.index, b.index), max(a.index, b.index)}
}

func (w WAN) validate() error {
	if math.IsNaN(w.Loss) || w.Loss < 0 || w.Loss >= 1 {
		return fmt.Errorf("loss %g: want 0 <= loss < 1", w.Loss)
	}
	return wan.Link{Delay: w.Delay, Jitter: w.Jitter}.Validate()
}

// stopDelayer heals one delayer (it lets every held packet go) and reports
// its counters, or how it failed. Called with l.mu held.
func (l *Lab) stopDelayer(name string, d delayer) {
	l.t.Helper()
	delete(l.delayers, d)
	out, err := d.stop()
	if out != "" {
		l.t.Logf("network lab: WAN %s stopped: %s", name, out)
	}
	if err != nil {
		l.t.Errorf("network lab: WAN %s: %v", name, err)
	}
}
