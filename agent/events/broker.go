// Package events turns what happens in the cluster into a stream of
// events: every command the FSM applies (on every node, leader or not)
// and every membership change gossip reports. Subscribers get them
// through bounded buffers; one that falls behind loses events (counted)
// and never slows the apply path, which runs under Raft's FSM lock.
package events

import (
	"fmt"
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

// Keep is how many applied commands a broker keeps for watchers that
// resume from an index.
const Keep = 4096

// Broker fans events out to its subscribers and keeps the last Keep events
// of the log (membership events are this agent's alone and not kept).
type Broker struct {
	mu      sync.Mutex
	subs    map[*Sub]struct{}
	dropped atomic.Uint64
	// kept is a ring of the last events with an index, oldest at head.
	kept []Event
	head int
	// keptFrom is the lowest index from which every command's event is
	// kept: the first this broker saw, then one past each it let go.
	keptFrom uint64
}

// NewBroker returns a broker with no subscribers.
func NewBroker() *Broker { return &Broker{subs: map[*Sub]struct{}{}} }

// Publish hands e to every subscriber whose filter takes it, without
// waiting: a full buffer drops the event for that subscriber.
func (b *Broker) Publish(e Event) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if e.Index > 0 {
		b.keep(e)
	}
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

func (b *Broker) keep(e Event) {
	if b.keptFrom == 0 {
		b.keptFrom = e.Index
	}
	if len(b.kept) < Keep {
		b.kept = append(b.kept, e)
		return
	}
	b.keptFrom = b.kept[b.head].Index + 1
	b.kept[b.head] = e
	b.head = (b.head + 1) % Keep
}

// CompactedError: the events a watcher asked for are no longer kept.
type CompactedError struct {
	From, KeptFrom uint64
}

func (e *CompactedError) Error() string {
	return fmt.Sprintf("events after index %d are no longer kept (this agent keeps them from index %d): read the state, then watch from its index", e.From, e.KeptFrom)
}

// Watch subscribes to new events that filter takes (nil: every event),
// buffering up to buf of them (at least one), and returns, atomically with
// the subscription, the kept events after index from that filter takes:
// nothing is missed or seen twice between the two. from 0 asks for every
// event kept.
func (b *Broker) Watch(from uint64, buf int, filter func(Event) bool) ([]Event, *Sub, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if from > 0 && b.keptFrom > 0 && from+1 < b.keptFrom {
		return nil, nil, &CompactedError{From: from, KeptFrom: b.keptFrom}
	}
	var replay []Event
	for i := range b.kept {
		e := b.kept[(b.head+i)%len(b.kept)]
		if e.Index > from && (filter == nil || filter(e)) {
			replay = append(replay, e)
		}
	}
	s := &Sub{b: b, ch: make(chan Event, max(buf, 1)), filter: filter}
	b.subs[s] = struct{}{}
	return replay, s, nil
}

// Dropped counts the events every subscriber together lost.
func (b *Broker) Dropped() uint64 { return b.dropped.Load() }

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
