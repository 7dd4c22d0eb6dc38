package agent

import (
	"context"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/haven-ha/haven/fsm"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
	"github.com/haven-ha/haven/quorum"
)

// The leader's half of the lease protocol of quorum/lease.go. Renewals are
// queued and answered in batches: one VerifyLeader, started after every
// request of the batch arrived, covers them all (step 2).

type leaseReq struct {
	node string
	done chan leaseAnswer
}

type leaseAnswer struct {
	resp *havenv1.RenewLeaseResponse
	err  error
}

// leases is the leader's lease state for one term; nil fields outside it.
type leases struct {
	a *Agent

	mu     sync.Mutex
	grants *quorum.Grants // nil while not leader
	term   uint64
	// pending holds the groups whose move the leader has decided but not
	// yet committed and applied: no grant lists them (step 5).
	pending map[string]bool
	// assigned is when this leader assigned each group to its owner: a
	// group gets failover_after on its node from then, whatever the node's
	// earlier silence (quorum.Grants.GroupFailoverAt).
	assigned map[string]time.Time
	queue    []leaseReq
	wake     chan struct{}
}

func newLeases(a *Agent) *leases {
	return &leases{a: a, pending: map[string]bool{}, wake: make(chan struct{}, 1)}
}

func (a *Agent) leaseConfig() quorum.LeaseConfig {
	return quorum.LeaseConfig{Lease: a.cfg.Lease.Duration, Margin: a.cfg.Lease.Margin, FailoverAfter: a.cfg.Lease.FailoverAfter}
}

// begin starts a term of office at the time this node learned it leads.
func (l *leases) begin(office time.Time, term uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.grants = quorum.NewGrants(l.a.leaseConfig(), office)
	l.term = term
	l.pending = map[string]bool{}
	l.assigned = map[string]time.Time{}
}

// ready is called once the leader's barrier is applied (step 3).
func (l *leases) ready() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.grants != nil {
		l.grants.Ready()
	}
}

func (l *leases) end() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.grants = nil
	for _, r := range l.queue {
		r.done <- leaseAnswer{err: status.Error(codes.Unavailable, "leadership lost")}
	}
	l.queue = nil
}

// renew queues a request and waits for its batch.
func (l *leases) renew(ctx context.Context, node string) (*havenv1.RenewLeaseResponse, error) {
	r := leaseReq{node: node, done: make(chan leaseAnswer, 1)}
	l.mu.Lock()
	if l.grants == nil || !l.grants.CanGrant() {
		l.mu.Unlock()
		return nil, status.Error(codes.Unavailable, "not a leader ready to grant leases")
	}
	l.queue = append(l.queue, r)
	l.mu.Unlock()
	select {
	case l.wake <- struct{}{}:
	default:
	}
	select {
	case ans := <-r.done:
		return ans.resp, ans.err
	case <-ctx.Done():
		return nil, status.FromContextError(ctx.Err()).Err()
	}
}

// serve runs during a term of office: it verifies and grants batches.
func (l *leases) serve(stop <-chan struct{}) {
	for {
		select {
		case <-stop:
			return
		case <-l.wake:
		}
		l.mu.Lock()
		batch := l.queue
		l.queue = nil
		l.mu.Unlock()
		if len(batch) == 0 {
			continue
		}
		// Every request of the batch arrived before this verification
		// started.
		err := l.a.raft.VerifyLeader().Error()
		l.mu.Lock()
		if err != nil || l.grants == nil {
			l.mu.Unlock()
			for _, r := range batch {
				r.done <- leaseAnswer{err: status.Error(codes.Unavailable, "leadership could not be verified")}
			}
			continue
		}
		// Recording the grant after the verification, under the lock
		// that also guards the failover decision, makes "granted" and
		// "decided to move" mutually ordered.
		tg := time.Now()
		for _, r := range batch {
			l.grants.Grant(r.node, tg)
			r.done <- leaseAnswer{resp: l.answer(r.node)}
		}
		l.mu.Unlock()
	}
}

// answer lists the node's groups at their epochs, leaving out pending moves.
// Called with l.mu held.
func (l *leases) answer(node string) *havenv1.RenewLeaseResponse {
	resp := &havenv1.RenewLeaseResponse{LeaseMillis: uint64(l.a.cfg.Lease.Duration.Milliseconds()), Term: l.term}
	for _, g := range l.a.fsm.Groups() {
		if g.GetOwner() == node && fsm.Active(g.GetState()) && !l.pending[g.GetSpec().GetName()] {
			resp.Groups = append(resp.Groups, &havenv1.GroupEpoch{Name: g.GetSpec().GetName(), Epoch: g.GetEpoch()})
		}
	}
	return resp
}

// The node's half: renew every quarter lease, measured from the send.

func (a *Agent) leaseLoop(ctx context.Context) {
	interval := a.cfg.Lease.Duration / 4
	for {
		t0 := time.Now()
		resp, err := a.renewOnce(ctx, interval)
		if err == nil {
			a.exec.granted(leaseEnd(t0, resp), resp.GetGroups())
		} else if ctx.Err() == nil {
			a.log.Debug("lease renewal failed", "error", err)
		}
		next := t0.Add(interval)
		if err != nil {
			// Retry sooner: every attempt that succeeds before the lease
			// ends spares the guests a pause.
			next = t0.Add(interval / 4)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Until(next)):
		case <-a.exec.renewNow:
			// At most one extra renewal per guest tick of waiting.
			time.Sleep(min(time.Until(next), 50*time.Millisecond))
		}
	}
}

// leaseEnd is when a grant ends: measured from sent, the moment before the
// request left (step 1). The leader fences the node from its own grant
// time, which is after sent, plus the lease and a margin; counting from the
// reply instead would let a slow reply stretch the lease past the fence.
func leaseEnd(sent time.Time, resp *havenv1.RenewLeaseResponse) time.Time {
	return sent.Add(time.Duration(resp.GetLeaseMillis()) * time.Millisecond)
}

func (a *Agent) renewOnce(ctx context.Context, timeout time.Duration) (*havenv1.RenewLeaseResponse, error) {
	_, addr, err := a.leader()
	if err != nil {
		return nil, err
	}
	conn, err := a.fwd.conn(addr)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	resp, err := havenv1.NewNodeServiceClient(conn).RenewLease(ctx, &havenv1.RenewLeaseRequest{Node: a.cfg.Name})
	if status.Code(err) == codes.DeadlineExceeded {
		a.fwd.reset(addr)
	}
	return resp, err
}

// dialOptions make agent-to-agent connections reconnect within a fraction
// of a lease after a partition heals: gRPC's default backoff grows to two
// minutes, which would turn a short blip into a failover.
func (a *Agent) dialOptions() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 50 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: a.cfg.Lease.Duration / 8},
			MinConnectTimeout: a.cfg.Lease.Duration / 4,
		}),
	}
}
