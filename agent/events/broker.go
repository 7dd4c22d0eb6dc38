// Package events turns what happens in the cluster into a stream of
// events: every command the FSM applies (on every node, leader or not)
// and every membership change gossip reports. Subscribers get them
// through bounded buffers; one that falls behind loses events (counted)
// and never slows the apply path, which runs under Raft's FSM lock.
package events

import (
	"sync"
	"sync/atomic"
	"time"
)

// Kind says what happened.
type Kind string

// Event is one thing that happened.
type Event struct {
	Kind Kind
	// Index is the log index that applied it; 0 for a membership event.
	Index uint64
	Time  time.Time
	Group string
	Node  string
	// Epoch, State and Reason describe a group's change when there is one.
	Epoch  uint64
	State  string
	Reason string
	// Refused holds the FSM's refusal of a committed command; the state
	// did not change.
	Refused string
}

// Broker fans events out to its subscribers.
type Broker struct {
	mu      sync.RWMutex
	subs    map[*Sub]struct{}
	dropped atomic.Uint64
}

// NewBroker returns a broker with no subscribers.
func NewBroker() *Broker { return &Broker{subs: map[*Sub]struct{}{}} }

// Publish hands e to every subscriber whose filter takes it, without
// waiting: a full buffer drops the event for that subscriber.
func (b *Broker) Publish(e Event) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	for s := range b.subs {
		if s.filter != nil && !s.filter(e) {
			continue
		}
		select {
		case s.ch <- e:
		default:
			s.dropped.Add(1)
			b.dropped.Add(1)
		}
	}
}

// Dropped counts the events every subscriber together lost.
func (b *Broker) Dropped() uint64 { return b.dropped.Load() }

// Subscribe returns a subscription buffering up to buf events (at least
// one) that filter takes (nil: every event).
func (b *Broker) Subscribe(buf int, filter func(Event) bool) *Sub {
	s := &Sub{b: b, ch: make(chan Event, max(buf, 1)), filter: filter}
	b.mu.Lock()
	b.subs[s] = struct{}{}
	b.mu.Unlock()
	return s
}

// Sub is one subscription.
type Sub struct {
	b       *Broker
	ch      chan Event
	filter  func(Event) bool
	dropped atomic.Uint64
	once    sync.Once
}

// C delivers the events; it is closed by Close.
func (s *Sub) C() <-chan Event { return s.ch }

// Dropped counts the events this subscriber lost to a full buffer.
func (s *Sub) Dropped() uint64 { return s.dropped.Load() }

// Close ends the subscription and closes C.
func (s *Sub) Close() {
	s.once.Do(func() {
		s.b.mu.Lock()
		delete(s.b.subs, s)
		s.b.mu.Unlock()
		close(s.ch)
	})
}
