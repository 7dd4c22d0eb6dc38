package leader

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/haven-ha/haven/agent/lease"
	"github.com/haven-ha/haven/fsm"
	"github.com/haven-ha/haven/heartbeat"
	"github.com/haven-ha/haven/internal/fsmtest"
	"github.com/haven-ha/haven/internal/logging/logtest"
	"github.com/haven-ha/haven/placement"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
	"github.com/haven-ha/haven/quorum"
)

// The leader's decisions are tested on a real FSM fed by fsmtest, with no
// Raft: fakeRaft commits at once, as a one-node Raft would, and records
// how each command was committed.
type fakeRaft struct {
	*fsmtest.Log
	l        *Leader
	leaderCh chan bool

	mu       sync.Mutex
	commits  []string // command types, in order
	unlocked []string // commands committed without placeMu
	delay    time.Duration
	last     *havenv1.Command
	// hold, if set, runs before each commit: a test's way to keep one
	// commit waiting.
	hold func(*havenv1.Command)
	// conf is the Raft configuration; changes the ones asked of it, as
	// "kind node", without applying them.
	conf    []raft.Server
	changes []string
	// barriers and confReads count the calls (a configuration read is
	// one per reconcile).
	barriers, confReads int
}

func (r *fakeRaft) Commit(c *havenv1.Command) (*fsm.Result, error) {
	kind := fmt.Sprintf("%T", c.GetCmd())
	r.mu.Lock()
	r.commits, r.last = append(r.commits, kind), c
	if r.l != nil && r.l.placeMu.TryLock() {
		r.l.placeMu.Unlock()
		r.unlocked = append(r.unlocked, kind)
	}
	delay, hold := r.delay, r.hold
	r.mu.Unlock()
	if hold != nil {
		hold(c)
	}
	// A real commit takes a disk write and a round trip: decisions made
	// meanwhile must see the ones on their way.
	time.Sleep(delay)
	return r.Log.Commit(c)
}

// reset forgets the commits recorded so far.
func (r *fakeRaft) reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.commits, r.unlocked = nil, nil
}

func (r *fakeRaft) LeaderCh() <-chan bool                     { return r.leaderCh }
func (r *fakeRaft) Term() uint64                              { return 1 }
func (r *fakeRaft) SetReadsReady(bool)                        {}
func (r *fakeRaft) TransferLeadershipTo(string, string) error { return nil }

func (r *fakeRaft) Barrier(time.Duration) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.barriers++
	return nil
}

func (r *fakeRaft) Configuration() ([]raft.Server, uint64, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.confReads++
	return append([]raft.Server(nil), r.conf...), 0, nil
}

func (r *fakeRaft) Change(c quorum.Change, _ string, _ uint64) (uint64, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.changes = append(r.changes, c.Kind.String()+" "+c.ID)
	return 0, nil
}

// fakeMembers is gossip's view.
type fakeMembers struct {
	mu     sync.Mutex
	m      []heartbeat.Member
	lists  int
	onList func(n int) // called, unlocked, with the count of listings so far
}

func (f *fakeMembers) Members() []heartbeat.Member {
	f.mu.Lock()
	f.lists++
	n, on := f.lists, f.onList
	m := append([]heartbeat.Member(nil), f.m...)
	f.mu.Unlock()
	if on != nil {
		on(n)
	}
	return m
}

var testLease = quorum.LeaseConfig{Lease: 1500 * time.Millisecond, Margin: 300 * time.Millisecond, FailoverAfter: 3500 * time.Millisecond}

// testLeader is leader n1 of nodes n1..n3 (8 CPUs, 16 GiB, site a), alive
// in the FSM and in gossip, each with the given labels, in office with
// its barrier applied.
type testLeader struct {
	*Leader
	raft    *fakeRaft
	members *fakeMembers
	term    *term
}

func newTestLeader(t *testing.T, labels map[string]map[string]string) *testLeader {
	t.Helper()
	r := &fakeRaft{Log: fsmtest.New(t), leaderCh: make(chan bool, 4)}
	ms := &fakeMembers{}
	for _, n := range []string{"n1", "n2", "n3"} {
		r.AddNode(fsmtest.Node(n, "a", 8000, 16<<30, labels[n]))
		ms.m = append(ms.m, heartbeat.Member{Name: n, State: heartbeat.StateAlive,
			Meta: heartbeat.Meta{Site: "a", CPUMillis: 8000, MemoryBytes: 16 << 30, Labels: heartbeat.FormatLabels(labels[n])}})
	}
	leases := lease.NewTable(quorum.Profiles{SameSite: testLease, CrossSite: testLease}, "a", r.FSM, func() error { return nil })
	l := New(Config{
		Name: "n1", State: r.FSM, Raft: r, Members: ms, Leases: leases, Logger: logtest.New(t),
		CPUOvercommit: 4, Balancer: placement.ModeRecommend, FailbackAfter: 2 * time.Second,
		DirtyRate: fixedRate(1 << 20), MaxVoters: 5, ElectionTimeout: time.Second, ReconcileInterval: time.Second,
	})
	r.l = l
	tl := &testLeader{Leader: l, raft: r, members: ms, term: newTerm(time.Now())}
	leases.Begin(time.Now(), 1)
	leases.Ready()
	l.mu.Lock()
	l.cur = tl.term
	l.mu.Unlock()
	return tl
}

func fixedRate(r int64) DirtyRate { return func(int64) int64 { return r } }
