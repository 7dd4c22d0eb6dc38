package wan

import (
	"math/rand/v2"
	"testing"
	"time"

	"pgregory.net/rapid"
)

// TestSchedProperties drives the scheduler with random arrivals and random
// verdict times and checks what the Delayer promises: every release time
// within [arrival+delay-jitter, arrival+delay+jitter], packets leave in
// release-time order, a flow's packets leave in arrival order, and nothing
// is remembered once nothing is held.
func TestSchedProperties(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		r := rand.New(rand.NewPCG(rapid.Uint64().Draw(t, "seed"), 0))
		s := newSched(func(n int64) int64 { return r.Int64N(n + 1) })
		type link struct{ delay, jitter time.Duration }
		links := rapid.SliceOfN(rapid.Custom(func(t *rapid.T) link {
			d := time.Duration(rapid.Int64Range(0, int64(50*time.Millisecond)).Draw(t, "delay"))
			j := time.Duration(rapid.Int64Range(0, int64(d)).Draw(t, "jitter"))
			return link{d, j}
		}), 1, 3).Draw(t, "links")
		nflows := rapid.IntRange(1, 5).Draw(t, "flows")
		type sent struct {
			flow    int
			arrival time.Duration
			link    link
		}
		byID := map[uint32]sent{}
		lastOut := map[int]uint32{} // flow -> id of its last packet out
		var now, lastAt time.Duration
		var id uint32
		check := func(out []entry) {
			for _, e := range out {
				p := byID[e.id]
				lo, hi := p.arrival+p.link.delay-p.link.jitter, p.arrival+p.link.delay+p.link.jitter
				if e.at < lo || e.at > hi {
					t.Fatalf("packet %d: release %v outside [%v, %v]", e.id, e.at, lo, hi)
				}
				if e.at > now {
					t.Fatalf("packet %d released at %v, before its time %v", e.id, now, e.at)
				}
				if e.at < lastAt {
					t.Fatalf("packet %d at %v after one at %v", e.id, e.at, lastAt)
				}
				lastAt = e.at
				if prev, ok := lastOut[p.flow]; ok && prev > e.id {
					t.Fatalf("flow %d: packet %d left after %d", p.flow, e.id, prev)
				}
				lastOut[p.flow] = e.id
				delete(byID, e.id)
			}
		}
		steps := rapid.IntRange(1, 300).Draw(t, "steps")
		for range steps {
			now += time.Duration(rapid.Int64Range(0, int64(5*time.Millisecond)).Draw(t, "gap"))
			if rapid.Bool().Draw(t, "release") {
				check(s.due(now, nil))
				continue
			}
			// A flow's packets always take one link, as they do in the
			// lab (one queue per pair of sites).
			f := rapid.IntRange(0, nflows-1).Draw(t, "flow")
			k := links[f%len(links)]
			id++
			byID[id] = sent{f, now, k}
			key := flowKey{sport: uint16(f), proto: protoUDP}
			s.add(f%len(links), id, key, now, k.delay, k.jitter)
		}
		now += time.Hour
		check(s.due(now, nil))
		if len(byID) != 0 || s.len() != 0 || len(s.flows) != 0 {
			t.Fatalf("after releasing all: %d unreleased, %d in heap, %d flows remembered", len(byID), s.len(), len(s.flows))
		}
	})
}

// TestSchedTies: packets of a flow given the same release time leave in
// the order they came.
func TestSchedTies(t *testing.T) {
	s := newSched(func(int64) int64 { return 0 })
	key := flowKey{proto: protoTCP, sport: 1}
	for id := uint32(1); id <= 100; id++ {
		s.add(0, id, key, 0, 10*time.Millisecond, 0)
	}
	out := s.due(10*time.Millisecond, nil)
	if len(out) != 100 {
		t.Fatalf("%d due, want 100", len(out))
	}
	for i, e := range out {
		if e.id != uint32(i+1) {
			t.Fatalf("position %d: packet %d", i, e.id)
		}
	}
}

// TestSchedHoldsBack: a packet drawn to leave before its flow's previous
// one waits for it; another flow's packet doesn't.
func TestSchedHoldsBack(t *testing.T) {
	draws := []int64{int64(20 * time.Millisecond), 0, 0}
	s := newSched(func(int64) int64 { d := draws[0]; draws = draws[1:]; return d })
	a, b := flowKey{proto: protoUDP, sport: 1}, flowKey{proto: protoUDP, sport: 2}
	const d, j = 30 * time.Millisecond, 10 * time.Millisecond
	if at := s.add(0, 1, a, 0, d, j); at != 40*time.Millisecond {
		t.Fatalf("first packet at %v, want 40ms", at)
	}
	if at := s.add(0, 2, a, time.Millisecond, d, j); at != 40*time.Millisecond {
		t.Errorf("second packet of the flow at %v, want held back to 40ms", at)
	}
	if at := s.add(0, 3, b, time.Millisecond, d, j); at != 21*time.Millisecond {
		t.Errorf("other flow's packet at %v, want 21ms", at)
	}
	if n := len(s.flows); n != 2 {
		t.Errorf("%d flows, want 2", n)
	}
	if out := s.due(21*time.Millisecond, nil); len(out) != 1 || out[0].id != 3 {
		t.Errorf("due at 21ms: %+v, want packet 3", out)
	}
	if n := len(s.flows); n != 1 {
		t.Errorf("%d flows after flow b emptied, want 1", n)
	}
}

func ipv4(proto byte, ihl int, frag uint16, ports ...uint16) []byte {
	p := make([]byte, ihl*4, 64)
	p[0] = 0x40 | byte(ihl)
	p[6], p[7] = byte(frag>>8), byte(frag)
	p[9] = proto
	copy(p[12:], []byte{10, 77, 1, 2})
	copy(p[16:], []byte{10, 77, 2, 2})
	for _, port := range ports {
		p = append(p, byte(port>>8), byte(port))
	}
	return p
}

func TestFlowOf(t *testing.T) {
	src, dst := [4]byte{10, 77, 1, 2}, [4]byte{10, 77, 2, 2}
	for _, tc := range []struct {
		name string
		p    []byte
		want flowKey
	}{
		{"udp", ipv4(protoUDP, 5, 0, 5000, 7777), flowKey{src, dst, 5000, 7777, protoUDP}},
		{"tcp with options", ipv4(protoTCP, 8, 0, 40000, 22), flowKey{src, dst, 40000, 22, protoTCP}},
		{"dont-fragment is no fragment", ipv4(protoTCP, 5, 0x4000, 1, 2), flowKey{src, dst, 1, 2, protoTCP}},
		{"first fragment", ipv4(protoUDP, 5, 0x2000, 5000, 7777), flowKey{src: src, dst: dst, proto: protoUDP}},
		{"later fragment", ipv4(protoUDP, 5, 0x00b9, 0xdead, 0xbeef), flowKey{src: src, dst: dst, proto: protoUDP}},
		{"icmp", ipv4(1, 5, 0, 0x0800, 0), flowKey{src: src, dst: dst, proto: 1}},
		{"ports cut off", ipv4(protoUDP, 5, 0)[:21], flowKey{src: src, dst: dst, proto: protoUDP}},
		{"ipv6", append([]byte{0x60}, make([]byte, 39)...), notIPv4},
		{"short", []byte{0x45, 0}, notIPv4},
		{"empty", nil, notIPv4},
	} {
		if got := flowOf(tc.p); got != tc.want {
			t.Errorf("%s: %+v, want %+v", tc.name, got, tc.want)
		}
	}
}
