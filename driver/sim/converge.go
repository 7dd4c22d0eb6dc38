package sim

import (
	"encoding/binary"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// When a pre-copy switches over, throttles or gives up. QEMU's defaults
// switch over once the remaining bytes fit the downtime at the bandwidth
// it measures, and otherwise copy until an operator steps in, or, with
// auto-converge, throttle by a fixed step every few passes whether the
// guest is the reason or not. The planner decides from what each round
// measured:
//
//   - Once remaining / link rate fits the downtime target, switch over
//     unless the round left at most a quarter of what the one before it
//     did: the guest then dirties well below the link's rate, another
//     round costs a fraction of the last, and the pause the guest sees
//     shrinks with it (at 64 MiB/s against ~450 MB/s, 1 GiB leaves
//     ~130 MiB after the first round, 260 ms of pause that QEMU's rule
//     would take; four more rounds, 0.3 s in all, leave under a MiB).
//     The target is a ceiling, not an aim. A slower shrink would buy
//     little pause for much copying: at half a round's worth left, each
//     further round costs twice the pause it saves.
//   - A round without a real decrease (10 % below the best so far) is a
//     stall. After three, the guest is refilling what the link drains if
//     it dirties at least half as fast as the link carries (below that,
//     each round would at least halve what is left, so the stall is the
//     rounds' fixed costs, which no throttle cures): then throttle the
//     guest a step, and another after every further stalled round, up to
//     99 %. Otherwise switch over at that best point: more rounds buy
//     nothing.
//   - Fully throttled and stalled three more rounds: give up, naming the
//     rates. The caller gives up as well past MaxDuration.
//
// The downtime that counts is the guest's gap, and part of it no round
// shortens: the commit and activation after the pause (switchoverCost)
// and, where the kernel cannot track the guest's writes (see sourceSums),
// hashing the whole memory in the pause (the memory at this host's
// hashing rate, pauseHashTime). The rule counts them as a fixed part of
// the downtime, so the pages left for the pause get only what the target
// leaves after them. Once nothing is left to send, it switches over
// whatever they cost: more rounds cannot shorten them.
// MigrateResult.Paused reports the pause as it was.

// throttleSteps are the percentages of ticks a throttled guest skips.
var throttleSteps = []int{20, 40, 60, 80, 90, 95, 99}

const (
	stallRounds = 3
	// realDecrease: remaining must fall below this fraction of the best
	// so far (in tenths) to count as progress.
	realDecrease = 9
)

type verdict int

const (
	copyMore verdict = iota
	switchOver
	throttleMore // the planner's throttle() is the new percentage
	giveUp
)

// roundStats is what a round measured.
type roundStats struct {
	// remaining is the dirty memory left to send, in bytes.
	remaining int64
	// link is the rate the link carried, dirty the rate at which the
	// guest dirtied distinct pages, both in bytes per second.
	link, dirty int64
}

func (r roundStats) expectedDowntime() time.Duration {
	if r.link <= 0 {
		return time.Duration(1<<63 - 1)
	}
	return time.Duration(float64(r.remaining) / float64(r.link) * float64(time.Second))
}

// planner is the convergence rule above; deterministic, for tests.
type planner struct {
	target time.Duration
	// fixed is the pause's part that no round shortens: the hash.
	fixed   time.Duration
	best    int64 // least remaining so far; -1 before the first round
	prev    int64 // what the last round started from
	stalled int
	step    int // throttleSteps[step-1] is in force; 0: none
}

// newPlanner plans the move of memBytes of memory, all of which the first
// round sends.
func newPlanner(target, fixed time.Duration, memBytes int64) *planner {
	return &planner{target: target, fixed: fixed, best: -1, prev: memBytes}
}

func (p *planner) throttle() int {
	if p.step == 0 {
		return 0
	}
	return throttleSteps[p.step-1]
}

// next judges a round; the reason says why for giveUp.
func (p *planner) next(r roundStats) (verdict, string) {
	prev := p.prev
	p.prev = r.remaining
	if r.link > 0 && (r.remaining == 0 || r.expectedDowntime()+p.fixed <= p.target) {
		if 4*r.remaining <= prev && r.remaining > 0 {
			if p.best < 0 || r.remaining < p.best {
				p.best = r.remaining
			}
			return copyMore, ""
		}
		return switchOver, ""
	}
	if p.best < 0 || 10*r.remaining < realDecrease*p.best {
		p.best, p.stalled = r.remaining, 0
		return copyMore, ""
	}
	p.best = min(p.best, r.remaining)
	p.stalled++
	if p.stalled < stallRounds && p.step == 0 {
		return copyMore, ""
	}
	if 2*r.dirty < r.link {
		return switchOver, ""
	}
	if p.step < len(throttleSteps) {
		p.step++
		p.stalled = 0
		return throttleMore, ""
	}
	if p.stalled < stallRounds {
		return copyMore, ""
	}
	return giveUp, fmt.Sprintf("the guest, slowed by %d %%, still dirties %s while the link carries %s; %s left, %s of downtime at best (%s of it hashing the memory) against a target of %s",
		p.throttle(), rate(r.dirty), rate(r.link), size(r.remaining), (r.expectedDowntime() + p.fixed).Round(time.Millisecond), p.fixed.Round(time.Millisecond), p.target)
}

// rateMeter is the link rate over the last rounds that span at least
// window, so that a round of a few pages, whose time is mostly the ack's
// round trip, does not read as a slow link.
type rateMeter struct {
	window time.Duration
	rounds []struct {
		bytes int64
		dur   time.Duration
	}
}

func (m *rateMeter) add(bytes int64, dur time.Duration) {
	m.rounds = append(m.rounds, struct {
		bytes int64
		dur   time.Duration
	}{bytes, dur})
}

// rate is in bytes per second; 0 before any round.
func (m *rateMeter) rate() int64 {
	var bytes int64
	var dur time.Duration
	for i := len(m.rounds) - 1; i >= 0 && dur < m.window; i-- {
		bytes += m.rounds[i].bytes
		dur += m.rounds[i].dur
	}
	if dur <= 0 {
		return 0
	}
	return int64(float64(bytes) / dur.Seconds())
}

func rate(bps int64) string { return size(bps) + "/s" }

func size(b int64) string {
	switch {
	case b >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(b)/(1<<30))
	case b >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20))
	case b >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(b)/(1<<10))
	}
	return fmt.Sprintf("%d B", b)
}

// switchoverCost is what the guest's gap holds after the pause: the
// target's check, the commit through Raft and the activation, 15-20 ms
// on loopback (make bench-moves) and more over a real network with a disk
// under Raft. The planner leaves it out of the pause's share of the
// target: a tenth of it, at least 20 ms, at most half.
func switchoverCost(target time.Duration) time.Duration {
	return min(max(target/10, 20*time.Millisecond), target/2)
}

// pauseHash is this host's rate of hashing memory in a pause, in bytes per
// second: first from hashing a buffer of data on one core (a pause hashes
// on every core, so this errs long), then what the last pause measured.
var pauseHash struct {
	once sync.Once
	rate atomic.Int64
}

// pauseHashTime is how long a pause takes to hash bytes of memory.
func pauseHashTime(bytes int64) time.Duration {
	pauseHash.once.Do(func() {
		buf := make([]byte, 32<<20)
		for i := 0; i < len(buf); i += 8 {
			binary.LittleEndian.PutUint64(buf[i:], uint64(i)*0x9e3779b97f4a7c15)
		}
		t0 := time.Now()
		_ = pageSum(buf)
		d := max(time.Since(t0), time.Microsecond)
		pauseHash.rate.CompareAndSwap(0, int64(float64(len(buf))/d.Seconds()))
	})
	return time.Duration(float64(bytes) / float64(pauseHash.rate.Load()) * float64(time.Second))
}

// notePauseHash records what hashing bytes took in a pause.
func notePauseHash(bytes int64, d time.Duration) {
	if bytes >= 16<<20 && d > 0 {
		pauseHash.rate.Store(int64(float64(bytes) / d.Seconds()))
	}
}
