package sim

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/haven-ha/haven/driver"
)

// One clock steps every guest of a driver: a hundred VMs add no goroutine
// each and all of them tick; the ones killed leave and the rest tick on;
// the clock's goroutine ends with the last VM and a new Start begins it
// again.
func TestOneClockStepsEveryGuest(t *testing.T) {
	d := newGuestDriver(t, "n1", t.TempDir(), nil, Guest{Tick: 5 * time.Millisecond})
	leaseEnd := time.Now().Add(time.Hour)
	const n = 100
	ids := make([]driver.VMID, n)
	before := runtime.NumGoroutine()
	for i := range ids {
		ids[i] = driver.VMID{Group: fmt.Sprintf("g%d", i), Resource: "vm"}
		start(t, d, testSpec(ids[i], 1), leaseEnd)
	}
	if grew := runtime.NumGoroutine() - before; grew > 2 {
		t.Errorf("%d VMs started %d goroutines, want the clock's one", n, grew)
	}
	for _, id := range ids {
		waitCounter(t, d, id, 2)
	}

	for _, id := range ids[:n/2] {
		if err := d.Kill(id, 1); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range ids[n/2:] {
		waitWakeups(t, d, id, 2)
	}
	d.clock.mu.Lock()
	left := len(d.clock.vms)
	d.clock.mu.Unlock()
	if left != n/2 {
		t.Errorf("the clock steps %d VMs after %d of %d were killed, want %d", left, n/2, n, n/2)
	}

	for _, id := range ids[n/2:] {
		if err := d.Kill(id, 1); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "the clock's goroutine to end with its last VM", func() bool {
		d.clock.mu.Lock()
		defer d.clock.mu.Unlock()
		return !d.clock.running
	})
	start(t, d, testSpec(ids[0], 2), leaseEnd)
	waitCounter(t, d, ids[0], status(t, d, ids[0]).Counter+2)
}
