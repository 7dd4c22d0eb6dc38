package leader

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/haven-ha/haven/heartbeat"
	"github.com/haven-ha/haven/internal/waitfor"
)

// After a partition heals, gossip may go on calling a voter failed while
// it has voted for this leader and renews with it. Demoting it with the
// really silent one would leave the leader the only voter: its death
// would then leave no quorum. A renewing voter keeps its vote; once it
// falls silent too, both lose theirs.
func TestVoterThatRenewsKeepsItsVote(t *testing.T) {
	tl := newTestLeader(t, nil)
	tl.cfg.Stabilization, tl.cfg.ReapAfter = 200*time.Millisecond, time.Hour
	for _, n := range []string{"n1", "n2", "n3"} {
		tl.raft.conf = append(tl.raft.conf, raft.Server{ID: raft.ServerID(n), Suffrage: raft.Voter})
	}
	tl.members.mu.Lock()
	tl.members.m[1].State, tl.members.m[2].State = heartbeat.StateDead, heartbeat.StateDead
	tl.members.mu.Unlock()

	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { tl.leases.Serve(stop); close(done) }()
	defer func() { close(stop); <-done }()
	reconcile := func() []string {
		t.Helper()
		if err := tl.reconcileMembers(tl.term); err != nil {
			t.Fatal(err)
		}
		tl.raft.mu.Lock()
		defer tl.raft.mu.Unlock()
		return slices.Clone(tl.raft.changes)
	}

	// Gossip has called n2 and n3 failed for twice the stabilization
	// time; n2 renewed all along, every quarter of it (the sleep is the
	// renewal interval, not a wait for anything).
	reconcile()
	for end := time.Now().Add(2 * tl.cfg.Stabilization); time.Now().Before(end); time.Sleep(tl.cfg.Stabilization / 4) {
		if _, err := tl.leases.Renew(context.Background(), "n2"); err != nil {
			t.Fatal(err)
		}
	}
	if got := reconcile(); len(got) != 0 {
		t.Fatalf("changes %v while n2 renews, want none: n1 would be the only voter", got)
	}
	// n2 now falls silent: once it has been for the stabilization time,
	// one reconcile demotes both together.
	var got []string
	waitfor.Cond(t, 10*tl.cfg.Stabilization, "a reconcile that changes the configuration", func() bool {
		got = reconcile()
		return len(got) > 0
	})
	if want := []string{"demote n2", "demote n3"}; !slices.Equal(got, want) {
		t.Fatalf("changes %v once n2 is silent too, want %v", got, want)
	}
}

// A term writes one barrier, however often it reconciles: later ones
// would wait for nothing (every entry after it is the leader's own) and
// only grow the log, all of a steady cluster's log growth at 100 agents.
func TestOneBarrierPerTerm(t *testing.T) {
	tl := newTestLeader(t, nil)
	tl.mu.Lock()
	tl.cur = nil
	tl.mu.Unlock()
	tl.cfg.ReconcileInterval = 10 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { tl.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	counts := func() (barriers, reconciles int) {
		tl.raft.mu.Lock()
		defer tl.raft.mu.Unlock()
		return tl.raft.barriers, tl.raft.confReads
	}
	for term := 1; term <= 2; term++ {
		_, from := counts()
		tl.raft.leaderCh <- true
		waitfor.Cond(t, 5*time.Second, "five reconciles", func() bool { _, r := counts(); return r >= from+5 })
		if b, r := counts(); b != term {
			t.Fatalf("term %d: %d barriers in all after %d reconciles, want %d", term, b, r, term)
		}
		tl.raft.leaderCh <- false
		waitfor.Cond(t, 5*time.Second, "the term to end", func() bool { return tl.current() == nil })
	}
}
