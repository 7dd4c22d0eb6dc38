package lease

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/haven-ha/haven/agent/metrics"
	"github.com/haven-ha/haven/internal/fsmtest"
	"github.com/haven-ha/haven/internal/waitfor"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
	"github.com/haven-ha/haven/quorum"
)

var testLease = quorum.LeaseConfig{Lease: 1500 * time.Millisecond, Margin: 300 * time.Millisecond, FailoverAfter: 3500 * time.Millisecond}

// testConfig gives nodes of every site the same lease.
var testConfig = quorum.Profiles{SameSite: testLease, CrossSite: testLease}

func epochs(resp *havenv1.RenewLeaseResponse) map[string]uint64 {
	out := map[string]uint64{}
	for _, g := range resp.GetGroups() {
		out[g.GetName()] = g.GetEpoch()
	}
	return out
}

// renew asks for a grant while Serve runs.
func renew(t *testing.T, tb *Table, node string) (*havenv1.RenewLeaseResponse, error) {
	t.Helper()
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { tb.Serve(stop); close(done) }()
	defer func() { close(stop); <-done }()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return tb.Renew(ctx, node)
}

// Step 5: a grant lists the node's active groups at their epochs and leaves
// out a group whose move the leader has decided but not yet applied, so
// the node cannot thaw it while it is being restarted elsewhere.
func TestGrantOmitsPendingMoves(t *testing.T) {
	l := fsmtest.New(t)
	web := l.StartOn("web", "n2")
	l.Create(fsmtest.VMGroup("db"))
	db := l.Assign("db", "n2")
	l.StartOn("old", "n2")
	l.Run(&havenv1.Command{Cmd: &havenv1.Command_AssignGroup{AssignGroup: &havenv1.AssignGroupCommand{
		Name: "old", ExpectEpoch: l.FSM.Group("old").GetEpoch(), ExpectDesiredIndex: l.FSM.Group("old").GetDesiredIndex(), Owner: "n3",
		State: havenv1.GroupState_GROUP_STATE_STARTING}}})
	l.Create(fsmtest.VMGroup("off"))

	tb := NewTable(testConfig, "a", l.FSM, func() error { return nil })
	now := time.Now()
	tb.Begin(now, 1)
	tb.Ready()
	resp, err := renew(t, tb, "n2")
	if err != nil {
		t.Fatal(err)
	}
	if got := epochs(resp); len(got) != 2 || got["web"] != web.GetEpoch() || got["db"] != db.GetEpoch() {
		t.Fatalf("grant for n2 = %v, want web@%d and db@%d (old moved to n3, off is not assigned)", got, web.GetEpoch(), db.GetEpoch())
	}
	if resp.GetTerm() != 1 || resp.GetLeaseMillis() != 1500 {
		t.Fatalf("term %d, lease %d ms", resp.GetTerm(), resp.GetLeaseMillis())
	}
	// n2 has been silent since the office began: once its failover time
	// passes, db is claimed for a move and the next grant leaves it out.
	due := tb.ClaimDue([]*havenv1.Group{db}, now.Add(testLease.FailoverAfter+testLease.Lease+time.Second))
	if len(due) != 1 {
		t.Fatalf("claimed %d groups, want db", len(due))
	}
	resp, err = renew(t, tb, "n2")
	if err != nil {
		t.Fatal(err)
	}
	if got := epochs(resp); len(got) != 1 || got["web"] != web.GetEpoch() {
		t.Fatalf("grant with db pending = %v, want web only", got)
	}
	tb.Release("db")
	resp, _ = renew(t, tb, "n2")
	if got := epochs(resp); got["db"] != db.GetEpoch() {
		t.Fatalf("grant after db's release = %v, want db again", got)
	}
}

// Step 3: before its barrier a new leader answers no renewal, and none
// after its term ended; a renewal queued when the term ends is refused.
func TestNoGrantOutsideOffice(t *testing.T) {
	tb := NewTable(testConfig, "a", fsmtest.New(t).FSM, func() error { return nil })
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if _, err := tb.Renew(ctx, "n2"); !errors.Is(err, ErrNotReady) {
		t.Fatalf("renewal outside a term: %v, want ErrNotReady", err)
	}
	tb.Begin(time.Now(), 1)
	if _, err := tb.Renew(ctx, "n2"); !errors.Is(err, ErrNotReady) {
		t.Fatalf("renewal before the barrier: %v, want ErrNotReady", err)
	}
	tb.Ready()
	queued := make(chan error, 1)
	go func() { _, err := tb.Renew(ctx, "n2"); queued <- err }()
	waitfor.Cond(t, 5*time.Second, "the renewal to be queued", func() bool {
		tb.mu.Lock()
		defer tb.mu.Unlock()
		return len(tb.queue) == 1
	})
	tb.End()
	if err := <-queued; !errors.Is(err, ErrUnverified) {
		t.Fatalf("renewal queued when the term ended: %v, want ErrUnverified", err)
	}
	if _, err := tb.Renew(ctx, "n2"); !errors.Is(err, ErrNotReady) {
		t.Fatalf("renewal after leadership ended: %v, want ErrNotReady", err)
	}
}

// Step 2: a batch whose verification fails grants nothing, and the node
// is not counted as holding a lease.
func TestNoGrantWithoutVerification(t *testing.T) {
	lost := errors.New("lost quorum")
	tb := NewTable(testConfig, "a", fsmtest.New(t).FSM, func() error { return lost })
	tb.Begin(time.Now(), 1)
	tb.Ready()
	if _, err := renew(t, tb, "n2"); !errors.Is(err, ErrUnverified) {
		t.Fatalf("renewal with a failed verification: %v", err)
	}
	if tb.Holds("n2", time.Now()) {
		t.Fatal("n2 holds a lease it was never granted")
	}
}

// A group assigned by this leader gets its failover time counted from the
// assignment, whatever its node's silence before.
func TestFailoverCountsFromAssignment(t *testing.T) {
	l := fsmtest.New(t)
	web := l.StartOn("web", "n2")
	tb := NewTable(testConfig, "a", l.FSM, func() error { return nil })
	office := time.Now()
	tb.Begin(office, 1)
	tb.Ready()
	late := office.Add(testLease.FailoverAfter + testLease.Lease + time.Second)
	tb.Assigned("web", late.Add(-time.Second))
	if due := tb.ClaimDue([]*havenv1.Group{web}, late); len(due) != 0 {
		t.Fatal("a group assigned a second ago is due for failover")
	}
	if due := tb.ClaimDue([]*havenv1.Group{web}, late.Add(testLease.FailoverAfter+testLease.Lease)); len(due) != 1 {
		t.Fatal("a group silent past its failover time since its assignment is not due")
	}
}

// A grant marks a group moving on its source until the move commits, so a
// source that lost its VM does not start it afresh; after the commit the
// target is granted the new epoch, unmarked, and the source nothing.
func TestGrantMarksMoveSource(t *testing.T) {
	l := fsmtest.New(t)
	l.AddNode(fsmtest.Node("n3", "a", 8000, 16<<30, nil))
	web := l.StartOn("web", "n2")
	l.Run(&havenv1.Command{Cmd: &havenv1.Command_BeginMove{BeginMove: &havenv1.BeginMoveCommand{
		Operation:   &havenv1.Operation{Id: "mv-1", Group: "web", Kind: havenv1.MoveKind_MOVE_KIND_LIVE, Source: "n2", Target: "n3"},
		ExpectEpoch: web.GetEpoch(), ExpectDesiredIndex: web.GetDesiredIndex()}}})
	tb := NewTable(testConfig, "a", l.FSM, func() error { return nil })
	tb.Begin(time.Now(), 1)
	tb.Ready()
	grant := func(node string) []*havenv1.GroupEpoch {
		resp, err := renew(t, tb, node)
		if err != nil {
			t.Fatal(err)
		}
		return resp.GetGroups()
	}
	if gs := grant("n2"); len(gs) != 1 || gs[0].GetEpoch() != web.GetEpoch() || !gs[0].GetMoving() {
		t.Fatalf("grant for the source during the move = %v, want web@%d moving", gs, web.GetEpoch())
	}
	if gs := grant("n3"); len(gs) != 0 {
		t.Fatalf("grant for the target before the commit = %v, want nothing", gs)
	}
	l.Run(&havenv1.Command{Cmd: &havenv1.Command_CommitMove{CommitMove: &havenv1.CommitMoveCommand{Id: "mv-1"}}})
	if gs := grant("n2"); len(gs) != 0 {
		t.Fatalf("grant for the source after the commit = %v, want nothing", gs)
	}
	if gs := grant("n3"); len(gs) != 1 || gs[0].GetEpoch() != web.GetEpoch()+1 || gs[0].GetMoving() {
		t.Fatalf("grant for the target after the commit = %v, want web@%d not moving", gs, web.GetEpoch()+1)
	}
}

// A leader grants a node of another site the cross-site lease and one of
// its own site the same-site lease; a node it does not know yet gets the
// longer, cross-site one.
func TestGrantByPath(t *testing.T) {
	l := fsmtest.New(t)
	l.AddNode(fsmtest.Node("a2", "a", 8000, 16<<30, nil))
	l.AddNode(fsmtest.Node("b1", "b", 8000, 16<<30, nil))
	wan := quorum.LeaseConfig{Lease: 3 * time.Second, Margin: 400 * time.Millisecond, FailoverAfter: 8 * time.Second}
	tb := NewTable(quorum.Profiles{SameSite: testLease, CrossSite: wan}, "a", l.FSM, func() error { return nil })
	tb.Begin(time.Now(), 1)
	tb.Ready()
	for node, want := range map[string]time.Duration{"a2": testLease.Lease, "b1": wan.Lease, "new": wan.Lease} {
		resp, err := renew(t, tb, node)
		if err != nil {
			t.Fatal(err)
		}
		if got := time.Duration(resp.GetLeaseMillis()) * time.Millisecond; got != want {
			t.Errorf("%s granted %s, want %s", node, got, want)
		}
	}
}

// Renewals that arrive within VerifyEvery of a verification share the
// next one: forty renewals over 400 ms cost a handful of verifications,
// not forty (each one makes Raft heartbeat every member), and every one
// of them is granted.
func TestVerificationsAreSpaced(t *testing.T) {
	var verified atomic.Int32
	tb := NewTable(testConfig, "a", fsmtest.New(t).FSM, func() error { verified.Add(1); return nil })
	const every = 100 * time.Millisecond
	tb.VerifyEvery = every
	tb.Begin(time.Now(), 1)
	tb.Ready()
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { tb.Serve(stop); close(done) }()
	defer func() { close(stop); <-done }()

	const n = 40
	errs := make(chan error, n)
	start := time.Now()
	for i := range n {
		time.Sleep(10 * time.Millisecond) // deliberate: renewals spread over 400 ms
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_, err := tb.Renew(ctx, fmt.Sprintf("n%d", i))
			errs <- err
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Fatalf("renewal: %v", err)
		}
	}
	// One verification per started VerifyEvery, and the first at once.
	if most := int32(time.Since(start)/every) + 2; verified.Load() > most {
		t.Fatalf("%d verifications for %d renewals in %s, want at most %d", verified.Load(), n, time.Since(start).Round(time.Millisecond), most)
	}
}

// The leader times each verification: a slow one is why every node's
// renewals are slow, which the node's own figures cannot tell apart from
// a slow network.
func TestVerificationIsTimed(t *testing.T) {
	tb := NewTable(testConfig, "a", fsmtest.New(t).FSM, func() error { time.Sleep(30 * time.Millisecond); return nil })
	tb.Metrics = metrics.New()
	tb.Begin(time.Now(), 1)
	tb.Ready()
	if _, err := renew(t, tb, "n2"); err != nil {
		t.Fatal(err)
	}
	mfs, err := tb.Metrics.Gatherer().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "haven_lease_verify_duration_seconds" {
			h := mf.GetMetric()[0].GetHistogram()
			if h.GetSampleCount() != 1 || h.GetSampleSum() < 0.03 {
				t.Fatalf("verifications timed: %d, %.3f s in all; want 1 of at least 0.030 s", h.GetSampleCount(), h.GetSampleSum())
			}
			return
		}
	}
	t.Fatal("no haven_lease_verify_duration_seconds")
}
