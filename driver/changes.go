package driver

import (
	"sync"
	"sync/atomic"
)

// ChangeCount is the count a Watched driver keeps, with the signal each
// change sends: a driver embeds one and moves it (Add) before a change
// shows in List.
type ChangeCount struct {
	n    atomic.Uint64
	once sync.Once
	ch   chan struct{}
}

func (c *ChangeCount) signal() chan struct{} {
	c.once.Do(func() { c.ch = make(chan struct{}, 1) })
	return c.ch
}

// Add counts delta changes and signals them. It never blocks: a signal
// not yet received covers the ones after it.
func (c *ChangeCount) Add(delta uint64) {
	c.n.Add(delta)
	select {
	case c.signal() <- struct{}{}:
	default:
	}
}

// Load is the count.
func (c *ChangeCount) Load() uint64 { return c.n.Load() }

// Changed receives after changes were counted (see Watched).
func (c *ChangeCount) Changed() <-chan struct{} { return c.signal() }
