package leader

import (
	"context"
	"sync"
	"time"
)

// stallWatch tells a freeze of the leader's process (SIGSTOP, a starved
// machine) from a slow pass of its own duties. Nodes cannot renew with a
// frozen leader, so a freeze restarts every node's silence; a slow pass
// does not: the renewals went on beside it, and counting a pass of a
// second at 10,000 groups as a freeze postponed every failover of the
// cluster by that second. A goroutine that does nothing but tick measures
// the freeze; the duties ask it before they fail anything over.
type stallWatch struct {
	every time.Duration
	limit time.Duration

	mu     sync.Mutex
	beat   time.Time     // the watch's last tick
	missed time.Duration // the longest gap between its ticks not yet taken
}

func newStallWatch(every time.Duration, now time.Time) *stallWatch {
	return &stallWatch{every: every, limit: 5 * every, beat: now}
}

// run ticks until stop or ctx ends.
func (w *stallWatch) run(ctx context.Context, stop <-chan struct{}) {
	tickUntil(ctx, stop, w.every, func() { w.tick(time.Now()) })
}

// tickUntil calls f at each tick of every, one call at a time, until stop
// closes or ctx ends: the shape of the leader's duty loops.
func tickUntil(ctx context.Context, stop <-chan struct{}, every time.Duration, f func()) {
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		f()
	}
}

func (w *stallWatch) tick(now time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if gap := now.Sub(w.beat); gap > w.limit {
		w.missed = max(w.missed, gap)
	}
	w.beat = now
}

// take returns the freeze seen since the last take, if any. After a freeze
// either goroutine may run first: a watch that has not ticked for longer
// than the limit is a freeze in progress or just ended (the watch starved
// too), and a gap the watch saw itself is one that ended.
func (w *stallWatch) take(now time.Time) (time.Duration, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	gap := w.missed
	if d := now.Sub(w.beat); d > w.limit {
		gap = max(gap, d)
		// Count this freeze once: the watch's next tick measures from here.
		w.beat = now
	}
	w.missed = 0
	return gap, gap > 0
}
