// Package leader is what the Raft leader does: it keeps the FSM's node
// records and the Raft configuration in step with gossip, restarts the
// groups of failed nodes elsewhere, places groups, fails them back, drains
// nodes, keeps the reserve, and runs the balancer. Everything it decides
// is committed through a Committer as compare-and-set commands, so a
// decision made on a stale view is refused by the FSM, never applied.
//
// State that belongs to one term of leadership (what this leader saw of
// each node, the moves it made, what it tried last) lives in a term and
// starts empty every term: a node that leads again must not act on what
// it saw in an earlier term. Decisions return domain errors (errors.go);
// the service layer maps them to gRPC codes.
package leader

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/haven-ha/haven/agent/lease"
	"github.com/haven-ha/haven/agent/metrics"
	"github.com/haven-ha/haven/fsm"
	"github.com/haven-ha/haven/heartbeat"
	"github.com/haven-ha/haven/internal/logging"
	"github.com/haven-ha/haven/placement"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
	"github.com/haven-ha/haven/quorum"
)

// State is what the leader reads of the FSM.
type State interface {
	Index() uint64
	Node(name string) *havenv1.Node
	Nodes() []*havenv1.Node
	Group(name string) *havenv1.Group
	Groups() []*havenv1.Group
	// GroupsFor lists the groups node owns (and those moving to it).
	GroupsFor(node string) []*havenv1.Group
	// Owners lists the nodes that own a group.
	Owners() []string
	Operation(id string) *havenv1.Operation
	Operations() []*havenv1.Operation
	// Request is the outcome of the command with request id, while the
	// FSM remembers it.
	Request(id string) *havenv1.AppliedRequest
}

// Committer commits a command and returns what the FSM made of it.
type Committer interface {
	Commit(c *havenv1.Command) (*fsm.Result, error)
}

// Raft is what the leader needs of its Raft node besides committing.
type Raft interface {
	Committer
	// LeaderCh delivers leadership transitions (true: this node leads).
	LeaderCh() <-chan bool
	Term() uint64
	Barrier(timeout time.Duration) error
	// SetReadsReady lets the node answer consistent reads (true once the
	// barrier of a term is applied).
	SetReadsReady(ok bool)
	Configuration() ([]raft.Server, uint64, error)
	Change(c quorum.Change, addr string, prevIndex uint64) (uint64, error)
	// TransferLeadershipTo hands leadership to the voter id at addr.
	TransferLeadershipTo(id, addr string) error
}

// Members is gossip's view of the cluster.
type Members interface {
	Members() []heartbeat.Member
}

// Config is what a Leader needs. Give every node the same placement
// settings: any node may lead.
type Config struct {
	Name    string
	State   State
	Raft    Raft
	Members Members
	Leases  *lease.Table
	// Movers reaches the two ends of a move; nil refuses every move.
	Movers Movers
	Logger *slog.Logger
	// Metrics counts failovers, refusals and leadership changes; nil
	// counts nothing.
	Metrics *metrics.Metrics
	// Refused, when set, is told of every create, start or move that
	// admission refused (no log entry records them); it must not block.
	Refused func(call, group, reason string)
	// ACLBootstrapReset is the index of the ACL bootstrap the operator
	// allowed to be done again (fsm.ACLBootstrapResetFile), 0 for none;
	// nil for none.
	ACLBootstrapReset func() uint64

	// Placement settings (see placement/). ReserveSites is 0 or 1: also
	// keep the site-loss reserve (see reserveSpec).
	Reserve       int
	ReserveSites  int
	CPUOvercommit float64
	Balancer      placement.Mode
	FailbackAfter time.Duration
	// MaxParallelMoves caps the moves a node sends or receives at once
	// (see planned.go); zero is DefaultMaxParallelMoves.
	MaxParallelMoves int
	// BalanceInterval is how often the balancer looks again when the
	// cluster changed (zero: a minute); BalanceHoldOff how long a group
	// that moved stays where it is (zero: placement's hour).
	BalanceInterval time.Duration
	BalanceHoldOff  time.Duration
	// DirtyRate is what a guest of the given memory dirties per second, as
	// the driver estimates it: the balancer prices a move with it.
	DirtyRate DirtyRate

	// Voter management (quorum.Plan) and the reconcile timer.
	MaxVoters         int
	MaxMembers        int
	Stabilization     time.Duration
	ReapAfter         time.Duration
	ElectionTimeout   time.Duration
	ReconcileInterval time.Duration
}

// Leader runs the leader's duties whenever this node leads.
type Leader struct {
	cfg    Config
	log    *slog.Logger
	state  State
	leases *lease.Table

	// placeMu serializes the placement decisions: two starts admitted
	// against the same state could break the reserve together although
	// each alone keeps it. A start commits after it lets go, its
	// assignment held in pending until applied; the other decisions commit
	// under it.
	placeMu sync.Mutex
	pending pendingStarts
	reserve reserveKeeper
	checks  checkedIndexes

	// reconcile wakes the loop on membership changes.
	reconcile chan struct{}

	mu  sync.Mutex
	cur *term // nil while not leading
}

// New returns a Leader; Run drives it.
func New(cfg Config) *Leader {
	if cfg.Logger == nil {
		cfg.Logger = logging.Discard()
	}
	if cfg.DirtyRate == nil {
		cfg.DirtyRate = func(int64) int64 { return 0 }
	}
	return &Leader{cfg: cfg, log: cfg.Logger, state: cfg.State, leases: cfg.Leases, reconcile: make(chan struct{}, 1)}
}

// MembershipChanged wakes the leader's reconcile.
func (l *Leader) MembershipChanged() {
	select {
	case l.reconcile <- struct{}{}:
	default:
	}
}

// term is the state of one term of leadership.
type term struct {
	start time.Time
	// since is when this leader first saw a node in its current liveness
	// (alive or not). A new leader gives every node a fresh start, like
	// Nomad's failover grace: it never reaps or demotes on evidence it did
	// not see itself.
	since map[string]time.Time
	alive map[string]bool
	// moves are the owner changes this leader made, for the balancer's
	// hold-off: a new leader only holds off moves it saw.
	moves history
	// waitMemo and drainMemo remember the last attempt that placed
	// nothing, so it is not repeated on the same state.
	waitMemo  waitMemo
	drainMemo map[string]uint64
	// tries counts the planned moves of each group, refusals their last
	// refusal (planned.go).
	tries    tries
	refusals refusals
	// driving are the moves this term drives; nil until the term's
	// barrier is applied. Read it with termMoves.
	driving *moves
}

func newTerm(now time.Time) *term {
	return &term{start: now, since: map[string]time.Time{}, alive: map[string]bool{}, drainMemo: map[string]uint64{}}
}

func (t *term) observe(name string, alive bool, now time.Time) time.Time {
	prev, seen := t.alive[name]
	if !seen || prev != alive {
		t.alive[name] = alive
		t.since[name] = now
	}
	return t.since[name]
}

// termMoves is t's moves, nil before its barrier or without Movers.
func (l *Leader) termMoves(t *term) *moves {
	l.mu.Lock()
	defer l.mu.Unlock()
	return t.driving
}

// current is the term in office, nil when this node does not lead.
func (l *Leader) current() *term {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.cur
}

// Run starts the leader's duties when this node wins an election and
// stops them when it loses leadership, in the shape of Nomad's. Raft may
// report the same transition twice; a second "true" while leading is
// ignored.
func (l *Leader) Run(ctx context.Context) {
	var (
		stop chan struct{}
		wg   sync.WaitGroup
	)
	revoke := func() {
		if stop != nil {
			l.cfg.Raft.SetReadsReady(false)
			close(stop)
			wg.Wait()
			// Again: the loop may have set it while it was stopping.
			l.cfg.Raft.SetReadsReady(false)
			stop = nil
			l.leases.End()
			l.mu.Lock()
			l.cur = nil
			l.mu.Unlock()
			l.cfg.Metrics.Leadership(false)
			l.log.Info("leadership revoked")
		}
	}
	defer revoke()
	for {
		select {
		case <-ctx.Done():
			return
		case isLeader := <-l.cfg.Raft.LeaderCh():
			switch {
			case isLeader && stop == nil:
				// Office starts when this node learns it leads: later
				// than the election, which only delays fencing.
				now := time.Now()
				l.leases.Begin(now, l.cfg.Raft.Term())
				t := newTerm(now)
				l.mu.Lock()
				l.cur = t
				l.mu.Unlock()
				stop = make(chan struct{})
				wg.Add(1)
				go func(stop chan struct{}) {
					defer wg.Done()
					l.lead(ctx, t, stop)
				}(stop)
				l.cfg.Metrics.Leadership(true)
				l.log.Info("leadership acquired")
			case !isLeader:
				revoke()
			}
		}
	}
}

// lead runs one term: a barrier so the FSM holds every entry committed by
// earlier terms, then establish leadership once, then reconcile on every
// membership event and on a timer until leadership ends. The barrier is
// written once per term, not before each reconcile as Consul's and
// Nomad's leaders do: after it every entry is this leader's own, applied
// before its commit returns, so a later barrier waits for nothing and
// only grows the log (at 100 agents, all of the 370 entries an hour of a
// steady cluster, each fsync'd by the voters and streamed to every
// follower).
func (l *Leader) lead(ctx context.Context, t *term, stop chan struct{}) {
	tick := time.NewTicker(l.cfg.ReconcileInterval)
	defer tick.Stop()
	established := false
	var duties sync.WaitGroup
	defer duties.Wait()
	for {
		if established {
			if err := l.reconcileMembers(t); err != nil {
				l.log.Warn("reconcile", "error", err)
			}
			// Membership may have changed: have the restart plans of
			// the new state ready before a failover asks for them.
			l.refreshReserve()
		} else if err := l.cfg.Raft.Barrier(l.cfg.ElectionTimeout * 4); err != nil {
			l.log.Warn("barrier failed", "error", err)
		} else {
			established = true
			// The FSM now holds every epoch committed before this
			// term: renewals may be answered (step 3).
			l.leases.Ready()
			l.cfg.Raft.SetReadsReady(true)
			if l.cfg.Movers != nil {
				mv := newMoves(ctx)
				l.mu.Lock()
				t.driving = mv
				l.mu.Unlock()
				defer mv.stop()
			}
			duties.Add(3)
			go func() { defer duties.Done(); l.leases.Serve(stop) }()
			go func() { defer duties.Done(); l.groupsLoop(ctx, t, stop) }()
			go func() { defer duties.Done(); l.balanceLoop(ctx, t, stop) }()
			l.log.Info("leadership established", "index", l.state.Index())
			continue
		}
		select {
		case <-stop:
			return
		case <-ctx.Done():
			return
		case <-l.reconcile:
		case <-tick.C:
		}
	}
}

// groupsLoop runs the group duties while this node leads and its barrier
// is applied.
func (l *Leader) groupsLoop(ctx context.Context, t *term, stop <-chan struct{}) {
	const every = 100 * time.Millisecond
	stalls := newStallWatch(every, time.Now())
	go stalls.run(ctx, stop)
	// The passes after the failover look read every group. They run when
	// the FSM has changed, and once a second anyway for what changes
	// without it: a node renewing again, a failback window opening, a
	// move's driver ending before its commit. Ten times a second over
	// every group was the largest part of a 100-agent leader's steady CPU
	// after Raft's heartbeats and the renewals.
	const passesAnyway = time.Second
	var passedAt uint64
	var passed time.Time
	// The failover look runs before each duty of the pass, not only
	// between passes: at 10,000 groups a pass can take a second, and a
	// failover due meanwhile would wait for all of it. Each duty still
	// sees the failovers decided before it, as at the start of a tick.
	look := func() {
		now := time.Now()
		if gap, ok := stalls.take(now); ok {
			// This process could not run (SIGSTOP, starvation): nodes
			// could not renew with it either.
			l.log.Warn("leader stalled; restarting every node's silence", "stalled", gap.Round(time.Millisecond))
			l.leases.Stalled(now)
		}
		l.failover(t, now)
	}
	tickUntil(ctx, stop, every, func() {
		look()
		now := time.Now()
		idx := l.state.Index()
		if idx == passedAt && now.Sub(passed) < passesAnyway {
			return
		}
		passedAt, passed = idx, now
		if mv := l.termMoves(t); mv != nil {
			l.resolveMoves(mv)
			look()
		}
		l.failback(t, time.Now())
		look()
		l.drain(t, time.Now())
		look()
		l.placeWaiting(t)
	})
}

// apply commits c and returns the FSM's refusal as an error.
func (l *Leader) apply(c *havenv1.Command) error {
	res, err := l.cfg.Raft.Commit(c)
	if err != nil {
		return err
	}
	if res.Err != nil {
		return res.Err
	}
	return nil
}
