package leader

import (
	"context"
	"fmt"
	"time"

	"github.com/haven-ha/haven/internal/logging"
	"github.com/haven-ha/haven/placement"
)

// The balancer's threshold and migration cost are placement's defaults,
// set here explicitly so the API can report them and price each move.
const (
	balanceThreshold     = 0.05
	balanceCostPerSecond = 0.0005
	// balanceEvery is how often the leader's balancer looks again, in
	// recommend and automatic modes, when the cluster changed.
	balanceEvery = time.Minute
)

// noMigration is said wherever automatic mode would act.
const noMigration = "automatic mode moves groups by live migration, which does not exist yet: the moves are recommended, not executed"

// proposal runs the balancer on the current state, holding off the moves
// this term made.
func (l *Leader) proposal(t *term, mode placement.Mode, power, dryRun bool, now time.Time) (placement.Proposal, int) {
	st := l.placementState()
	k := reserveK(st, l.cfg.Reserve)
	p := placement.Balance(st, placement.BalanceOptions{
		Mode: mode, Now: now, Reserve: k, Power: power, DryRun: dryRun,
		Threshold: balanceThreshold, CostPerSecond: balanceCostPerSecond,
	}, t.moves.snapshot())
	return p, k
}

// balanceLoop runs the balancer while this node leads, in recommend and
// automatic modes: when the cluster changed since its last look, at most
// every balanceEvery, it logs what it would move and why. It never moves a
// group: automatic mode waits for live migration.
func (l *Leader) balanceLoop(ctx context.Context, t *term, stop <-chan struct{}) {
	mode := l.cfg.Balancer
	if mode == placement.ModeOff {
		return
	}
	log := logging.Named(l.log, "balancer")
	if mode == placement.ModeAutomatic {
		log.Warn("placement.balancer is automatic; " + noMigration)
	}
	tick := time.NewTicker(balanceEvery)
	defer tick.Stop()
	var last uint64
	for {
		select {
		case <-stop:
			return
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		st := l.placementState()
		key := stateKey(st, reserveK(st, l.cfg.Reserve))
		if key == last {
			continue
		}
		last = key
		p, _ := l.proposal(t, mode, false, false, time.Now())
		if len(p.Moves) == 0 {
			log.Debug("nothing to move", "imbalance", fmt.Sprintf("%.4f", p.Before), "why", p.Stopped)
			continue
		}
		log.Info("balancer recommends moves", "moves", len(p.Moves), "imbalance_before", fmt.Sprintf("%.4f", p.Before), "imbalance_after", fmt.Sprintf("%.4f", p.After))
		for _, m := range p.Moves {
			log.Info("recommended move", "group", m.Group, "from", m.From, "to", m.To, "why", m.Why)
		}
	}
}
