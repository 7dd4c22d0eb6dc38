package qmp

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"
)

// Event names the driver waits for.
const (
	EventStop          = "STOP"
	EventResume        = "RESUME"
	EventShutdown      = "SHUTDOWN"
	EventDeviceDeleted = "DEVICE_DELETED"
	EventMigration     = "MIGRATION"
	EventMigrationPass = "MIGRATION_PASS"
	EventWatchdog      = "WATCHDOG"
	EventBlockIOError  = "BLOCK_IO_ERROR"
)

// Event is one asynchronous message from QEMU.
type Event struct {
	Name string
	// Data is the event's "data" member, absent for some events (STOP).
	Data json.RawMessage
	// Timestamp is when QEMU emitted the event, by QEMU's wall clock.
	Timestamp time.Time
}

// Decode decodes the event's data into v.
func (e Event) Decode(v any) error {
	if len(e.Data) == 0 {
		return fmt.Errorf("qmp event %s has no data", e.Name)
	}
	if err := json.Unmarshal(e.Data, v); err != nil {
		return fmt.Errorf("qmp event %s: decode data: %w", e.Name, err)
	}
	return nil
}

// MigrationEventData is the data of a MIGRATION event.
type MigrationEventData struct {
	Status string `json:"status"`
}

// DeviceDeletedData is the data of a DEVICE_DELETED event. Device, the
// device's id, is empty for the event a device's own backend emits (a
// virtio-blk emits one for its virtio child before the one with its id);
// Path is the QOM path.
type DeviceDeletedData struct {
	Device string `json:"device"`
	Path   string `json:"path"`
}

// ShutdownData is the data of a SHUTDOWN event.
type ShutdownData struct {
	Guest  bool   `json:"guest"`
	Reason string `json:"reason"`
}

// DeviceDeleted matches the DEVICE_DELETED event of the device with that
// id, and no other (see DeviceDeletedData).
func DeviceDeleted(id string) func(Event) bool {
	return func(e Event) bool {
		var d DeviceDeletedData
		return e.Name == EventDeviceDeleted && e.Decode(&d) == nil && d.Device == id
	}
}

// MigrationStatus matches a MIGRATION event with one of the statuses.
func MigrationStatus(statuses ...string) func(Event) bool {
	return func(e Event) bool {
		var d MigrationEventData
		if e.Name != EventMigration || e.Decode(&d) != nil {
			return false
		}
		for _, s := range statuses {
			if d.Status == s {
				return true
			}
		}
		return false
	}
}

// Subscription receives, in order, every event of the names it was made
// for that QEMU emits from its creation until Close. Events wait in an
// unbounded queue, so a subscriber that reads slowly loses none and
// delays no one else.
type Subscription struct {
	c     *Client
	names map[string]bool // nil: every event
	ch    chan Event
	quit  chan struct{}
	once  sync.Once

	mu    sync.Mutex
	queue []Event
	ended bool          // the connection ended: the queue only shrinks now
	wake  chan struct{} // capacity 1: the queue grew or ended
}

// Subscribe starts a subscription to the events with the given names, or
// to every event if none is given. Subscribe before sending the command
// whose events you wait for, so none can come in between. Close it when
// done with it: until then it keeps a goroutine and every event it was
// sent. On a connection that has ended it returns a subscription that is
// already over.
func (c *Client) Subscribe(names ...string) *Subscription {
	s := &Subscription{
		c:    c,
		ch:   make(chan Event),
		quit: make(chan struct{}),
		wake: make(chan struct{}, 1),
	}
	if len(names) > 0 {
		s.names = make(map[string]bool, len(names))
		for _, n := range names {
			s.names[n] = true
		}
	}
	c.mu.Lock()
	if c.err != nil {
		s.ended = true
	} else {
		c.subs[s] = struct{}{}
	}
	c.mu.Unlock()
	go s.pump()
	return s
}

// dispatch queues an event to every subscriber that wants it. It runs on
// the reader goroutine and never blocks.
func (c *Client) dispatch(m message) {
	e := Event{Name: m.Event, Data: m.Data}
	if m.Timestamp != nil {
		e.Timestamp = time.Unix(m.Timestamp.Seconds, m.Timestamp.Microseconds*1000)
	}
	c.log.Debug("qmp event", "event", e.Name, "data", string(e.Data))
	c.mu.Lock()
	defer c.mu.Unlock()
	for s := range c.subs {
		if s.names == nil || s.names[e.Name] {
			s.push(e)
		}
	}
}

func (s *Subscription) push(e Event) {
	s.mu.Lock()
	s.queue = append(s.queue, e)
	s.mu.Unlock()
	s.signal()
}

// end is called with the client's lock held when the connection ends.
func (s *Subscription) end() {
	s.mu.Lock()
	s.ended = true
	s.mu.Unlock()
	s.signal()
}

func (s *Subscription) signal() {
	select {
	case s.wake <- struct{}{}:
	default: // a wake-up is already pending
	}
}

// pump moves events from the queue to the channel C returns. It closes
// that channel when the connection has ended and the queue is empty, or
// at once when the subscription is closed.
func (s *Subscription) pump() {
	defer close(s.ch)
	for {
		s.mu.Lock()
		if len(s.queue) == 0 {
			ended := s.ended
			s.mu.Unlock()
			if ended {
				return
			}
			select {
			case <-s.wake:
				continue
			case <-s.quit:
				return
			}
		}
		e := s.queue[0]
		s.queue[0] = Event{}
		s.queue = s.queue[1:]
		s.mu.Unlock()
		select {
		case s.ch <- e:
		case <-s.quit:
			return
		}
	}
}

// C delivers the subscription's events in order. It is closed after
// Close, or after the connection ended and every event queued before its
// end was delivered.
func (s *Subscription) C() <-chan Event { return s.ch }

// Next returns the next event. It fails with ctx's error when ctx ends
// first, and with an error wrapping ErrClosed when the subscription is
// closed or the connection has ended and no event is left.
func (s *Subscription) Next(ctx context.Context) (Event, error) {
	select {
	case e, ok := <-s.ch:
		if !ok {
			return Event{}, s.closedErr()
		}
		return e, nil
	case <-ctx.Done():
		return Event{}, fmt.Errorf("qmp: waiting for an event: %w", ctx.Err())
	}
}

// Wait returns the first event that match accepts, discarding the ones
// before it; it fails as Next does.
func (s *Subscription) Wait(ctx context.Context, match func(Event) bool) (Event, error) {
	for {
		e, err := s.Next(ctx)
		if err != nil {
			return Event{}, err
		}
		if match(e) {
			return e, nil
		}
	}
}

func (s *Subscription) closedErr() error {
	if err := s.c.Err(); err != nil {
		return fmt.Errorf("qmp: waiting for an event: %w", err)
	}
	return fmt.Errorf("qmp: waiting for an event: subscription closed: %w", ErrClosed)
}

// Close ends the subscription and drops the events it still holds.
// Closing twice is harmless.
func (s *Subscription) Close() {
	s.once.Do(func() {
		s.c.mu.Lock()
		delete(s.c.subs, s)
		s.c.mu.Unlock()
		close(s.quit)
	})
}
