package cluster

import (
	"context"
	"slices"
	"testing"

	"github.com/haven-ha/haven/agent/leader"
	"github.com/haven-ha/haven/placement"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

func TestBalance(t *testing.T) {
	f := newFixture()
	f.leader.balance = leader.BalanceReport{
		Proposal: placement.Proposal{
			Before: 0.21, After: 0.04,
			Moves: []placement.ProposedMove{
				{Move: placement.Move{Group: "web", From: "n1", To: "n3"}, Gain: 0.3, Bytes: 4 << 30, Seconds: 40, Why: "n1 is 90% full"},
				{Move: placement.Move{Group: "db", From: "n1", To: "n2"}, Gain: 0.1, Bytes: 1 << 30, Seconds: 10, Why: "n1 still 70% full"},
			},
			PowerOff: []string{"n4"},
			Stopped:  "under the threshold",
		},
		Mode: placement.ModeRecommend, Threshold: 0.05, CostPerSecond: 0.0005, ReserveK: 1,
		Notes: []string{"reserve holds"},
	}
	resp, err := f.svc.Balance(context.Background(), &havenv1.BalanceRequest{Power: true, DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	if !f.leader.power || !f.leader.dry {
		t.Errorf("leader asked power=%v dry_run=%v, want both true", f.leader.power, f.leader.dry)
	}
	if resp.GetMode() != havenv1.BalancerMode_BALANCER_MODE_RECOMMEND || resp.GetImbalanceBefore() != 0.21 || resp.GetImbalanceAfter() != 0.04 ||
		resp.GetThreshold() != 0.05 || resp.GetReserveK() != 1 || resp.GetStopped() != "under the threshold" {
		t.Errorf("mode %v, imbalance %v -> %v, threshold %v, reserve %d, stopped %q",
			resp.GetMode(), resp.GetImbalanceBefore(), resp.GetImbalanceAfter(), resp.GetThreshold(), resp.GetReserveK(), resp.GetStopped())
	}
	if !slices.Equal(resp.GetPowerOff(), []string{"n4"}) || !slices.Equal(resp.GetNotes(), []string{"reserve holds"}) {
		t.Errorf("power off %v, notes %v", resp.GetPowerOff(), resp.GetNotes())
	}
	if len(resp.GetMoves()) != 2 {
		t.Fatalf("%d moves, want 2", len(resp.GetMoves()))
	}
	m := resp.GetMoves()[0]
	// The cost is the migration time priced in spread units: the gain
	// must exceed it, so the operator compares the two.
	if m.GetGroup() != "web" || m.GetFrom() != "n1" || m.GetTo() != "n3" || m.GetGain() != 0.3 ||
		m.GetCostBytes() != 4<<30 || m.GetCostSeconds() != 40 || m.GetCost() != 40*0.0005 || m.GetWhy() != "n1 is 90% full" {
		t.Errorf("first move %v, want web n1->n3 gain 0.3, 4 GiB, 40 s, cost 0.02", m)
	}
	if m := resp.GetMoves()[1]; m.GetGroup() != "db" || m.GetCost() != 10*0.0005 {
		t.Errorf("second move %v, want db at cost 0.005", m)
	}
}

func TestBalanceModes(t *testing.T) {
	for mode, want := range map[placement.Mode]havenv1.BalancerMode{
		placement.ModeOff:       havenv1.BalancerMode_BALANCER_MODE_OFF,
		placement.ModeRecommend: havenv1.BalancerMode_BALANCER_MODE_RECOMMEND,
		placement.ModeAutomatic: havenv1.BalancerMode_BALANCER_MODE_AUTOMATIC,
	} {
		f := newFixture()
		f.leader.balance = leader.BalanceReport{Mode: mode}
		resp, err := f.svc.Balance(context.Background(), &havenv1.BalanceRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetMode() != want {
			t.Errorf("mode %v answered as %v, want %v", mode, resp.GetMode(), want)
		}
	}
}

func TestBalanceLeaderErrors(t *testing.T) {
	checkLeaderErrors(t, func(f *fixture) error {
		_, err := f.svc.Balance(context.Background(), &havenv1.BalanceRequest{})
		return err
	})
}
