package heartbeat

import (
	"sync"

	"github.com/hashicorp/memberlist"
	"log/slog"
)

type pool int

const (
	lanPool pool = iota
	wanPool
)

func (p pool) String() string {
	if p == lanPool {
		return "lan"
	}
	return "wan"
}

// view is what one pool last said about a node.
type view struct {
	seen  bool
	state State
	meta  Meta
	addr  string
}

// peer merges the two pools' views of one node.
type peer struct {
	name     string
	lan, wan view
	reported *Member // the state last turned into an event; nil before any
}

// member applies the state rule: the LAN view once the node is in our LAN
// pool, else the WAN view. A node the WAN pool now places in another site
// (restarted with a new -site) falls back to the WAN view, since our LAN
// pool will never hear from it again.
func (p *peer) member(site string) Member {
	v := p.wan
	if p.lan.seen && (!p.wan.seen || p.wan.meta.Site == site) {
		v = p.lan
	}
	return Member{Name: p.name, Addr: p.wan.addr, Meta: v.meta, State: v.state}
}

// transition is the event, if any, for going from prev to cur. Changes
// between dead and left are not events: the member was already gone.
func transition(prev *Member, cur Member) (EventType, bool) {
	wasAlive := prev != nil && prev.State == StateAlive
	switch {
	case cur.State == StateAlive && !wasAlive:
		return EventJoin, true
	case cur.State == StateAlive && prev.Meta != cur.Meta:
		return EventUpdate, true
	case wasAlive && cur.State == StateDead:
		return EventFailed, true
	case wasAlive && cur.State == StateLeft:
		return EventLeave, true
	}
	return 0, false
}

// poolDelegate receives one pool's callbacks. memberlist calls it with its
// node lock held, so it must not call back into memberlist or block.
type poolDelegate struct {
	m    *Membership
	pool pool
}

// Only NodeMeta matters among the Delegate methods: haven sends nothing
// else over gossip.
func (d *poolDelegate) NodeMeta(limit int) []byte                  { return *d.m.meta.Load() }
func (d *poolDelegate) NotifyMsg([]byte)                           {}
func (d *poolDelegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (d *poolDelegate) LocalState(join bool) []byte                { return nil }
func (d *poolDelegate) MergeRemoteState(buf []byte, join bool)     {}

func (d *poolDelegate) NotifyJoin(n *memberlist.Node)   { d.m.observe(d.pool, n, true) }
func (d *poolDelegate) NotifyUpdate(n *memberlist.Node) { d.m.observe(d.pool, n, true) }
func (d *poolDelegate) NotifyLeave(n *memberlist.Node)  { d.m.observe(d.pool, n, false) }

// observe records what a pool says about n and turns a change of the
// merged state into at most one event.
func (m *Membership) observe(from pool, n *memberlist.Node, alive bool) {
	meta, leaving, err := decodeMeta(n.Meta)
	if err != nil {
		m.log.Warn("undecodable node meta", "pool", from, "node", n.Name, "error", err)
	}
	st := StateAlive
	if !alive {
		// memberlist fires NotifyLeave for failed and departed nodes
		// alike and, in v0.6.0, leaves n.State at its zero value: the
		// real state lives in an unexported field that shadows it
		// (hashicorp/memberlist#293). The leaving flag the node
		// advertised before leaving tells the two apart; the State check
		// takes over if memberlist ever fills the field in.
		st = StateDead
		if leaving || n.State == memberlist.StateLeft {
			st = StateLeft
		}
	}
	v := view{seen: true, state: st, meta: meta, addr: n.Address()}

	m.mu.Lock()
	defer m.mu.Unlock()
	p := m.peers[n.Name]
	if p == nil {
		p = &peer{name: n.Name}
		m.peers[n.Name] = p
	}
	if from == lanPool {
		p.lan = v
	} else {
		p.wan = v
	}
	cur := p.member(m.site)
	if typ, ok := transition(p.reported, cur); ok {
		m.queue.push(Event{Type: typ, Member: cur})
	}
	p.reported = &cur
	if from == wanPool && m.needsLANJoin(p) {
		select {
		case m.kick <- struct{}{}:
		default: // a reconcile is already pending and will see this peer
		}
	}
}

// needsLANJoin: p is of our site and alive by WAN, but not alive in our
// LAN pool. Called with m.mu held.
func (m *Membership) needsLANJoin(p *peer) bool {
	return p.name != m.name &&
		p.wan.state == StateAlive && p.wan.meta.Site == m.site && p.wan.meta.LANAddr != "" &&
		!(p.lan.seen && p.lan.state == StateAlive)
}

// eventQueue decouples memberlist from the receiver of Config.Events.
// Events are appended under the caller's lock, so the queue order is the
// order of the merged state changes, and one goroutine sends them on.
type eventQueue struct {
	log   *slog.Logger
	mu    sync.Mutex
	items []Event
	ready chan struct{} // holds a token while items may be non-empty
}

func newEventQueue(log *slog.Logger) *eventQueue {
	return &eventQueue{log: log, ready: make(chan struct{}, 1)}
}

// push is safe on a nil queue, which is what a Membership without
// Config.Events has.
func (q *eventQueue) push(e Event) {
	if q == nil {
		return
	}
	q.mu.Lock()
	q.items = append(q.items, e)
	n := len(q.items)
	q.mu.Unlock()
	if n >= 1024 && n&(n-1) == 0 {
		q.log.Warn("membership events are not being consumed", "backlog", n)
	}
	select {
	case q.ready <- struct{}{}:
	default:
	}
}

func (q *eventQueue) pop() (Event, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.items) == 0 {
		return Event{}, false
	}
	e := q.items[0]
	q.items[0] = Event{}
	q.items = q.items[1:]
	return e, true
}

func (q *eventQueue) run(out chan<- Event, done <-chan struct{}) {
	for {
		select {
		case <-q.ready:
		case <-done:
			return
		}
		for e, ok := q.pop(); ok; e, ok = q.pop() {
			select {
			case out <- e:
			case <-done:
				return
			}
		}
	}
}
