package leader

import (
	"context"
	"fmt"
	"time"

	havenv1 "github.com/haven-ha/haven/proto/haven/v1"

	"github.com/haven-ha/haven/internal/logging"
	"github.com/haven-ha/haven/placement"
)

// The balancer's threshold and migration cost are placement's defaults,
// set here explicitly so the API can report them and price each move.
const (
	balanceThreshold     = 0.05
	balanceCostPerSecond = 0.0005
	// defaultBalanceInterval is how often the leader's balancer looks
	// again, in recommend and automatic modes, when the cluster changed.
	defaultBalanceInterval = time.Minute
)

// proposal runs the balancer on the current state, holding off the moves
// this term made and those the FSM records as completed within the
// hold-off (a new leader's balancer must not undo its predecessor's).
func (l *Leader) proposal(t *term, mode placement.Mode, power, dryRun bool, now time.Time) (placement.Proposal, int) {
	st := l.placementState()
	spec := l.reserveSpec(st)
	holdOff := l.cfg.BalanceHoldOff
	if holdOff <= 0 {
		holdOff = time.Hour
	}
	p := placement.Balance(st, placement.BalanceOptions{
		Mode: mode, Now: now, Reserve: spec.K, SiteLoss: spec.SiteLoss, Power: power, DryRun: dryRun, HoldOff: holdOff,
		Threshold: balanceThreshold, CostPerSecond: balanceCostPerSecond,
	}, movedRecently(t.moves.snapshot(), l.state.Operations(), holdOff, now))
	return p, spec.K
}

// execute starts a proposal's moves in automatic mode, at most
// MaxParallelMoves of them and only when no move is in flight: the next
// proposal is made on the state they leave, not on one they are changing.
// It returns how many it started.
func (l *Leader) execute(t *term, p placement.Proposal) int {
	l.placeMu.Lock()
	defer l.placeMu.Unlock()
	busy := l.movesBusy()
	if len(busy) > 0 {
		return 0
	}
	n := 0
	for _, m := range p.Moves {
		if n == l.maxParallelMoves() {
			break
		}
		g := l.state.Group(m.Group)
		if g == nil || g.GetOwner() != m.From || g.GetState() != havenv1.GroupState_GROUP_STATE_ONLINE || g.GetOperation() != "" || g.GetMoveTo() != "" {
			continue
		}
		if l.plannedMove(t, g, m.To, causeBalancer, busy) == started {
			l.log.Info("balancing", "group", m.Group, "from", m.From, "to", m.To, "why", m.Why)
			n++
		}
	}
	return n
}

// balanceLoop runs the balancer while this node leads, in recommend and
// automatic modes: when the cluster changed since its last look, at most
// every balance interval, it logs what it would move and why, and in
// automatic mode moves it live (execute).
func (l *Leader) balanceLoop(ctx context.Context, t *term, stop <-chan struct{}) {
	mode := l.cfg.Balancer
	if mode == placement.ModeOff {
		return
	}
	log := logging.Named(l.log, "balancer")
	every := l.cfg.BalanceInterval
	if every <= 0 {
		every = defaultBalanceInterval
	}
	var last uint64
	tickUntil(ctx, stop, every, func() {
		st := l.placementState()
		key := stateKey(st, l.reserveSpec(st))
		if key == last {
			return
		}
		p, _ := l.proposal(t, mode, false, false, time.Now())
		if len(p.Moves) == 0 {
			last = key
			log.Debug("nothing to move", "imbalance", fmt.Sprintf("%.4f", p.Before), "why", p.Stopped)
			return
		}
		if !p.Execute {
			last = key
			log.Info("balancer recommends moves", "moves", len(p.Moves), "imbalance_before", fmt.Sprintf("%.4f", p.Before), "imbalance_after", fmt.Sprintf("%.4f", p.After))
			for _, m := range p.Moves {
				log.Info("recommended move", "group", m.Group, "from", m.From, "to", m.To, "why", m.Why)
			}
			return
		}
		// Automatic: looked at again next tick, whether or not moves
		// were in flight this time.
		if n := l.execute(t, p); n > 0 {
			log.Info("balancer moves groups", "started", n, "proposed", len(p.Moves), "imbalance_before", fmt.Sprintf("%.4f", p.Before), "imbalance_after", fmt.Sprintf("%.4f", p.After))
		}
	})
}
