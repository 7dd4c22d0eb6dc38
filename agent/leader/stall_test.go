package leader

import (
	"testing"
	"time"
)

func TestStallWatchTellsAFreezeFromASlowPass(t *testing.T) {
	t0 := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	every := 100 * time.Millisecond
	at := func(d time.Duration) time.Time { return t0.Add(d) }

	// A pass of the duties takes 1.1 s while the watch ticks beside it:
	// the process ran all along, nodes could renew, no freeze.
	w := newStallWatch(every, t0)
	for d := every; d <= 1100*time.Millisecond; d += every {
		w.tick(at(d))
	}
	if gap, ok := w.take(at(1150 * time.Millisecond)); ok {
		t.Fatalf("a slow pass counted as a freeze of %s", gap)
	}

	// Frozen for 2 s, the duties run first: the watch's silence is the
	// freeze, counted once.
	w = newStallWatch(every, t0)
	if gap, ok := w.take(at(2 * time.Second)); !ok || gap != 2*time.Second {
		t.Fatalf("freeze seen by the duties first: %s %v, want 2s", gap, ok)
	}
	w.tick(at(2*time.Second + 10*time.Millisecond))
	if gap, ok := w.take(at(2*time.Second + 100*time.Millisecond)); ok {
		t.Fatalf("the freeze counted twice (%s)", gap)
	}

	// Frozen for 2 s, the watch runs first: it keeps the gap for the
	// duties, which take it once.
	w = newStallWatch(every, t0)
	w.tick(at(2 * time.Second))
	w.tick(at(2*time.Second + every))
	if gap, ok := w.take(at(2*time.Second + 150*time.Millisecond)); !ok || gap != 2*time.Second {
		t.Fatalf("freeze seen by the watch first: %s %v, want 2s", gap, ok)
	}
	if gap, ok := w.take(at(2*time.Second + 200*time.Millisecond)); ok {
		t.Fatalf("the freeze counted twice (%s)", gap)
	}
}
