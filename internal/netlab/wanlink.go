//go:build linux

package netlab

import (
	"errors"
	"fmt"
	"math"
	"slices"

	"github.com/haven-ha/haven/internal/netlab/wan"
)

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
// crosses FORWARD too, see New) and covers hosts added later. A delayer
// process bound to queue Q in the router namespace holds each packet for its
// delay; --queue-bypass lets packets through undelayed whenever no program is
// bound, so a crashed delayer leaves a fast network, not a dead one.
//
// Changing a link's delay starts a new delayer on a fresh queue, points the
// rules at it, then stops the old one, which lets what it holds go: no
// packet is dropped and none leaves undelayed. Clearing a link takes the
// rules away first, then stops its delayer for the same reason.

// SetWAN makes the link between sites a and b (either order) delay and drop
// packets as w says, in both directions, replacing what SetWAN set before.
// The delay is in force when SetWAN returns. SetWAN(a, b, WAN{}) is
// ClearWAN(a, b). Close undoes everything. An error from stopping the
// delayer that w replaced leaves w in force.
func (l *Lab) SetWAN(a, b *Site, w WAN) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	key, err := l.linkKey(a, b)
	if err != nil {
		return err
	}
	if err := w.validate(); err != nil {
		return fmt.Errorf("WAN %s|%s: %w", a.name, b.name, err)
	}
	old := l.wans[key]
	if old != nil && old.wan == w {
		return nil
	}
	if w == (WAN{}) {
		return l.clearWAN(key)
	}
	k := &wanLink{a: a, b: b, wan: w}
	if k.a.index > k.b.index {
		k.a, k.b = k.b, k.a
	}
	if old != nil && old.wan.Delay == w.Delay && old.wan.Jitter == w.Jitter {
		// Only the loss changes: the running delayer stays.
		k.queue, k.d = old.queue, old.d
		l.wans[key] = k
		if err := l.apply(); err != nil {
			l.wans[key] = old
			return err
		}
		return nil
	}
	if w.Delay > 0 {
		if l.lastQueue == math.MaxUint16 {
			return errors.New("no NFQUEUE queue numbers left")
		}
		l.lastQueue++
		k.queue = l.lastQueue
		d, err := l.startDelayer(k.name(), wan.Link{Queue: k.queue, Delay: w.Delay, Jitter: w.Jitter})
		if err != nil {
			return fmt.Errorf("WAN %s: %w", k.name(), err)
		}
		k.d = d
		l.delayers[d] = true
	}
	l.wans[key] = k
	if err := l.apply(); err != nil {
		// The rules still point at the old delayer, if any: put it back
		// and stop the new one.
		if old != nil {
			l.wans[key] = old
		} else {
			delete(l.wans, key)
		}
		if k.d != nil {
			err = errors.Join(err, l.stopDelayer(k.name(), k.d))
		}
		return err
	}
	if old != nil && old.d != nil {
		return l.stopDelayer(old.name(), old.d)
	}
	return nil
}

// ClearWAN removes the delay and loss between sites a and b; held packets
// are let go, not dropped. Clearing a link without a WAN is a no-op.
func (l *Lab) ClearWAN(a, b *Site) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	key, err := l.linkKey(a, b)
	if err != nil {
		return err
	}
	return l.clearWAN(key)
}

// clearWAN is ClearWAN with l.mu held.
func (l *Lab) clearWAN(key [2]int) error {
	k := l.wans[key]
	if k == nil {
		return nil
	}
	delete(l.wans, key)
	if err := l.apply(); err != nil {
		l.wans[key] = k
		return err
	}
	if k.d != nil {
		return l.stopDelayer(k.name(), k.d)
	}
	return nil
}

// Link is the WAN between two sites, A created before B.
type Link struct {
	A, B *Site
	WAN  WAN
}

// Links lists the WAN links set now, by their sites' creation order.
func (l *Lab) Links() []Link {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []Link
	for _, k := range l.wans {
		out = append(out, Link{A: k.a, B: k.b, WAN: k.wan})
	}
	slices.SortFunc(out, func(x, y Link) int {
		if x.A.index != y.A.index {
			return x.A.index - y.A.index
		}
		return x.B.index - y.B.index
	})
	return out
}

// linkKey names the link between two distinct sites of this lab; called
// with l.mu held.
func (l *Lab) linkKey(a, b *Site) ([2]int, error) {
	if err := l.usable(); err != nil {
		return [2]int{}, err
	}
	switch {
	case a == nil || b == nil || a.lab != l || b.lab != l:
		return [2]int{}, errors.New("WAN between sites of another lab")
	case a == b:
		return [2]int{}, fmt.Errorf("WAN from site %s to itself", a.name)
	}
	return [2]int{min(a.index, b.index), max(a.index, b.index)}, nil
}

// stopDelayer heals one delayer (it lets every held packet go) and logs
// its counters; the error says how it failed. Called with l.mu held.
func (l *Lab) stopDelayer(name string, d delayer) error {
	delete(l.delayers, d)
	out, err := d.stop()
	if out != "" {
		l.logf("network lab: WAN %s stopped: %s", name, out)
	}
	if err != nil {
		return fmt.Errorf("WAN %s: %w", name, err)
	}
	return nil
}
