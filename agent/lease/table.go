// Package lease is both halves of the lease protocol of quorum/lease.go:
// the leader's grant table (Table), which answers renewals in batches and
// tells the leader when a node's groups may be restarted elsewhere, and
// the node's renewer (Renewer). The protocol's rules are quorum's; this
// package owns the clocks, the locks and the batching.
package lease

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/haven-ha/haven/agent/metrics"
	"github.com/haven-ha/haven/fsm"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
	"github.com/haven-ha/haven/quorum"
)

// Groups is the state the table reads to list a node's groups and to
// find its site.
type Groups interface {
	// GroupsFor lists the groups a node owns (and those moving to it).
	GroupsFor(node string) []*havenv1.Group
	Operation(id string) *havenv1.Operation
	Node(name string) *havenv1.Node
}

// Errors of Renew.
var (
	// ErrNotReady: this node is not a leader whose barrier is applied.
	ErrNotReady = errors.New("not a leader ready to grant leases")
	// ErrUnverified: the leader could not confirm with a quorum that it
	// still leads, or lost leadership while the request waited.
	ErrUnverified = errors.New("leadership could not be verified")
)

type request struct {
	node string
	done chan answer
}

type answer struct {
	resp *havenv1.RenewLeaseResponse
	err  error
}

// Table is the leader's grant table. Outside a term of office every
// renewal is refused. Renewals are queued and answered in batches: one
// verification, started after every request of the batch arrived, covers
// them all (step 2).
type Table struct {
	cfg quorum.Profiles
	// site is this node's: when it leads, nodes of other sites get the
	// cross-site profile.
	site   string
	state  Groups
	verify func() error

	mu     sync.Mutex
	grants *quorum.Grants // nil outside a term
	term   uint64
	// pending holds the groups whose move the leader has decided but not
	// yet committed and applied: no grant lists them (step 5).
	pending map[string]bool
	// assigned is when this leader assigned each group to its owner: a
	// group gets failover_after on its node from then, whatever the node's
	// earlier silence (quorum.Grants.GroupFailoverAt).
	assigned map[string]time.Time
	queue    []request
	wake     chan struct{}

	// Metrics counts the renewals answered; nil counts nothing. Set it
	// before Serve runs.
	Metrics *metrics.Metrics
	// VerifyEvery is the least time from one verification's start to the
	// next; renewals that arrive meanwhile wait and share the next one.
	// Each verification makes Raft heartbeat every member at once, so one
	// per renewal cost, at 100 agents (80 renewals a second), a fifth of
	// the leader's CPU and most of each member's. Raft's own heartbeat
	// interval is the natural bound; zero verifies every batch as soon as
	// it arrives. Set it before Serve runs.
	VerifyEvery time.Duration
}

// NewTable returns the table of a node in site that lists groups from
// state and verifies leadership with verify before each batch.
func NewTable(cfg quorum.Profiles, site string, state Groups, verify func() error) *Table {
	return &Table{cfg: cfg, site: site, state: state, verify: verify, wake: make(chan struct{}, 1)}
}

// crossSite tells whether node's path to this leader crosses a WAN: it is
// in another site, or not known yet (the longer profile is the safe one).
func (t *Table) crossSite(node string) bool {
	n := t.state.Node(node)
	return n == nil || n.GetSite() != t.site
}

// Begin starts a term of office at the time this node learned it leads.
// Everything of the previous term is forgotten.
func (t *Table) Begin(office time.Time, term uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.grants = quorum.NewGrants(t.cfg, office, t.crossSite)
	t.term = term
	t.pending = map[string]bool{}
	t.assigned = map[string]time.Time{}
}

// Ready is called once the leader's barrier is applied (step 3): from now
// on renewals may be answered.
func (t *Table) Ready() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.grants != nil {
		t.grants.Ready()
	}
}

// End ends the term: queued renewals are refused.
func (t *Table) End() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.grants = nil
	for _, r := range t.queue {
		r.done <- answer{err: ErrUnverified}
	}
	t.queue = nil
}

// Renew queues a renewal for node and waits for its batch.
func (t *Table) Renew(ctx context.Context, node string) (*havenv1.RenewLeaseResponse, error) {
	r := request{node: node, done: make(chan answer, 1)}
	t.mu.Lock()
	if t.grants == nil || !t.grants.CanGrant() {
		t.mu.Unlock()
		return nil, ErrNotReady
	}
	t.queue = append(t.queue, r)
	t.mu.Unlock()
	select {
	case t.wake <- struct{}{}:
	default:
	}
	select {
	case ans := <-r.done:
		return ans.resp, ans.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Serve verifies and grants batches until stop is closed; the leader runs
// it during a term of office.
func (t *Table) Serve(stop <-chan struct{}) {
	var last time.Time
	for {
		select {
		case <-stop:
			return
		case <-t.wake:
		}
		if wait := time.Until(last.Add(t.VerifyEvery)); wait > 0 {
			gap := time.NewTimer(wait)
			select {
			case <-stop:
				gap.Stop()
				return
			case <-gap.C:
			}
		}
		last = time.Now()
		t.mu.Lock()
		batch := t.queue
		t.queue = nil
		t.mu.Unlock()
		if len(batch) == 0 {
			continue
		}
		// Every request of the batch arrived before this verification
		// started.
		v0 := time.Now()
		err := t.verify()
		t.Metrics.Verified(time.Since(v0))
		t.mu.Lock()
		if err != nil || t.grants == nil {
			t.mu.Unlock()
			for _, r := range batch {
				r.done <- answer{err: ErrUnverified}
			}
			t.Metrics.Renewals(false, len(batch))
			continue
		}
		// Recording the grant after the verification, under the lock
		// that also guards the failover decision, makes "granted" and
		// "decided to move" mutually ordered.
		tg := time.Now()
		for _, r := range batch {
			p := t.grants.Grant(r.node, tg)
			r.done <- answer{resp: t.answer(r.node, p.Lease)}
		}
		t.mu.Unlock()
		t.Metrics.Renewals(true, len(batch))
	}
}

// answer grants a lease of length lease and lists the node's groups at
// their epochs, leaving out pending moves. Called with t.mu held.
func (t *Table) answer(node string, lease time.Duration) *havenv1.RenewLeaseResponse {
	resp := &havenv1.RenewLeaseResponse{LeaseMillis: uint64(lease.Milliseconds()), Term: t.term}
	for _, g := range t.state.GroupsFor(node) {
		if g.GetOwner() == node && fsm.Active(g.GetState()) && !t.pending[g.GetSpec().GetName()] {
			resp.Groups = append(resp.Groups, &havenv1.GroupEpoch{Name: g.GetSpec().GetName(), Epoch: g.GetEpoch(),
				Moving: fsm.MovingFrom(t.state.Operation(g.GetOperation()), node)})
		}
	}
	return resp
}

// Holds reports whether node renewed with this leader recently enough to
// be running now.
func (t *Table) Holds(node string, now time.Time) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.grants != nil && now.Before(t.grants.LeaseEnd(node))
}

// Heard is when node last renewed with this leader: its latest grant
// this term, zero if none or outside a term.
func (t *Table) Heard(node string) time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.grants == nil {
		return time.Time{}
	}
	return t.grants.LastGrant(node)
}

// Silence tells when node's silence started (its last grant, or this
// term's start if later) and from when it surely holds no lease, as the
// failover of its groups was decided on; zero times outside a term.
func (t *Table) Silence(node string) (since, fencedAt time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.grants == nil {
		return time.Time{}, time.Time{}
	}
	return t.grants.SilentSince(node), t.grants.FencedAt(node)
}

// Stalled restarts every node's silence at now: this process could not
// run (SIGSTOP, starvation), so nodes could not renew with it either.
func (t *Table) Stalled(now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.grants != nil {
		t.grants.Stalled(now)
	}
}

// Overdue returns the nodes, of those given, silent past their failover
// time at now: only their groups can be due (a group's failover time is
// never before its owner's), so the leader's look ten times a second
// costs the nodes, not every group of the cluster. None outside a term or
// before the barrier.
func (t *Table) Overdue(nodes []string, now time.Time) []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.grants == nil || !t.grants.CanGrant() {
		return nil
	}
	var out []string
	for _, n := range nodes {
		if !now.Before(t.grants.FailoverAt(n)) {
			out = append(out, n)
		}
	}
	return out
}

// ClaimDue returns the groups, of those given, whose owner has been silent
// past their failover time at now, and marks them pending: from this call
// on no grant lists them, until Release. Nothing is due before the
// barrier, or outside a term. The caller must Release every group it got,
// whether its move committed or not.
func (t *Table) ClaimDue(groups []*havenv1.Group, now time.Time) []*havenv1.Group {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.grants == nil || !t.grants.CanGrant() {
		return nil
	}
	var due []*havenv1.Group
	for _, g := range groups {
		name := g.GetSpec().GetName()
		if now.Before(t.grants.GroupFailoverAt(g.GetOwner(), t.assigned[name])) || t.pending[name] {
			continue
		}
		t.pending[name] = true
		due = append(due, g)
	}
	return due
}

// Release ends the pending state of claimed groups.
func (t *Table) Release(names ...string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, n := range names {
		delete(t.pending, n)
	}
}

// Assigned records that this leader committed group to an owner at now:
// the group's failover clock starts there.
func (t *Table) Assigned(group string, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.assigned != nil {
		t.assigned[group] = now
	}
}
