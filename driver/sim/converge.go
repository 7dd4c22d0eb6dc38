package sim

import (
	"fmt"
	"time"
)

// When a pre-copy switches over, throttles or gives up. QEMU's defaults
// switch over once the remaining bytes fit the downtime at the bandwidth
// it measures, and otherwise copy until an operator steps in, or, with
// auto-converge, throttle by a fixed step every few passes whether the
// guest is the reason or not. The planner decides from what each round
// measured:
//
//   - Switch over as soon as remaining / link rate ≤ the downtime target.
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
// The pause also hashes the whole memory (see checksum.go), which no
// round shortens, so the rule leaves it out; MigrateResult.Paused reports
// the pause as it was.

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
	target  time.Duration
	best    int64 // least remaining so far; -1 before the first round
	stalled int
	step    int // throttleSteps[step-1] is in force; 0: none
}

func newPlanner(target time.Duration) *planner { return &planner{target: target, best: -1} }

func (p *planner) throttle() int {
	if p.step == 0 {
		return 0
	}
	return throttleSteps[p.step-1]
}

// next judges a round; the reason says why for giveUp.
func (p *planner) next(r roundStats) (verdict, string) {
	if r.expectedDowntime() <= p.target {
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
	return giveUp, fmt.Sprintf("the guest, slowed by %d %%, still dirties %s while the link carries %s; %s left, %s of downtime at best against a target of %s",
		p.throttle(), rate(r.dirty), rate(r.link), size(r.remaining), r.expectedDowntime().Round(time.Millisecond), p.target)
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
