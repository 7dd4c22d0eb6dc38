package sim

import (
	"sync"
	"time"
)

// guestClock is the driver's one guest timer: every period it steps each VM
// that runs a guest loop, one after the other, in a single wakeup. A
// goroutine and a ticker per VM cost the Go runtime a wake and a park per
// VM per period, and with a hundred VMs that was most of an idle agent's
// CPU (the scale scenario's profile of a quiet agent).
//
// A VM joins at the next tick, so its first tick comes within one period
// of its start. One that Activate hands over steps at once: its guest was
// paused at the source since its last tick. A VM leaves once a step finds
// it holding no guest. The goroutine runs only while some VM is in the
// set, so a driver with none holds nothing.
//
// The ticker drops ticks as the per-VM one did: after a SIGSTOP of the
// agent or a slow round, the guests step once, and each step checks its
// gate before anything else.
type guestClock struct {
	period time.Duration

	mu      sync.Mutex
	vms     []*vm
	asap    []*vm // activated VMs to step before the next tick
	running bool
	kick    chan struct{} // one pending wakeup for asap
}

func newGuestClock(period time.Duration) *guestClock {
	return &guestClock{period: period, kick: make(chan struct{}, 1)}
}

// add puts v in the loop; with asap, v also steps once at once.
func (c *guestClock) add(v *vm, asap bool) {
	c.mu.Lock()
	c.vms = append(c.vms, v)
	if asap {
		c.asap = append(c.asap, v)
	}
	if !c.running {
		c.running = true
		go c.run()
	}
	c.mu.Unlock()
	if asap {
		select {
		case c.kick <- struct{}{}:
		default:
		}
	}
}

func (c *guestClock) run() {
	t := time.NewTicker(c.period)
	defer t.Stop()
	for {
		var due []*vm
		select {
		case <-t.C:
			c.mu.Lock()
			due = append(due, c.vms...)
			c.asap = nil
			c.mu.Unlock()
		case <-c.kick:
			c.mu.Lock()
			due, c.asap = c.asap, nil
			c.mu.Unlock()
		}
		var gone map[*vm]bool
		for _, v := range due {
			if !v.step() {
				if gone == nil {
					gone = make(map[*vm]bool)
				}
				gone[v] = true
			}
		}
		if !c.drop(gone) {
			return
		}
	}
}

// drop takes the VMs in gone out of the loop and reports whether any is
// left; when none is, the loop ends, under the lock that add starts it
// under, so a VM added meanwhile starts a new one.
func (c *guestClock) drop(gone map[*vm]bool) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(gone) > 0 {
		kept := c.vms[:0]
		for _, v := range c.vms {
			if !gone[v] {
				kept = append(kept, v)
			}
		}
		clear(c.vms[len(kept):])
		c.vms = kept
	}
	if len(c.vms) == 0 && len(c.asap) == 0 {
		c.running = false
		return false
	}
	return true
}
