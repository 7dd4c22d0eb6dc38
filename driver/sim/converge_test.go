package sim

import (
	"strings"
	"testing"
	"time"
)

// The convergence rule, round by round: each case feeds the planner a
// sequence of rounds and expects its verdicts and the throttle in force.
func TestPlanner(t *testing.T) {
	const MB = 1 << 20
	type step struct {
		r        roundStats
		want     verdict
		throttle int
	}
	// steady is a round that leaves what the last one did: the guest
	// refills the link's work at half its rate or more.
	steady := func(want verdict, throttle int) step {
		return step{roundStats{remaining: 64 * MB, link: 100 * MB, dirty: 90 * MB}, want, throttle}
	}
	for _, tc := range []struct {
		name  string
		steps []step
	}{
		{"fits the target, then shrinks until it falls by less than three quarters", []step{
			{roundStats{remaining: 100 * MB, link: 500 * MB, dirty: 50 * MB}, copyMore, 0}, // 200 ms <= 300 ms, a tenth of the memory
			{roundStats{remaining: 10 * MB, link: 500 * MB, dirty: 50 * MB}, copyMore, 0},
			{roundStats{remaining: 2 * MB, link: 500 * MB, dirty: 50 * MB}, copyMore, 0},
			{roundStats{remaining: 1.5 * MB, link: 500 * MB, dirty: 50 * MB}, switchOver, 0},
		}},
		{"fits the target, but shrinks slowly: switch over", []step{
			{roundStats{remaining: 600 * MB, link: 3000 * MB, dirty: 1000 * MB}, switchOver, 0},
		}},
		{"nothing left", []step{
			{roundStats{remaining: 0, link: 100 * MB}, switchOver, 0},
		}},
		{"shrinks until it fits", []step{
			{roundStats{remaining: 400 * MB, link: 100 * MB, dirty: 50 * MB}, copyMore, 0},
			{roundStats{remaining: 200 * MB, link: 100 * MB, dirty: 50 * MB}, copyMore, 0},
			{roundStats{remaining: 100 * MB, link: 100 * MB, dirty: 50 * MB}, copyMore, 0},
			{roundStats{remaining: 45 * MB, link: 100 * MB, dirty: 50 * MB}, copyMore, 0},
			{roundStats{remaining: 25 * MB, link: 100 * MB, dirty: 50 * MB}, switchOver, 0},
		}},
		{"a slow decrease is a stall", []step{
			{roundStats{remaining: 100 * MB, link: 100 * MB, dirty: 90 * MB}, copyMore, 0},
			{roundStats{remaining: 95 * MB, link: 100 * MB, dirty: 90 * MB}, copyMore, 0},
			{roundStats{remaining: 91 * MB, link: 100 * MB, dirty: 90 * MB}, copyMore, 0},
			{roundStats{remaining: 91 * MB, link: 100 * MB, dirty: 90 * MB}, throttleMore, 20},
		}},
		{"stalled by the rounds, not the guest: switch at the best point", []step{
			{roundStats{remaining: 40 * MB, link: 100 * MB, dirty: 10 * MB}, copyMore, 0},
			{roundStats{remaining: 40 * MB, link: 100 * MB, dirty: 10 * MB}, copyMore, 0},
			{roundStats{remaining: 39 * MB, link: 100 * MB, dirty: 10 * MB}, copyMore, 0},
			{roundStats{remaining: 41 * MB, link: 100 * MB, dirty: 10 * MB}, switchOver, 0},
		}},
		{"throttled to convergence", []step{
			steady(copyMore, 0), steady(copyMore, 0), steady(copyMore, 0),
			steady(throttleMore, 20),
			steady(throttleMore, 40), // every stalled round once throttled
			{roundStats{remaining: 40 * MB, link: 100 * MB, dirty: 60 * MB}, copyMore, 40},
			{roundStats{remaining: 25 * MB, link: 100 * MB, dirty: 30 * MB}, switchOver, 40},
		}},
		{"fully throttled and still stalled: give up", []step{
			steady(copyMore, 0), steady(copyMore, 0), steady(copyMore, 0),
			steady(throttleMore, 20), steady(throttleMore, 40), steady(throttleMore, 60),
			steady(throttleMore, 80), steady(throttleMore, 90), steady(throttleMore, 95),
			steady(throttleMore, 99),
			steady(copyMore, 99), steady(copyMore, 99), steady(giveUp, 99),
		}},
		{"no link measured yet", []step{
			{roundStats{remaining: 0, link: 0}, copyMore, 0},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newPlanner(300*time.Millisecond, 0, 1000*MB)
			for i, s := range tc.steps {
				got, why := p.next(s.r)
				if got != s.want || p.throttle() != s.throttle {
					t.Fatalf("round %d (%+v): verdict %d, throttle %d; want %d, %d", i+1, s.r, got, p.throttle(), s.want, s.throttle)
				}
				if got == giveUp && (!strings.Contains(why, "99 %") || !strings.Contains(why, "64.0 MiB left")) {
					t.Errorf("give-up reason %q names neither the throttle nor what is left", why)
				}
			}
		})
	}
}

// The link rate spans the last rounds until they cover the window, so a
// round of a few pages that is mostly a round trip does not hide the
// bulk rate of the ones before it.
func TestRateMeter(t *testing.T) {
	m := rateMeter{window: 100 * time.Millisecond}
	if m.rate() != 0 {
		t.Errorf("rate before any round: %d", m.rate())
	}
	m.add(100<<20, time.Second) // 100 MiB/s
	m.add(4<<10, time.Millisecond)
	if got := m.rate(); got < 99<<20 || got > 101<<20 {
		t.Errorf("after a tiny round: %d B/s, want ~100 MiB/s", got)
	}
	m.add(20<<20, 200*time.Millisecond) // 100 MiB/s over the window alone
	m.add(1<<20, 100*time.Millisecond)  // 10 MiB/s, a whole window
	if got := m.rate(); got != 10<<20 {
		t.Errorf("after a window of 10 MiB/s: %d B/s", got)
	}
}

// The hash of the pause counts against the downtime target: the pages
// left for the pause get only what the target leaves after it, and once
// nothing is left the move switches over whatever the hash costs.
func TestPlannerCountsThePauseHash(t *testing.T) {
	p := newPlanner(300*time.Millisecond, 200*time.Millisecond, 1e9)
	if v, _ := p.next(roundStats{remaining: 15e6, link: 100e6}); v != copyMore {
		t.Errorf("150 ms of pages and 200 ms of hashing against 300 ms: verdict %d, want copyMore", v)
	}
	if v, _ := p.next(roundStats{remaining: 8e6, link: 100e6}); v != switchOver {
		t.Errorf("80 ms of pages and 200 ms of hashing against 300 ms: verdict %d, want switchOver", v)
	}
	slow := newPlanner(300*time.Millisecond, time.Second, 1e9)
	if v, _ := slow.next(roundStats{remaining: 0, link: 100e6}); v != switchOver {
		t.Errorf("nothing left, a hash over the target: verdict %d, want switchOver", v)
	}
	for target, want := range map[time.Duration]time.Duration{
		300 * time.Millisecond: 30 * time.Millisecond, // a tenth
		50 * time.Millisecond:  20 * time.Millisecond, // at least 20 ms
		10 * time.Millisecond:  5 * time.Millisecond,  // at most half
	} {
		if got := switchoverCost(target); got != want {
			t.Errorf("switchoverCost(%s) = %s, want %s", target, got, want)
		}
	}
	if d := pauseHashTime(1 << 30); d <= 0 || d > 10*time.Second {
		t.Errorf("the hash of 1 GiB is estimated at %s", d)
	}
}
