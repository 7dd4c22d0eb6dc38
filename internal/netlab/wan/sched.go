package wan

import (
	"encoding/binary"
	"time"
)

// flowKey names the flow a packet belongs to: the IPv4 5-tuple for TCP and
// UDP, source, destination and protocol otherwise. Ordering is kept per flow
// only; packets of different flows may overtake each other, as on a real
// WAN with several paths.
type flowKey struct {
	src, dst     [4]byte
	sport, dport uint16
	proto        uint8
}

// notIPv4 is the one flow of everything that isn't IPv4. The lab routes
// IPv4 only, so this only keeps odd packets in order among themselves.
var notIPv4 = flowKey{proto: 0xff, sport: 0xffff, dport: 0xffff}

// flowOf reads the flow key from the start of a packet (the kernel copies
// only the first copyRange bytes: enough for an IPv4 header with options
// plus the two ports).
func flowOf(p []byte) flowKey {
	if len(p) < 20 || p[0]>>4 != 4 {
		return notIPv4
	}
	var k flowKey
	copy(k.src[:], p[12:16])
	copy(k.dst[:], p[16:20])
	k.proto = p[9]
	ihl := int(p[0]&0x0f) * 4
	// Only an unfragmented packet or a first fragment carries the ports;
	// fragments of one datagram then share the port-less key, so they stay
	// in order among themselves.
	fragmented := binary.BigEndian.Uint16(p[6:8])&0x3fff != 0
	if (k.proto == protoTCP || k.proto == protoUDP) && !fragmented && ihl >= 20 && len(p) >= ihl+4 {
		k.sport = binary.BigEndian.Uint16(p[ihl:])
		k.dport = binary.BigEndian.Uint16(p[ihl+2:])
	}
	return k
}

const (
	protoTCP = 6
	protoUDP = 17
)

// entry is one held packet.
type entry struct {
	at    time.Duration // release time, on the Delayer's monotonic clock
	seq   uint64        // arrival order: equal release times keep it
	id    uint32        // the kernel's packet id, for the verdict
	queue int           // index into the Delayer's queues
	key   flowKey
}

// before orders the heap: by release time, then by arrival.
func (e *entry) before(o *entry) bool {
	return e.at < o.at || (e.at == o.at && e.seq < o.seq)
}

// flowState remembers, for a flow with packets held, the release time of its
// newest one, so no later packet of the flow is released before it.
type flowState struct {
	last time.Duration
	held int
}

// sched decides when each packet leaves. It holds no lock and reads no
// clock: the Delayer serialises calls and passes the time in.
type sched struct {
	heap  []entry // min-heap by entry.before
	flows map[flowKey]flowState
	seq   uint64
	// uniform returns a number uniformly distributed in [0, n]. It is a
	// field so tests can pin the jitter.
	uniform func(n int64) int64
}

func newSched(uniform func(n int64) int64) *sched {
	return &sched{flows: map[flowKey]flowState{}, uniform: uniform}
}

// add holds a packet that arrived at now on a link with the given delay and
// jitter, and returns its release time: uniform in [now+delay-jitter,
// now+delay+jitter], but never before the release of its flow's previous
// packet, so jitter never reorders a flow (TCP would take that for loss).
// A flow with a steady stream of packets therefore drifts to the upper end
// of the range, as packets behind a slow one queue up on a real link.
func (s *sched) add(queue int, id uint32, key flowKey, now, delay, jitter time.Duration) time.Duration {
	at := now + delay - jitter + time.Duration(s.uniform(int64(2*jitter)))
	f := s.flows[key]
	if f.held > 0 && at < f.last {
		at = f.last
	}
	f.last = at
	f.held++
	s.flows[key] = f
	s.seq++
	s.push(entry{at: at, seq: s.seq, id: id, queue: queue, key: key})
	return at
}

// due moves every packet whose release time is not after now, in release
// order, from the heap to out.
func (s *sched) due(now time.Duration, out []entry) []entry {
	for len(s.heap) > 0 && s.heap[0].at <= now {
		out = append(out, s.pop())
	}
	return out
}

// next is the earliest release time held, if any.
func (s *sched) next() (time.Duration, bool) {
	if len(s.heap) == 0 {
		return 0, false
	}
	return s.heap[0].at, true
}

func (s *sched) len() int { return len(s.heap) }

func (s *sched) push(e entry) {
	s.heap = append(s.heap, e)
	h := s.heap
	for i := len(h) - 1; i > 0; {
		p := (i - 1) / 2
		if !h[i].before(&h[p]) {
			break
		}
		h[i], h[p] = h[p], h[i]
		i = p
	}
}

// pop removes the earliest packet and forgets its flow once nothing of the
// flow is held, so the flow table never outgrows the heap.
func (s *sched) pop() entry {
	h := s.heap
	top := h[0]
	last := len(h) - 1
	h[0] = h[last]
	h = h[:last]
	for i := 0; ; {
		l, r, m := 2*i+1, 2*i+2, i
		if l < len(h) && h[l].before(&h[m]) {
			m = l
		}
		if r < len(h) && h[r].before(&h[m]) {
			m = r
		}
		if m == i {
			break
		}
		h[i], h[m] = h[m], h[i]
		i = m
	}
	s.heap = h
	if f := s.flows[top.key]; f.held <= 1 {
		delete(s.flows, top.key)
	} else {
		f.held--
		s.flows[top.key] = f
	}
	return top
}
