package main

import (
	"encoding/binary"
	"math/rand/v2"
	"sync/atomic"
	"time"
)

const pageSize = 4096

// memory is the guest's working set. Migration tracks dirtiness by page,
// so writing one word to a page dirties all of it: the cheapest store that
// gives a migration a whole page to send again, which matters under TCG,
// where every guest store costs many host instructions.
type memory struct {
	buf    []byte
	random bool
	order  []uint32 // the pages of this pass, in the order they are written
	next   int      // index in order of the next page to write
	pass   uint64

	rate    atomic.Int64  // MiB per second, set by the dirty command
	dirtied atomic.Uint64 // pages written at the rate (the fill not counted)
}

// newMemory fills buf once, so that all of it holds data a migration must
// copy (untouched pages would go as zero pages, at almost no cost).
func newMemory(buf []byte, random bool, rateMiBps int) *memory {
	m := &memory{buf: buf, random: random, order: make([]uint32, len(buf)/pageSize)}
	for i := range m.order {
		m.order[i] = uint32(i)
	}
	m.rate.Store(int64(rateMiBps))
	m.write(len(m.order))
	return m
}

// write stores to the next n pages. Every pass writes every page once; a
// random pass takes them in a fresh random order.
func (m *memory) write(n int) {
	for range n {
		if m.next == len(m.order) {
			m.next = 0
			m.pass++
			if m.random {
				rand.Shuffle(len(m.order), func(i, j int) { m.order[i], m.order[j] = m.order[j], m.order[i] })
			}
		}
		p := m.order[m.next]
		m.next++
		// Never zero, so no page stays a zero page, and different on
		// every pass, so no page is rewritten with what it held.
		binary.LittleEndian.PutUint64(m.buf[int(p)*pageSize:], (m.pass+1)<<32|uint64(p))
	}
}

// dirtiedMiB is how much was written at the rate so far, in whole MiB.
func (m *memory) dirtiedMiB() uint64 {
	return m.dirtied.Load() * pageSize >> 20
}

// step is how often the dirtier writes its share of pages: short enough
// that the rate is smooth on the scale of a migration's iterations.
const step = 10 * time.Millisecond

// run writes pages at the rate until stop is closed. A late wake-up (the
// guest paused for a migration's switchover, or starved of CPU) is made up
// for by at most ten steps, so a pause does not end in a burst.
func (m *memory) run(stop <-chan struct{}) {
	t := time.NewTicker(step)
	defer t.Stop()
	last := time.Now()
	owed := 0.0 // pages due but not yet written
	for {
		select {
		case <-stop:
			return
		case now := <-t.C:
			dt := min(now.Sub(last), 10*step)
			last = now
			owed += float64(m.rate.Load()) * (1 << 20 / pageSize) * dt.Seconds()
			n := int(owed)
			owed -= float64(n)
			m.write(n)
			m.dirtied.Add(uint64(n))
		}
	}
}
