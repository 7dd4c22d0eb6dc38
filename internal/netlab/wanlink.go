package netlab

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
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

// String renders w as ParseWAN reads it: "30ms±10ms,2%".
func (w WAN) String() string {
	return fmt.Sprintf("%v±%v,%g%%", w.Delay, w.Jitter, 100*w.Loss)
}

// ParseWAN reads a WAN as an operator writes it: DELAY[±JITTER][,LOSS%],
// e.g. "30ms±10ms,2%", "30ms+-10ms,2%" (the same in ASCII), "30ms",
// "20ms±5ms", "0,1%" (loss alone) or "0.5%". Durations are Go's
// (time.ParseDuration; a bare 0 is none), the loss a percentage.
func ParseWAN(s string) (WAN, error) {
	var w WAN
	fail := func(format string, args ...any) (WAN, error) {
		return WAN{}, fmt.Errorf("WAN %q: %s (want DELAY[±JITTER][,LOSS%%], e.g. 30ms±10ms,2%%)", s, fmt.Sprintf(format, args...))
	}
	delays, loss, hasLoss := strings.Cut(strings.TrimSpace(s), ",")
	if !hasLoss && strings.HasSuffix(delays, "%") {
		delays, loss, hasLoss = "", delays, true // "2%": loss alone
	}
	if hasLoss {
		p, ok := strings.CutSuffix(strings.TrimSpace(loss), "%")
		if !ok {
			return fail("loss %q must end in %%", loss)
		}
		f, err := strconv.ParseFloat(strings.TrimSpace(p), 64)
		if err != nil || math.IsNaN(f) {
			return fail("loss %q is not a number", loss)
		}
		w.Loss = f / 100
	}
	if delays = strings.TrimSpace(delays); delays != "" {
		delay, jitter, hasJitter := strings.Cut(delays, "±")
		if !hasJitter {
			delay, jitter, hasJitter = strings.Cut(delays, "+-")
		}
		var err error
		if w.Delay, err = time.ParseDuration(strings.TrimSpace(delay)); err != nil {
			return fail("delay: %v", err)
		}
		if hasJitter {
			if w.Jitter, err = time.ParseDuration(strings.TrimSpace(jitter)); err != nil {
				return fail("jitter: %v", err)
			}
		}
	} else if !hasLoss {
		return fail("empty")
	}
	if err := w.validate(); err != nil {
		return fail("%v", err)
	}
	return w, nil
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

func (w WAN) validate() error {
	if math.IsNaN(w.Loss) || w.Loss < 0 || w.Loss >= 1 {
		return fmt.Errorf("loss %g: want 0 <= loss < 1", w.Loss)
	}
	return wan.Link{Delay: w.Delay, Jitter: w.Jitter}.Validate()
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
