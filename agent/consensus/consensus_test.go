package consensus

import (
	"context"
	"errors"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/haven-ha/haven/fsm"
	"github.com/haven-ha/haven/internal/fsmtest"
	"github.com/haven-ha/haven/internal/logging/logtest"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
	"github.com/haven-ha/haven/quorum"
)

// freeAddr is a loopback address nothing listens on now.
func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// single opens and bootstraps a one-node Raft on loopback.
func single(t testing.TB) (*Node, *fsm.FSM) {
	t.Helper()
	addr := freeAddr(t)
	f := fsm.New()
	n, err := Open(Config{
		Name: "n1", Dir: t.TempDir(), BindAddr: addr, AdvertiseAddr: addr,
		HeartbeatTimeout: 100 * time.Millisecond, ElectionTimeout: 100 * time.Millisecond, LeaderLeaseTimeout: 50 * time.Millisecond,
		SnapshotThreshold: 8192, SnapshotInterval: time.Minute, Logger: logtest.New(t),
	}, f)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Close)
	if n.HasState() {
		t.Fatal("a fresh node has state")
	}
	n.MaybeBootstrap(context.Background(), 1, fixed([]quorum.Peer{{ID: "n1", RaftAddr: addr, Expect: 1}}), func(context.Context, quorum.Peer) (bool, error) {
		return false, errors.New("nobody else to ask")
	})
	select {
	case <-n.LeaderCh():
	case <-time.After(10 * time.Second):
		t.Fatal("the single node never led")
	}
	if !n.HasState() || !n.IsLeader() || n.LeaderID() != "n1" {
		t.Fatalf("after bootstrap: state %v, leader %v (%q)", n.HasState(), n.IsLeader(), n.LeaderID())
	}
	return n, f
}

// A commit is applied by the FSM before Commit returns, stamped with the
// time; the FSM's refusal is in the result, not the error.
func TestCommitAppliesAndStamps(t *testing.T) {
	n, f := single(t)
	before := time.Now()
	res, err := n.Commit(&havenv1.Command{RequestId: "r1", Cmd: &havenv1.Command_CreateGroup{CreateGroup: &havenv1.CreateGroupCommand{Spec: fsmtest.VMGroup("web")}}})
	if err != nil || res.Err != nil {
		t.Fatal(err, res)
	}
	g := f.Group("web")
	if g == nil || g.GetCreateIndex() != res.Index || g.GetCreateTime().AsTime().Before(before.Add(-time.Second)) {
		t.Fatalf("group %v after a commit at index %d", g, res.Index)
	}
	res, err = n.Commit(&havenv1.Command{Cmd: &havenv1.Command_DeleteGroup{DeleteGroup: &havenv1.DeleteGroupCommand{Name: "nope"}}})
	if err != nil || res.Err == nil || res.Err.Code != fsm.CodeNotFound {
		t.Fatalf("refused command: %v %v", res, err)
	}
	st := n.Status()
	// Raft counts an entry applied a moment after the FSM answered: the
	// commit index is the firm figure.
	if st.State != "Leader" || st.CommitIndex < res.Index || st.Term == 0 || len(st.Servers) != 1 {
		t.Fatalf("status %+v", st)
	}
}

// Reads: a consistent read waits for the leader loop's go-ahead; read
// metadata names this node and the index it answers at.
func TestConsistentReadNeedsTheBarrier(t *testing.T) {
	n, f := single(t)
	if err := n.ConsistentRead(); !errors.Is(err, ErrReadsNotReady) {
		t.Fatalf("consistent read before the barrier: %v", err)
	}
	if err := n.Barrier(time.Second); err != nil {
		t.Fatal(err)
	}
	n.SetReadsReady(true)
	if err := n.ConsistentRead(); err != nil {
		t.Fatalf("consistent read on the leader: %v", err)
	}
	m := n.ReadMeta(true)
	if m.GetAnsweredBy() != "n1" || !m.GetConsistent() || !m.GetKnownLeader() || m.GetIndex() != f.Index() {
		t.Fatalf("read meta %v", m)
	}
}

// Raft's errors become domain errors: nothing raft-specific leaves the
// package.
func TestRaftErrorsBecomeDomainErrors(t *testing.T) {
	n, _ := single(t)
	n.Close()
	if _, err := n.Commit(&havenv1.Command{Cmd: &havenv1.Command_DeleteGroup{DeleteGroup: &havenv1.DeleteGroupCommand{Name: "x"}}}); !errors.Is(err, ErrShutdown) {
		t.Fatalf("commit after shutdown: %v", err)
	}
	// Lost leadership is an unknown outcome for a command in flight, and
	// plain "not the leader" for a check that had nothing in flight.
	for _, err := range []error{raft.ErrLeadershipLost, raft.ErrEnqueueTimeout, raft.ErrAbortedByRestore} {
		var unknown *OutcomeUnknownError
		if got := commitError(err, "r7"); !errors.As(got, &unknown) || unknown.RequestID != "r7" ||
			got.Error() != `leadership changed while committing: outcome unknown, retry with request_id "r7"` {
			t.Errorf("commit failing with %v: %v", err, got)
		}
	}
	for err, want := range map[error]error{raft.ErrLeadershipLost: ErrNotLeader, raft.ErrNotLeader: ErrNotLeader,
		raft.ErrLeadershipTransferInProgress: ErrNotLeader, raft.ErrRaftShutdown: ErrShutdown} {
		if got := raftError(err); got != want {
			t.Errorf("raftError(%v) = %v, want %v", err, got, want)
		}
		if err != raft.ErrLeadershipLost {
			if got := commitError(err, "r7"); got != want {
				t.Errorf("commitError(%v) = %v, want %v", err, got, want)
			}
		}
	}
}

// fresh opens a node with no Raft state.
func fresh(t *testing.T) *Node {
	t.Helper()
	addr := freeAddr(t)
	n, err := Open(Config{
		Name: "n1", Dir: t.TempDir(), BindAddr: addr, AdvertiseAddr: addr,
		HeartbeatTimeout: 100 * time.Millisecond, ElectionTimeout: 100 * time.Millisecond, LeaderLeaseTimeout: 50 * time.Millisecond,
		SnapshotThreshold: 8192, SnapshotInterval: time.Minute, Logger: logtest.New(t),
	}, fsm.New())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Close)
	return n
}

// A bootstrap asks only the peers started with expect, which may bootstrap
// at the same moment; a joiner's state is what its gossip metadata says.
// Asking every peer, any failure starting over, never finished at 100
// agents.
func TestBootstrapAsksOnlyPeersStartedWithExpect(t *testing.T) {
	var asked []string
	ask := func(_ context.Context, p quorum.Peer) (bool, error) {
		asked = append(asked, p.ID)
		if p.Expect == 0 {
			return false, errors.New("a joiner is too busy to answer")
		}
		return false, nil
	}

	n := fresh(t)
	n.MaybeBootstrap(context.Background(), 2, fixed([]quorum.Peer{
		{ID: "n1", RaftAddr: "127.0.0.1:1", Expect: 2}, {ID: "n2", RaftAddr: "127.0.0.1:2", Expect: 2},
		{ID: "j1", Expect: 0}, {ID: "j2", Expect: 0},
	}), ask)
	if !n.HasState() || !slices.Equal(asked, []string{"n2"}) {
		t.Fatalf("bootstrapped %v after asking %v; want bootstrapped after asking n2 only", n.HasState(), asked)
	}

	asked = nil
	n = fresh(t)
	n.MaybeBootstrap(context.Background(), 1, fixed([]quorum.Peer{
		{ID: "n1", RaftAddr: "127.0.0.1:1", Expect: 1}, {ID: "j1", Expect: 0, HasState: true},
	}), ask)
	if n.HasState() || len(asked) != 0 {
		t.Fatalf("bootstrapped %v after asking %v beside a joiner that advertises state; want neither", n.HasState(), asked)
	}
}

// fixed is a gossip view that does not change.
func fixed(peers []quorum.Peer) func() []quorum.Peer {
	return func() []quorum.Peer { return slices.Clone(peers) }
}

// The decision is made again on the view read after the asks: gossip may
// have been merging a peer's state when the view was first read, with the
// servers in it and the joiner that belongs to a cluster not yet.
func TestBootstrapDecidesOnTheViewAfterAsking(t *testing.T) {
	servers := []quorum.Peer{{ID: "n1", RaftAddr: "127.0.0.1:1", Expect: 2}, {ID: "n2", RaftAddr: "127.0.0.1:2", Expect: 2}}
	reads := 0
	view := func() []quorum.Peer {
		reads++
		if reads == 1 {
			return slices.Clone(servers)
		}
		return append(slices.Clone(servers), quorum.Peer{ID: "j1", HasState: true})
	}
	n := fresh(t)
	n.MaybeBootstrap(context.Background(), 2, view, func(context.Context, quorum.Peer) (bool, error) { return false, nil })
	if n.HasState() || reads != 2 {
		t.Fatalf("bootstrapped %v after %d reads of the view; want no bootstrap after 2", n.HasState(), reads)
	}
}
